"""A stranger's files: tiny and huge pictures, unusual pixel formats, EXIF orientation,
empty, variable-rate or damaged videos, and files that are no media at all. Each one
works, or fails with one plain line: never a traceback, never FFmpeg's errno text."""
from __future__ import annotations

import json
import struct
import zipfile
from fractions import Fraction

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from gsvc.cli import main
from gsvc.errors import GsvcError
from gsvc.media import (
    MAX_SOURCE_PIXELS,
    _exif_orientation,
    probe_video,
    read_image,
    read_video,
    read_video_frames,
    resize,
    video_output,
    write_image,
)

FAST = ["--iterations", "5", "-q", "--device", "cpu"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def assert_fails_plainly(code: int, stderr: str, *needles: str) -> None:
    """Exit status 1 and one `gsvc: error:` line in plain words."""
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsvc: error: "), stderr
    for raw in ("Traceback", "Errno", "avcodec", "avformat", "internal error"):
        assert raw not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocks(width: int = 16, height: int = 10) -> np.ndarray:
    """Flat coloured quarters plus a white column at x = 1: no symmetry to hide a wrong turn."""
    rgb = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    rgb[:h2, :w2] = (220, 30, 30)
    rgb[:h2, w2:] = (30, 200, 40)
    rgb[h2:, :w2] = (30, 40, 210)
    rgb[h2:, w2:] = (230, 210, 20)
    rgb[:, 1] = 255
    return rgb


def write_clip(path, frames, fps=Fraction(12)) -> None:
    with video_output(path, frames[0].shape[1], frames[0].shape[0], fps) as write:
        for frame in frames:
            write(frame)


def encode_decode(tmp_path, source, decoded_name: str):
    code, err = run("encode", source, "-o", tmp_path / "s.gsv", *FAST)
    assert code == 0, err
    code, err = run("decode", tmp_path / "s.gsv", "-o", tmp_path / decoded_name)
    assert code == 0, err
    return tmp_path / decoded_name


# --- tiny pictures ----------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(1, 1), (1, 6), (6, 1), (5, 3)])
def test_tiny_pictures_encode_and_decode(tmp_path, width, height):
    write_image(tmp_path / "in.png", noise(width, height))
    out = encode_decode(tmp_path, tmp_path / "in.png", "out.png")
    assert read_image(out).shape == (height, width, 3)


@pytest.mark.parametrize("width,height,ext", [(1, 1, ".mkv"), (1, 4, ".mkv"), (4, 1, ".avi"), (3, 5, ".mp4")])
def test_tiny_videos_encode_and_decode(tmp_path, width, height, ext):
    write_clip(tmp_path / f"in{ext}", [noise(width, height, seed) for seed in range(3)])
    frames, _ = read_video_frames(encode_decode(tmp_path, tmp_path / f"in{ext}", f"out{ext}"))
    assert len(frames) == 3 and frames[0].shape == (height, width, 3)


# --- pixel formats and their notes ------------------------------------------------------

def translucent(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.linspace(0, 255, 160, dtype=np.uint8).reshape(10, 16)))
    return rgba


def palette_with_transparency(img: Image.Image) -> Image.Image:
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    return pal


# (file name, Pillow picture from the blocks, the note's words or None)
FORMATS = [
    ("gray.png", lambda im: im.convert("L"), None),
    ("palette.png", lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), None),
    ("opaque_rgba.png", lambda im: im.convert("RGBA"), None),
    ("opaque_gray_alpha.png", lambda im: im.convert("LA"), None),
    ("yuv.jpg", lambda im: im, None),
    ("gray.jpg", lambda im: im.convert("L"), None),
    ("translucent.png", translucent, "alpha"),
    ("palette_alpha.png", palette_with_transparency, "alpha"),
    ("deep_gray.png", lambda im: Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257), "16-bit"),
    ("cmyk.jpg", lambda im: im.convert("CMYK"), "CMYK"),
]


