import av
import numpy as np
import pytest

from gsvc.errors import GsvcError
from gsvc.media import read_image, write_image


def _frame(rgb, pix_fmt):
    """``rgb`` in ``pix_fmt``; 16-bit RGB holds each 8-bit value v exactly as v * 257."""
    if pix_fmt == "rgb48be":
        return av.VideoFrame.from_ndarray(rgb.astype(np.uint16) * 257, format=pix_fmt)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)


def _write_raw(path, rgb, codec, pix_fmt):
    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream(codec)
        s.width, s.height, s.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
        frame = _frame(rgb, pix_fmt)
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)


# A note only where converting loses something (16 -> 8 bits); gray, an opaque alpha
# channel, BGR and YUV convert without loss worth a note.
@pytest.mark.parametrize("name,codec,pix_fmt,notice", [
    ("a.png", "png", "rgb24", False),
    ("g.png", "png", "gray", False),
    ("rgba.png", "png", "rgba", False),
    ("deep.png", "png", "rgb48be", True),
    ("g16.png", "png", "gray16be", True),
    ("t.tiff", "tiff", "rgb24", False),
    ("b.bmp", "bmp", "bgr24", False),
    ("w.webp", "libwebp", "yuv420p", False),
])
def test_reads_common_formats_as_8bit_rgb(tmp_path, crop, name, codec, pix_fmt, notice):
    _write_raw(tmp_path / name, crop, codec, pix_fmt)
    notes = []
    rgb = read_image(tmp_path / name, notice=notes.append)
    assert rgb.shape == crop.shape and rgb.dtype == np.uint8
    assert len(notes) == (1 if notice else 0)
    if pix_fmt in ("rgb24", "bgr24", "rgba", "rgb48be"):
        np.testing.assert_array_equal(rgb, crop)


def test_png_round_trip_is_exact_and_jpeg_is_close(tmp_path, crop):
    write_image(tmp_path / "x.png", crop)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), crop)
    write_image(tmp_path / "x.jpg", crop)
    back = read_image(tmp_path / "x.jpg")
    assert np.abs(back.astype(int) - crop.astype(int)).mean() < 4


def test_failed_write_leaves_nothing(tmp_path, crop):
    with pytest.raises(GsvcError):
        write_image(tmp_path / "x.gif", crop)
    with pytest.raises(GsvcError):
        write_image(tmp_path / "missing" / "x.png", crop)
    assert list(tmp_path.iterdir()) == []


def test_h264_output_is_bt709_and_says_so(tmp_path):
    """Players read untagged H.264 as BT.601 or BT.709 by their own guess (by size):
    the decoder converts with BT.709 and tags it, so every player shows the same colours."""
    from fractions import Fraction

    from gsvc.media import probe_video, read_video, video_output

    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:16], rgb[16:32], rgb[32:] = (230, 20, 20), (20, 230, 20), (20, 20, 230)
    with video_output(tmp_path / "c.mp4", 64, 48, Fraction(24)) as write:
        for _ in range(2):
            write(rgb)
    with av.open(str(tmp_path / "c.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (int(frame.colorspace), int(frame.color_range)) == (1, 1)  # BT.709, limited
        as_601 = frame.reformat(format="rgb24", src_colorspace="ITU601").to_ndarray()
    back = next(read_video(probe_video(tmp_path / "c.mp4")))
    inner = (slice(4, 12), slice(4, 60))  # away from 4:2:0 chroma edges
    assert np.abs(back[inner].astype(int) - rgb[inner]).max() <= 4
    assert np.abs(as_601[inner].astype(int) - rgb[inner]).max() > 10  # so the matrix is really 709


@pytest.mark.parametrize("ext", [".mp4", ".mov"])
def test_mp4_output_has_its_index_first(tmp_path, ext):
    """ffmpeg's -movflags +faststart: the moov box before the media data, so a browser
    plays the file while it loads."""
    import struct
    from fractions import Fraction

    from gsvc.media import video_output

    with video_output(tmp_path / f"c{ext}", 32, 24, Fraction(24)) as write:
        for i in range(3):
            write(np.full((24, 32, 3), 40 * i, np.uint8))
    data = (tmp_path / f"c{ext}").read_bytes()
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        boxes.append(kind)
        at += size or len(data)
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes
