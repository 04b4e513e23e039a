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