@pytest.mark.parametrize("name,make,note", FORMATS, ids=[f[0] for f in FORMATS])
def test_pixel_formats_read_as_rgb_with_a_note_only_for_losses(tmp_path, name, make, note):
    path = tmp_path / name
    picture = make(Image.fromarray(blocks()))
    picture.save(path, **({"quality": 95, "subsampling": 0} if name.endswith(".jpg") else {}))
    notes = []
    rgb = read_image(path, notice=notes.append)
    assert rgb.shape == (10, 16, 3) and rgb.dtype == np.uint8
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0] and str(path) in notes[0], notes
    if name == "deep_gray.png":
        expected = np.repeat(np.asarray(Image.fromarray(blocks()).convert("L"))[..., None], 3, axis=2)
    else:
        expected = np.asarray(Image.open(path).convert("RGB"))
    error = np.abs(rgb.astype(int) - expected.astype(int))
    assert (error.max() == 0) if name.endswith(".png") else (error.mean() < 3), error.max()


def test_a_plain_yuv420_jpeg_gives_no_note(tmp_path, crop):
    Image.fromarray(crop).save(tmp_path / "photo.jpg", quality=90)  # Pillow's default: 4:2:0
    notes = []
    rgb = read_image(tmp_path / "photo.jpg", notice=notes.append)
    assert notes == []
    expected = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_picture(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(blocks()).save(path, exif=exif, quality=98, subsampling=0)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    notes = []
    rgb = read_image(path, notice=notes.append)
    assert notes == []
    assert rgb.shape == upright.shape
    assert np.abs(rgb.astype(int) - upright.astype(int)).mean() < 3
    if orientation == 6:  # a quarter turn clockwise: the stored top-left red lands top-right
        assert rgb[0, -1].astype(int).tolist() == pytest.approx([220, 30, 30], abs=12)


def test_exif_orientation_with_size_resizes_the_upright_picture(tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(blocks(32, 20)).save(path, exif=exif, quality=98)
    assert read_image(path, size=(10, 0)).shape == (16, 10, 3)  # upright 20x32


def displayed(stored: np.ndarray, a: int, b: int, c: int, d: int) -> np.ndarray:
    """What a player shows for ``stored`` under the display matrix [[a, b], [c, d]] of
    quarter turns and flips, straight from FFmpeg's definition: the stored pixel at
    column p, row q goes to p' = a p + c q, q' = b p + d q, the result moved to start at 0."""
    q, p = np.mgrid[:stored.shape[0], :stored.shape[1]]
    p2, q2 = a * p + c * q, b * p + d * q
    p2, q2 = p2 - p2.min(), q2 - q2.min()
    out = np.zeros((q2.max() + 1, p2.max() + 1, 3), stored.dtype)
    out[q2, p2] = stored[q, p]
    return out


def write_turned_clip(path, frames, matrix, sample_aspect=None) -> None:
    """An mp4 whose frames are stored as given and displayed through ``matrix``
    ([[a, b], [c, d]]), lossless (libx264rgb, qp 0), as a phone writes a portrait clip;
    its pixels ``sample_aspect`` wide for 1 high when given (a DVD's 32:27)."""
    (a, b), (c, d) = matrix
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=12)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "rgb24"
        stream.options = {"qp": "0"}
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        stream.set_display_matrix([a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30])
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


#: The eight quarter turns and flips a display matrix can say.
DISPLAY_MATRICES = [((1, 0), (0, 1)), ((-1, 0), (0, 1)), ((-1, 0), (0, -1)), ((1, 0), (0, -1)),
                    ((0, 1), (1, 0)), ((0, 1), (-1, 0)), ((0, -1), (-1, 0)), ((0, -1), (1, 0))]


@pytest.mark.parametrize("matrix", DISPLAY_MATRICES)
def test_a_videos_display_matrix_gives_the_upright_frames(tmp_path, matrix):
    stored = [blocks(16, 10), np.roll(blocks(16, 10), 3, axis=1)]
    write_turned_clip(tmp_path / "phone.mp4", stored, matrix)
    info = probe_video(tmp_path / "phone.mp4")
    upright = [displayed(f, *matrix[0], *matrix[1]) for f in stored]
    assert (info.width, info.height) == (upright[0].shape[1], upright[0].shape[0])
    notes = []
    frames = list(read_video(info, notice=notes.append))
    assert notes == []
    assert len(frames) == 2
    for got, want in zip(frames, upright):
        assert np.array_equal(got, want)
    # --size names the upright size, as for a turned JPEG
    assert next(read_video(info, size=(0, 8))).shape == (8, round(8 * info.width / info.height), 3)


@pytest.mark.parametrize("matrix", [((1, 0), (0, 1)), ((0, 1), (-1, 0))])
def test_non_square_pixels_are_read_at_the_display_size(tmp_path, matrix):
    stored = blocks(72, 48)
    write_turned_clip(tmp_path / "dvd.mp4", [stored] * 2, matrix, sample_aspect=Fraction(32, 27))
    info = probe_video(tmp_path / "dvd.mp4")
    assert info.sample_aspect == Fraction(32, 27)
    wide = resize(stored, 85, 48)  # 72 x 32/27 = 85.3 square pixels wide, as a player shows it
    want = displayed(wide, *matrix[0], *matrix[1])
    assert (info.width, info.height) == (want.shape[1], want.shape[0])
    assert np.array_equal(next(read_video(info)), want)
    code, err = run("encode", tmp_path / "dvd.mp4", "-o", tmp_path / "v.gsv", *FAST)
    assert code == 0 and "non-square pixels (32:27)" in err, err


def test_a_display_rotation_off_the_quarter_turns_is_told_and_not_applied(tmp_path):
    with av.open(str(tmp_path / "tilted.mp4"), "w") as out:
        stream = out.add_stream("libx264rgb", rate=12)
        stream.width, stream.height, stream.pix_fmt = 16, 10, "rgb24"
        stream.set_display_rotation(30)
        out.mux(stream.encode(av.VideoFrame.from_ndarray(blocks(16, 10), format="rgb24")))
        out.mux(stream.encode(None))
    info = probe_video(tmp_path / "tilted.mp4")
    notes = []
    frames = list(read_video(info, notice=notes.append))
    assert frames[0].shape == (10, 16, 3)
    assert len(notes) == 1, notes
    assert "display rotation (330 degrees clockwise)" in notes[0] and "not applied" in notes[0], notes


def test_a_turned_video_encodes_and_evaluates_upright(tmp_path):
    stored = [blocks(32, 20)] * 3
    write_turned_clip(tmp_path / "phone.mp4", stored, ((0, -1), (1, 0)))  # a quarter turn counter-clockwise
    code, err = run("encode", tmp_path / "phone.mp4", "-o", tmp_path / "v.gsv", *FAST)
    assert code == 0, err
    result = CliRunner().invoke(main, ["info", str(tmp_path / "v.gsv"), "--json"])
    info = json.loads(result.stdout)
    assert (info["width"], info["height"]) == (20, 32)
    code, err = run("eval", tmp_path / "v.gsv", "--reference", tmp_path / "phone.mp4")
    assert code == 0 and "resizing" not in err, err


def tiff_block(order: str, entries: list[tuple[int, int, int]]) -> bytes:
    """An EXIF TIFF block: header and one directory of (tag, type, value) entries."""
    mark = b"II" if order == "<" else b"MM"
    out = mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", len(entries))
    for tag, kind, value in entries:
        out += struct.pack(order + "HHIHH", tag, kind, 1, value, 0)
    return out


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_parser_reads_both_byte_orders(order):
    assert _exif_orientation(tiff_block(order, [(0x010F, 2, 0), (0x0112, 3, 6)])) == 6
    assert _exif_orientation(tiff_block(order, [(0x0112, 3, 9)])) == 1  # out of range
    assert _exif_orientation(tiff_block(order, [(0x010F, 2, 0)])) == 1  # absent


@pytest.mark.parametrize("block", [b"", b"junk", b"II*\x00\xff\xff\xff\x00", b"MM\x00*\x00\x00\x00\x08\x00\x05"])
def test_damaged_exif_is_ignored(tmp_path, block):
    assert _exif_orientation(block) == 1
    path = tmp_path / "photo.jpg"
    Image.fromarray(blocks()).save(path, quality=95)
    data = path.read_bytes()
    app1 = b"Exif\x00\x00" + block
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    assert read_image(path).shape == (10, 16, 3)


# --- huge pictures ----------------------------------------------------------------------

def write_gray_png(path, width: int, height: int) -> None:
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width), np.uint8), format="gray")
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)


def fake_png(path, width: int, height: int) -> None:
    """A PNG signature and IHDR claiming width x height, and no pixels."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + b"\0" * 4)


def test_a_picture_over_the_stream_limit_is_refused_with_a_size_hint(tmp_path):
    write_gray_png(tmp_path / "big.png", 8193, 8192)  # 67,117,056 pixels: just over 2**26
    code, err = run("encode", tmp_path / "big.png", "-o", tmp_path / "big.gsv", *FAST)
    assert_fails_plainly(code, err, "8193x8192", "67,108,864 pixels", "--size 8192x0")
    assert not (tmp_path / "big.gsv").exists()
    # reading it to shrink it works (the source is within MAX_SOURCE_PIXELS)
    assert read_image(tmp_path / "big.png", size=(512, 0)).shape == (512, 512, 3)
    with pytest.raises(GsvcError, match="choose a smaller --size"):
        read_image(tmp_path / "big.png", size=(8193, 0))


def test_a_side_over_the_stream_limit_is_refused(tmp_path):
    write_gray_png(tmp_path / "long.png", 32769, 1)
    code, err = run("encode", tmp_path / "long.png", "-o", tmp_path / "long.gsv", *FAST)
    assert_fails_plainly(code, err, "32768 a side", "--size 32768x0")


def test_a_source_too_large_to_decode_is_refused_before_decoding(tmp_path):
    fake_png(tmp_path / "bomb.png", 20000, 20000)
    assert 20000 * 20000 > MAX_SOURCE_PIXELS
    code, err = run("encode", tmp_path / "bomb.png", "-o", tmp_path / "bomb.gsv", *FAST)
    assert_fails_plainly(code, err, "20000x20000", "too large to read", f"{MAX_SOURCE_PIXELS:,}")


# --- videos -----------------------------------------------------------------------------

def write_frames(path, count: int, codec: str, pix_fmt: str, pts=None, time_base=Fraction(1, 25),
                 corrupt_packet: int | None = None) -> None:
    """``count`` 32x24 frames; ``pts`` in ``time_base`` units (default 0, 1, 2, ...);
    packet number ``corrupt_packet`` replaced by junk bytes."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, pix_fmt
        stream.codec_context.time_base = time_base
        out.start_encoding()  # a header even when no frame follows
        packets = []
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(noise(32, 24, i), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = (pts[i] if pts else i), time_base
            packets += stream.encode(frame)
        packets += stream.encode()
        for n, packet in enumerate(packets):
            if n == corrupt_packet:
                junk = av.Packet(bytes(range(256)) * 2)
                junk.pts, junk.dts, junk.time_base, junk.stream = packet.pts, packet.dts, packet.time_base, stream
                packet = junk
            out.mux(packet)


@pytest.mark.parametrize("name,codec,pix_fmt,words", [
    ("empty.avi", "mjpeg", "yuvj420p", "has no frames"),
    ("empty.mkv", "ffv1", "bgr0", "ends early"),
    ("empty.mp4", "libx264", "yuv420p", "no video or picture"),
])
def test_a_video_without_frames_is_refused(tmp_path, name, codec, pix_fmt, words):
    write_frames(tmp_path / name, 0, codec, pix_fmt)
    code, err = run("encode", tmp_path / name, "-o", tmp_path / "v.gsv", *FAST)
    assert_fails_plainly(code, err, words)
    assert not (tmp_path / "v.gsv").exists()


def test_start_past_the_end_is_refused(tmp_path):
    write_frames(tmp_path / "clip.avi", 4, "mjpeg", "yuvj420p")
    code, err = run("encode", tmp_path / "clip.avi", "-o", tmp_path / "v.gsv", "--start", "60", *FAST)
    assert_fails_plainly(code, err, "no frames from --start 60 s on")


def test_a_10_bit_video_is_rounded_to_8_bits_with_one_note(tmp_path):
    ten = np.random.default_rng(3).integers(0, 1024, (24, 32, 3)).astype(np.uint16)  # 10-bit samples
    with av.open(str(tmp_path / "deep.mkv"), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "gbrp10le"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray((ten * 64) | (ten >> 4), format="rgb48le").reformat(format="gbrp10le")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    notes = []
    frames = list(read_video(probe_video(tmp_path / "deep.mkv"), notice=notes.append))
    assert len(frames) == 3
    assert notes == [f"{tmp_path / 'deep.mkv'}: converted to 8-bit RGB: 10-bit samples reduced to 8 bits"]
    want = np.round(ten.astype(float) * 255 / 1023)
    assert np.abs(frames[0].astype(float) - want).max() <= 1


def write_interlaced_clip(path, frames: int = 6) -> None:
    """A bar moving 3 px a field, its frames woven from two fields (top first) and flagged
    interlaced, as a broadcast or camcorder clip is."""
    def field_time(t):
        rgb = np.full((48, 64, 3), 60, np.uint8)
        rgb[:, 5 + 3 * t:13 + 3 * t] = 230
        return rgb

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"x264-params": "interlaced=1:tff=1", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(frames):
            woven = field_time(2 * k)
            woven[1::2] = field_time(2 * k + 1)[1::2]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(woven, format="rgb24")))
        out.mux(stream.encode(None))


def combing(rgb: np.ndarray) -> float:
    """Mean distance of each line from the mean of its neighbours: the comb of two fields."""
    g = rgb[..., 1].astype(float)
    return float(np.abs(g[1:-1] - (g[:-2] + g[2:]) / 2).mean())


def test_an_interlaced_video_is_deinterlaced_a_frame_for_each_frame(tmp_path):
    write_interlaced_clip(tmp_path / "tv.mp4")
    with av.open(str(tmp_path / "tv.mp4")) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert min(combing(f) for f in stored) > 10  # the woven fields comb
    notes = []
    frames = list(read_video(probe_video(tmp_path / "tv.mp4"), notice=notes.append))
    assert len(frames) == len(stored) == 6
    assert max(combing(f) for f in frames) < 2
    assert len(notes) == 1 and "interlaced; deinterlaced" in notes[0], notes
    later = list(read_video(probe_video(tmp_path / "tv.mp4"), start=0.1, max_frames=2))  # after a seek too
    assert len(later) == 2 and max(combing(f) for f in later) < 2


def _box_list(data, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """ISO-BMFF boxes between start and end, in order: (type, start, end)."""
    found, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        found.append((kind, at, at + size))
        at += size
    return found


def _boxes(data, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    return {kind: (a, b) for kind, a, b in _box_list(data, start, end)}


def write_avif(path, rgb: np.ndarray, quarter_turns: int = 0) -> None:
    """A still AVIF (what phones and browsers write), with an ``irot`` property of
    ``quarter_turns`` anticlockwise on its picture when non-zero (the AVIF muxer writes
    none, so it is added to the item properties: ipco gets the box, ipma the link)."""
    with av.open(str(path), "w", format="avif") as out:
        stream = out.add_stream("libsvtav1", rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    if not quarter_turns:
        return
    data = bytearray(path.read_bytes())
    top = _boxes(data, 0, len(data))
    (m0, m1), mdat = top[b"meta"], top[b"mdat"][0]
    assert mdat >= m1  # the picture's data follows meta: its file offsets (iloc) move by the 10 bytes added
    meta = _boxes(data, m0 + 12, m1)
    i0 = meta[b"iloc"][0]
    assert data[i0 + 8] == 0  # iloc v0: item, data reference, base offset, extents (offset, length)
    off_size, len_size, base_size = data[i0 + 12] >> 4, data[i0 + 12] & 15, data[i0 + 13] >> 4
    at = i0 + 16
    for _ in range(struct.unpack(">H", data[i0 + 14:i0 + 16])[0]):
        at += 4
        offsets = [(at, base_size)] if base_size else []
        at += base_size
        extents = struct.unpack(">H", data[at:at + 2])[0]
        at += 2
        for _ in range(extents):
            offsets += [] if base_size else [(at, off_size)]
            at += off_size + len_size
        for where, size in offsets:
            moved = int.from_bytes(data[where:where + size], "big") + 10
            data[where:where + size] = moved.to_bytes(size, "big")
    p0, p1 = meta[b"iprp"]
    props = _boxes(data, p0 + 8, p1)
    (c0, c1), (a0, _) = props[b"ipco"], props[b"ipma"]
    assert c1 <= a0 and data[a0 + 8] == 0 and not data[a0 + 11] & 1  # ipma v0, 1-byte links
    index = len(_box_list(data, c0 + 8, c1)) + 1  # properties count from 1, duplicates too
    count_at = a0 + 16 + 2  # the first entry's (item 1) link count
    links = data[count_at]
    data[count_at + 1 + links:count_at + 1 + links] = bytes([0x80 | index])  # essential
    data[count_at] = links + 1
    data[c1:c1] = struct.pack(">I4sB", 9, b"irot", quarter_turns)
    for at, grow in ((a0 + 9, 1), (c0, 9), (p0, 10), (m0, 10)):  # ipma moved by the 9 bytes before it
        data[at:at + 4] = struct.pack(">I", struct.unpack(">I", data[at:at + 4])[0] + grow)
    path.write_bytes(bytes(data))


needs_av1 = pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="PyAV's FFmpeg has no AV1 encoder")


@needs_av1
def test_a_heif_still_is_a_picture_not_a_one_frame_video(tmp_path):
    write_avif(tmp_path / "photo.avif", blocks(64, 48))
    assert probe_video(tmp_path / "photo.avif") is None
    code, err = run("encode", tmp_path / "photo.avif", "-o", tmp_path / "p.gsv", "--bpp", "1.0", *FAST)
    assert code == 0, err  # --bpp is for pictures: refused for a video
    info = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "p.gsv"), "--json"]).stdout)
    assert info["kind"] == "image" and (info["width"], info["height"]) == (64, 48)


@needs_av1
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_heif_rotation_gives_the_upright_picture(tmp_path, turns):
    write_avif(tmp_path / "plain.avif", blocks(64, 48))
    write_avif(tmp_path / "turned.avif", blocks(64, 48), quarter_turns=turns)
    stored = read_image(tmp_path / "plain.avif")
    assert np.array_equal(read_image(tmp_path / "turned.avif"), np.rot90(stored, turns))  # irot: anticlockwise


def test_the_film_is_read_not_a_cover_picture_stored_before_it(tmp_path):
    with av.open(str(tmp_path / "film.mkv"), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 24, "yuvj420p"
        film = out.add_stream("ffv1", rate=25)
        film.width, film.height, film.pix_fmt = 48, 36, "bgr0"
        out.mux(cover.encode(av.VideoFrame.from_ndarray(noise(32, 24), format="rgb24").reformat(format="yuvj420p")))
        out.mux(cover.encode(None))
        for i in range(6):
            out.mux(film.encode(av.VideoFrame.from_ndarray(noise(48, 36, i), format="rgb24").reformat(format="bgr0")))
        out.mux(film.encode(None))
    info = probe_video(tmp_path / "film.mkv")
    frames = list(read_video(info))
    assert (info.width, info.height, len(frames)) == (48, 36, 6)
    assert np.array_equal(frames[2], noise(48, 36, 2))


@pytest.mark.parametrize("trc,name", [(16, "PQ"), (18, "HLG")])
def test_an_hdr_video_says_it_is_not_tone_mapped(tmp_path, trc, name):
    with av.open(str(tmp_path / "hdr.mkv"), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p10le"
        stream.codec_context.color_trc, stream.codec_context.color_primaries = trc, 9  # BT.2020
        stream.codec_context.colorspace = 9
        out.mux(stream.encode(av.VideoFrame.from_ndarray(noise(32, 24), format="rgb24").reformat(format="yuv420p10le")))
        out.mux(stream.encode(None))
    notes = []
    list(read_video(probe_video(tmp_path / "hdr.mkv"), notice=notes.append))
    assert len(notes) == 1 and f"HDR ({name})" in notes[0] and "without tone mapping" in notes[0], notes


@pytest.mark.parametrize("name,codec,pix_fmt", [("clock.ts", "libx264", "yuv420p"), ("clock.mkv", "ffv1", "bgr0"),
                                                 ("clock.mp4", "libx264", "yuv420p")])
def test_start_counts_from_the_first_frame_whatever_the_clock(tmp_path, name, codec, pix_fmt):
    """A capture's clock may begin at 10 s: --start 1 is the 25th frame at 25 fps, as with
    ffmpeg -ss; an MPEG-TS (which cannot seek without an index) is read from the top."""
    write_frames(tmp_path / name, 50, codec, pix_fmt, pts=[250 + i for i in range(50)])
    frames = list(read_video(probe_video(tmp_path / name), start=1.0, max_frames=3))

    def which(frame):
        return int(np.argmin([np.mean((frame.astype(float) - noise(32, 24, i)) ** 2) for i in range(50)]))

    assert [which(f) for f in frames] == [25, 26, 27]
    assert which(next(read_video(probe_video(tmp_path / name)))) == 0


@pytest.mark.parametrize("name,codec,pix_fmt", [("vfr.mp4", "libx264", "yuv420p"), ("vfr.mkv", "ffv1", "bgr0")])
def test_variable_frame_rate_keeps_every_frame_at_the_average_rate(tmp_path, name, codec, pix_fmt):
    times_ms = [0, 40, 200, 210, 400, 700, 720]
    write_frames(tmp_path / name, len(times_ms), codec, pix_fmt, pts=times_ms, time_base=Fraction(1, 1000))
    fps = probe_video(tmp_path / name).fps
    out = encode_decode(tmp_path, tmp_path / name, "out.mkv")
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.gsv"), "--json"])
    info = json.loads(result.stdout)
    assert info["frames"] == len(times_ms)  # none dropped or repeated
    assert info["fps"] == pytest.approx(float(fps))  # the average rate, as probe_video tells it
    frames, decoded_fps = read_video_frames(out)
    assert len(frames) == len(times_ms) and decoded_fps == fps


def test_a_frame_the_decoder_rejects_is_skipped_with_one_note(tmp_path):
    write_frames(tmp_path / "junk.avi", 10, "mjpeg", "yuvj420p", corrupt_packet=4)
    notes = []
    frames = list(read_video(probe_video(tmp_path / "junk.avi"), notice=notes.append))
    assert len(frames) == 9
    assert len(notes) == 1 and "skipped 1 damaged frame" in notes[0] and "0.16 s" in notes[0], notes


@pytest.mark.parametrize("name,codec,pix_fmt", [("c.mp4", "libx264", "yuv420p"), ("c.avi", "mjpeg", "yuvj420p"),
                                                ("c.mkv", "ffv1", "bgr0")])
@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_bytes_overwritten_in_a_video_never_crash_or_hang(tmp_path, name, codec, pix_fmt, where):
    write_frames(tmp_path / name, 30, codec, pix_fmt)
    data = bytearray((tmp_path / name).read_bytes())
    at = int(len(data) * where)
    data[at:at + 64] = bytes(64)
    (tmp_path / name).write_bytes(bytes(data))
    notes = []
    try:
        frames = list(read_video(probe_video(tmp_path / name), notice=notes.append))
    except GsvcError as e:
        assert "\n" not in str(e) and "Errno" not in str(e)
    else:
        assert 0 < len(frames) <= 30 and len(notes) <= 1
        assert all("\n" not in n and "Errno" not in n for n in notes)


# --- not media at all -------------------------------------------------------------------

def not_media(tmp_path, kind: str, name: str):
    path = tmp_path / name
    if kind == "text":
        path.write_text("hello, this is not a picture\n" * 20)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "zip":
        # a fixed date: the zip's bytes (and so what FFmpeg's probe makes of them) would
        # otherwise change with the clock (a run at one time read as a damaged picture)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(zipfile.ZipInfo("a.txt", date_time=(2020, 1, 1, 0, 0, 0)), "x" * 1000)
    elif kind == "png_signature_only":
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    elif kind == "cut_png":
        write_image(tmp_path / "full.png", noise(40, 30))
        path.write_bytes((tmp_path / "full.png").read_bytes()[:100])
    return path


@pytest.mark.parametrize("kind", ["text", "random", "zip", "png_signature_only", "cut_png"])
@pytest.mark.parametrize("ext", [".png", ".mp4"])
def test_a_file_that_is_no_media_fails_plainly(tmp_path, kind, ext):
    path = not_media(tmp_path, kind, "x" + ext)
    code, err = run("encode", path, "-o", tmp_path / "x.gsv", *FAST)
    assert_fails_plainly(code, err, str(path), "gsvc can read")
    assert "(" in err and "Invalid data found" not in err


def test_an_animated_webp_is_named_as_one(tmp_path):
    frames = [Image.fromarray(blocks()), Image.fromarray(np.roll(blocks(), 4, axis=1))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    code, err = run("encode", tmp_path / "anim.webp", "-o", tmp_path / "a.gsv", *FAST)
    assert_fails_plainly(code, err, "an animated WebP", "convert it to a video")
    assert not (tmp_path / "a.gsv").exists()
    Image.fromarray(blocks()).save(tmp_path / "still.webp", lossless=True)  # a still WebP reads as before
    assert np.array_equal(read_image(tmp_path / "still.webp"), blocks())


def test_a_text_file_is_not_read_as_ansi_art(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("# notes\n\nnot a picture\n" * 100)  # long enough for FFmpeg to take it as ANSI art
    code, err = run("encode", path, "-o", tmp_path / "x.gsv", *FAST)
    assert_fails_plainly(code, err, "a text file")


def test_no_errno_text_when_a_reference_is_no_picture(tmp_path):
    write_image(tmp_path / "in.png", noise(4, 3))
    code, err = run("encode", tmp_path / "in.png", "-o", tmp_path / "s.gsv", *FAST)
    assert code == 0, err
    bad = not_media(tmp_path, "text", "ref.png")
    code, err = run("eval", tmp_path / "s.gsv", "--reference", bad, "--repeats", "1")
    assert_fails_plainly(code, err, "ref.png")
