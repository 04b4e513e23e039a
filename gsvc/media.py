"""Picture and video input and output through PyAV (no Pillow), with atomic writes.

Reading never crashes on a stranger's file: whatever goes wrong becomes one GsvcError
line in plain words (FFmpeg's errno texts never reach the user), a source too large to
decode in bounded memory is refused before FFmpeg allocates it, and a conversion that
loses something (alpha, samples over 8 bits, CMYK) is told in one ``notice`` line.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from bitstream.limits import MAX_FPS, MAX_PIXELS, MAX_SIDE

from .errors import GsvcError
from .files import atomic_output, check_input_file

Notice = Callable[[str], None]

#: Output formats by file extension: (av codec, pixel format written).
IMAGE_WRITERS = {
    ".png": ("png", "rgb24"),
    ".jpg": ("mjpeg", "yuvj444p"),
    ".jpeg": ("mjpeg", "yuvj444p"),
}

#: Largest source picture or video frame read at all, in pixels (268 MP): four times
#: what a stream holds, so that --size can shrink a 200 MP photo, and about FFmpeg's own
#: ceiling for one frame. Decoding holds one whole source frame, so reading takes at most
#: this many pixels times the source's bytes per pixel (a 200 MP JPEG: about 0.5 GB);
#: FFmpeg (its max_pixels option) refuses anything larger before allocating it.
MAX_SOURCE_PIXELS = 4 * MAX_PIXELS

#: The number field of a frame pattern (f_%04d.png, f_%d.png).
_FRAME_FIELD = re.compile(r"%0?\d*d")

#: Codecs that draw text (ANSI art and the like) as video: a text file is no picture.
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}


# --- errors and limits ---------------------------------------------------------------

def _plain_reason(e: BaseException) -> str:
    """What went wrong, in plain words: never FFmpeg's errno, call or file name."""
    import av

    for kind, reason in (
        (av.error.InvalidDataError, "unrecognized or damaged data"),
        (av.error.EOFError, "the file ends early: empty or cut short"),
        (av.error.DecoderNotFoundError, "FFmpeg has no decoder for its codec"),
        ((av.error.PatchWelcomeError, av.error.NotImplementedError), "it uses a feature FFmpeg does not support"),
        (av.error.MemoryError, "out of memory"),
        (av.error.PermissionError, "permission denied"),
    ):
        if isinstance(e, kind):
            return reason
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return "damaged or unsupported data"


@contextlib.contextmanager
def _plain_errors(path: Path, failure: str | Callable[[], str]) -> Iterator[None]:
    """Turn PyAV's exceptions inside the block into one line: "PATH: FAILURE (reason)"."""
    import av

    try:
        yield
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        what = failure() if callable(failure) else failure
        raise GsvcError(f"{path}: {what} ({_plain_reason(e)})") from None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def _encodable(width: int, height: int) -> bool:
    return width * height <= MAX_PIXELS and max(width, height) <= MAX_SIDE


def _size_within_limits(width: int, height: int) -> str:
    """The largest --size value (WIDTHx0: the aspect kept) that a stream holds."""
    scale = min(math.sqrt(MAX_PIXELS / (width * height)), MAX_SIDE / max(width, height))
    w = max(1, math.floor(width * scale))
    while w > 1 and not _encodable(*fit_size((w, 0), width, height)):
        w -= 1
    return f"{w}x0"


def check_encodable(path: str | os.PathLike, width: int, height: int, resized: bool = False) -> None:
    """Fail, naming the limits, when a width x height picture is more than a stream holds;
    ``resized``: the size came from --size."""
    if _encodable(width, height):
        return
    hint = ("choose a smaller --size" if resized
            else f"give --size to encode it smaller, e.g. --size {_size_within_limits(width, height)}")
    raise GsvcError(f"{path}: {width}x{height} ({_megapixels(width * height)}) is more than gsvc encodes: at most "
                    f"{MAX_PIXELS:,} pixels ({MAX_PIXELS // 10**6} MP) and {MAX_SIDE} a side; {hint}")


def _check_source_size(path: Path, width: int, height: int) -> None:
    """Fail when a source is too large to decode in bounded memory (MAX_SOURCE_PIXELS)."""
    if width * height > MAX_SOURCE_PIXELS:
        raise GsvcError(f"{path}: {width}x{height} ({_megapixels(width * height)}) is too large to read: gsvc "
                        f"decodes at most {MAX_SOURCE_PIXELS:,} pixels ({MAX_SOURCE_PIXELS // 10**6} MP); "
                        f"shrink it with another tool first")


# --- what a file's own header says ---------------------------------------------------

@dataclass(frozen=True)
class _FileHeader:
    """What a PNG's, JPEG's or WebP's own header says, read without decoding (zeros: unknown)."""

    width: int = 0
    height: int = 0
    #: EXIF orientation, 1..8 (1: the rows are stored upright)
    orientation: int = 1
    #: four colour components: a CMYK (or YCCK) JPEG
    cmyk: bool = False
    #: an animated WebP (its VP8X chunk's animation flag), which FFmpeg does not decode
    animated_webp: bool = False

    @property
    def turned(self) -> bool:
        """Stored on its side (EXIF orientations 5-8): width and height swap."""
        return self.orientation >= 5


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: JPEG start-of-frame markers (every coding process): their segment holds the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_APP1 = 0xE1
_EXIF_ORIENTATION_TAG = 0x0112


def _read_file_header(path: Path) -> _FileHeader:
    """The size of a PNG (IHDR) or JPEG, a JPEG's EXIF orientation and colour space, and
    whether a WebP is animated."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return _FileHeader(width, height)
        if head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20:
            return _FileHeader(animated_webp=bool(head[20] & 0x02))
        if head.startswith(b"\xff\xd8"):
            f.seek(2)
            return _read_jpeg_header(f)
    return _FileHeader()


def _read_jpeg_header(f: BinaryIO) -> _FileHeader:
    """Frame size, component count and EXIF orientation from a JPEG's marker segments."""
    width = height = components = 0
    orientation = None
    for marker, payload in _jpeg_segments(f):
        if marker == _JPEG_APP1 and payload.startswith(b"Exif\0\0") and orientation is None:
            orientation = _exif_orientation(payload[6:])
        elif marker in _JPEG_SOF and len(payload) >= 6 and not components:
            height, width = struct.unpack(">HH", payload[1:5])
            components = payload[5]
    return _FileHeader(width, height, orientation or 1, components == 4)


def _jpeg_segments(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each JPEG segment after SOI, up to the first scan; stops
    quietly at anything odd (FFmpeg then says what is wrong)."""
    while f.read(1) == b"\xff":
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # end of image, start of scan
            return
        if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD8:  # TEM, RSTn, SOI: no payload
            continue
        length = int.from_bytes(f.read(2), "big")
        if length < 2:
            return
        yield marker[0], f.read(length - 2)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of an EXIF block's first IFD (a TIFF header and directory);
    1 when absent or damaged."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(entries):
            tag, kind, _count, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * i)
            if tag == _EXIF_ORIENTATION_TAG:
                return value if kind == 3 and 1 <= value <= 8 else 1  # kind 3: SHORT
    except struct.error:
        pass
    return 1


#: Axes to flip for EXIF orientations 1-4; 5-8 are the same after a transpose.
_ORIENTATION_FLIPS = {1: (), 2: (1,), 3: (0, 1), 4: (0,)}


def _upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The picture as meant to be seen, from its stored rows and EXIF orientation
    (2 mirrored, 3 upside down, 4 flipped; 5-8 the same about the diagonal, 6 and 8
    being turns of 90 degrees)."""
    if orientation >= 5:
        rgb = rgb.transpose(1, 0, 2)
        orientation -= 4
    axes = _ORIENTATION_FLIPS[orientation]
    return np.ascontiguousarray(np.flip(rgb, axes) if axes else rgb)


def _display_orientation(frame) -> tuple[int, float | None]:
    """A video frame's display matrix (phones store a portrait clip on its side and say
    so there) as the EXIF orientation that turns the stored rows upright, with FFmpeg's
    own autorotate rules; and the angle in degrees when it is no multiple of 90 (then 1:
    not applied). No matrix: (1, None)."""
    try:
        matrix = next((bytes(d) for d in frame.side_data if d.type.name == "DISPLAYMATRIX"), None)
    except ValueError:  # side data PyAV cannot name (a TIFF's, a JPEG's): the rotation alone, no flips
        turn = round(getattr(frame, "rotation", 0) or 0) % 360  # degrees anticlockwise
        return {0: (1, None), 90: (8, None), 180: (3, None), 270: (6, None)}.get(turn, (1, float(-turn % 360)))
    if matrix is None or len(matrix) != 36:
        return 1, None
    m = np.frombuffer(matrix, dtype=np.int32).astype(np.float64)  # 16.16 fixed point, row-major 3x3
    if math.hypot(m[0], m[3]) == 0 or math.hypot(m[1], m[4]) == 0:
        return 1, None
    # av_display_rotation_get negated, as FFmpeg's autorotate takes it: degrees clockwise
    theta = round(math.degrees(math.atan2(m[1] / math.hypot(m[1], m[4]), m[0] / math.hypot(m[0], m[3]))))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return (5 if m[3] > 0 else 6), None  # transpose cclock_flip / clock
    if abs(theta - 180) < 1:
        return {(True, True): 3, (True, False): 2, (False, True): 4, (False, False): 1}[(m[0] < 0, m[4] < 0)], None
    if abs(theta - 270) < 1:
        return (7 if m[3] < 0 else 8), None  # transpose clock_flip / cclock
    if abs(theta) < 1:
        return (4 if m[4] < 0 else 1), None
    return 1, float(theta)


# --- opening and converting ----------------------------------------------------------

def _open_input(path: Path, fps: Fraction = Fraction(25)):
    """av.open with FFmpeg's own cap on picture size, so that probing a file never
    decodes a picture over MAX_SOURCE_PIXELS. A frame pattern (``pattern_start``) opens
    as FFmpeg's image2 sequence at ``fps``."""
    import av

    options = {"max_pixels": str(MAX_SOURCE_PIXELS)}
    start = pattern_start(path)
    if start is not None:
        options.update(start_number=str(start), framerate=f"{fps.numerator}/{fps.denominator}")
        return av.open(str(path), format="image2", options=options)
    return av.open(str(path), options=options)


def pattern_start(path: str | os.PathLike) -> int | None:
    """The first number of a frame-pattern input such as frames/f_%04d.png (what
    ``gsvc decode -o`` writes), trying 0..4 as FFmpeg's image2 does; None when ``path``
    is no pattern, or names an existing file itself."""
    p = Path(path)
    if not is_frame_pattern(p) or p.exists():
        return None
    for n in range(5):
        if _pattern_file(p, n).is_file():
            return n
    return None


def in_frame_pattern(path: str | os.PathLike, pattern: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the files of the frame-pattern input ``pattern``."""
    from .files import same_file

    pat, p = Path(pattern), Path(path)
    if pattern_start(pat) is None or not same_file(p.parent, pat.parent):
        return False
    return numbered_names(pat).fullmatch(p.name) is not None


def _pattern_file(pattern: Path, n: int) -> Path:
    """Frame ``n`` of a frame pattern (the pattern is in the file name only)."""
    return pattern.parent / (pattern.name % n)


def _pattern_frames(pattern: Path, start: int) -> int:
    """How many files a frame pattern holds from ``start`` on, up to the first gap."""
    n = 0
    while _pattern_file(pattern, start + n).is_file():
        n += 1
    return n


def _picture_stream(container, path: Path):
    """The video stream FFmpeg picks as the main one (as ffmpeg does: not a cover picture
    stored before the film), its decoder capped at MAX_SOURCE_PIXELS; fails when there is
    none, when FFmpeg cannot decode it, or when it is text drawn as video."""
    if not container.streams.video:
        raise GsvcError(f"{path}: no video or picture in it")
    stream = container.streams.best("video") or container.streams.video[0]
    codec = stream.codec_context
    if codec is None:
        raise GsvcError(f"{path}: FFmpeg has no decoder for its picture codec")
    if codec.name in _TEXT_CODECS:
        raise GsvcError(f"{path}: a text file, not a picture or video")
    codec.options = {"max_pixels": str(MAX_SOURCE_PIXELS)}
    return stream


def _known_size(stream, path: Path) -> tuple[int, int]:
    """The stream's picture size; fails when FFmpeg could not tell it (or refused it)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise GsvcError(f"{path}: cannot tell the picture size (damaged, or more than the "
                        f"{MAX_SOURCE_PIXELS // 10**6} MP gsvc reads)")
    _check_source_size(path, width, height)
    return width, height


#: FFmpeg's transfer characteristics of HDR (AVCOL_TRC_SMPTE2084, AVCOL_TRC_ARIB_STD_B67).
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}

#: What a frame is converted to, by (samples over 8 bits, has alpha or a palette).
_WORKING_FORMATS = {(False, False): "rgb24", (False, True): "rgba", (True, False): "rgb48le", (True, True): "rgba64le"}


def _to_rgb(frame, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """The frame as [height, width, 3] uint8 RGB (area filter), and what converting lost:
    samples over 8 bits (rounded to 8 here, exactly), or transparency that was there
    (alpha not everywhere opaque)."""
    fmt = frame.format
    bits = max(c.bits for c in fmt.components)
    alpha = fmt.has_palette or any(c.is_alpha for c in fmt.components)
    working = _WORKING_FORMATS[bits > 8, alpha]
    samples = frame.reformat(width=width, height=height, format=working, interpolation="AREA").to_ndarray()
    losses = []
    if bits > 8:
        samples = ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        losses.append(f"{bits}-bit samples reduced to 8 bits")
    if alpha and samples[..., 3].min() < 255:
        losses.append("transparency (alpha) dropped")
    hdr = _HDR_TRANSFERS.get(int(getattr(frame, "color_trc", 0) or 0))
    if hdr:
        losses.append(f"HDR ({hdr}) samples kept as they are, without tone mapping (colours look flat)")
    return np.ascontiguousarray(samples[..., :3]), losses


# --- pictures ------------------------------------------------------------------------

def _output_size(path: Path, stored_width: int, stored_height: int, turned: bool,
                 size: tuple[int, int] | None) -> tuple[int, int]:
    """The upright size read_image returns for a picture stored at the given size (on its
    side when ``turned``); fails when a stream cannot hold it."""
    width, height = fit_size(size, *((stored_height, stored_width) if turned else (stored_width, stored_height)))
    check_encodable(path, width, height, resized=size is not None)
    return width, height


def read_image(path: str | os.PathLike, notice: Notice | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """First picture of an image file as upright 8-bit RGB, [H, W, 3] uint8, resized
    (area filter) to ``size`` (``--size``: one side 0 keeps the aspect) when given.

    A JPEG's EXIF orientation is applied, and a HEIF's (HEIC, AVIF) rotation and
    mirror. Conversions that lose something (alpha, samples over 8 bits, CMYK) are told
    in one ``notice`` line; lossless ones (gray, palette, YUV) are silent. The result must fit a stream (MAX_PIXELS); the source may
    be up to MAX_SOURCE_PIXELS. Anything else fails with one GsvcError line.
    """
    p = check_input_file(path)
    header = _read_file_header(p)
    if header.animated_webp:
        raise GsvcError(f"{p}: an animated WebP, which FFmpeg (and so gsvc) cannot decode; "
                        f"convert it to a video (.mp4, .mkv) or to PNG frames first")
    if header.width and header.height:  # fail before decoding anything
        _check_source_size(p, header.width, header.height)
        _output_size(p, header.width, header.height, header.turned, size)
    with _plain_errors(p, "not an image gsvc can read"), _open_input(p) as container:
        stream = _picture_stream(container, p)
        frame = next(container.decode(stream), None)
        if frame is None:
            raise GsvcError(f"{p}: not an image (no picture could be decoded)")
        orientation = header.orientation if header.orientation != 1 else _display_orientation(frame)[0]
        turned = orientation >= 5
        width, height = _output_size(p, frame.width, frame.height, turned, size)
        rgb, losses = _to_rgb(frame, *((height, width) if turned else (width, height)))
    if header.cmyk:
        losses.append("CMYK converted to RGB")
    if losses and notice is not None:
        notice(f"{p}: converted to 8-bit RGB: {', '.join(losses)}")
    return _upright(rgb, orientation)


def write_image(path: str | os.PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write [H, W, 3] uint8 RGB as PNG or JPEG, chosen by the extension."""
    import av

    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (rgb.shape, rgb.dtype)
    dest = Path(path)
    ext = dest.suffix.lower()
    if ext not in IMAGE_WRITERS:
        raise GsvcError(f"{dest}: unsupported output extension {ext or '(none)'} (use .png or .jpg)")
    codec, pix_fmt = IMAGE_WRITERS[ext]
    with atomic_output(dest) as tmp:
        with av.open(str(tmp), "w", format="image2") as out:
            stream = out.add_stream(codec)
            stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            stream.pix_fmt = pix_fmt
            if codec == "mjpeg":
                # ffmpeg's qscale: 2 (best) .. 31; map a 1..100 quality onto it
                q = max(2, min(31, round(2 + (100 - jpeg_quality) * 29 / 99)))
                stream.codec_context.qmin = q
                stream.codec_context.qmax = q
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)



# --- video ---------------------------------------------------------------------------

#: Demuxers that hold one still picture: such inputs are encoded as image streams.
_IMAGE_DEMUXERS = {"image2", "image2pipe"}

#: FFmpeg's codes for BT.709 (matrix, primaries, transfer: AVCOL_SPC/PRI/TRC_BT709) and
#: for limited ("MPEG", 16-235) range, which H.264 output is converted to and tagged with.
_BT709 = 1
_LIMITED_RANGE = 1

#: Video outputs by extension: (codec, pixel format, codec options).
#: H.264 is for watching (yuv420p, visually near-lossless); FFV1 keeps the decoded
#: frames exactly (lossless RGB).
VIDEO_WRITERS = {
    ".mp4": ("libx264", "yuv420p", {"crf": "12", "preset": "medium"}),
    ".mov": ("libx264", "yuv420p", {"crf": "12", "preset": "medium"}),
    ".mkv": ("ffv1", "bgr0", {"level": "3"}),
    ".avi": ("ffv1", "bgr0", {}),
}


@dataclass
class VideoInfo:
    """What ``probe_video`` found in a video file."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int  # as the container states it (0: unknown)
    duration: float  # seconds (0: unknown)
    has_audio: bool
    #: EXIF-style orientation from the display matrix (1: stored upright; 5-8: stored on
    #: its side, ``width`` and ``height`` being the upright size)
    orientation: int = 1
    #: a display rotation that is no multiple of 90 degrees, not applied (None: none)
    odd_rotation: float | None = None
    #: the stored pixels' width over their height (DVD, HDV, broadcast: not 1); ``width``
    #: is the display width, which frames are read at (square pixels)
    sample_aspect: Fraction = Fraction(1)


#: ISO brands of HEIF still pictures (a phone's HEIC, AVIF): the mov demuxer reads them,
#: but they are pictures, not one-frame videos (image sequences have their own brands:
#: avis, msf1, hevc)
_STILL_BRANDS = {"avif", "heic", "heix", "heim", "heis", "mif1", "mif2"}


def _is_image_container(container) -> bool:
    name = container.format.name
    if name in _IMAGE_DEMUXERS or name.endswith("_pipe"):  # png_pipe, jpeg_pipe, ... (y4m is "yuv4mpegpipe")
        return True
    return name.startswith("mov,") and container.metadata.get("major_brand", "").strip() in _STILL_BRANDS


def _frame_rate(stream) -> Fraction:
    """Frames per second: the stream's average rate (its frames over its duration, which is
    also what a variable-rate video plays at on average), else FFmpeg's guess, else 25."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and Fraction(1, MAX_FPS) <= rate <= MAX_FPS:
            return Fraction(rate)
    return Fraction(25)


def _duration(container, stream) -> float:
    """Seconds, as the stream (else the container) states it; 0 when unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else 0.0


def _refuse_stream(path: Path) -> None:
    """Fail with the command that was meant when ``path`` is a .gsv stream (its magic)."""
    from bitstream import MAGIC

    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        raise GsvcError(f"{path}: a gsvc stream, not a picture or video (gsvc decode turns it into one)")


def _sample_aspect(stream) -> Fraction:
    """The stream's sample (pixel) aspect ratio; 1 when unset or beyond 1/8..8 (no real
    format's, a damaged header's)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or not Fraction(1, 8) <= sar <= 8:
        return Fraction(1)
    return Fraction(sar)


def _first_frame_orientation(container, stream) -> tuple[int, float | None]:
    """``_display_orientation`` of the first frame that decodes; (1, None) when none
    does here (read_video then tells what is wrong with the frames)."""
    import av

    try:
        first = next(_decoded_frames(container, stream, _Damage()), None)
    except av.error.FFmpegError:
        return 1, None
    return _display_orientation(first) if first is not None else (1, None)


def probe_video(path: str | os.PathLike, pattern_fps: Fraction | None = None) -> VideoInfo | None:
    """The video's properties, or None when the file is a still picture. A frame pattern
    (frames/f_%04d.png, ``pattern_start``) is a video at ``pattern_fps`` (default 25, as
    ffmpeg reads one)."""
    start = pattern_start(path)
    if start is not None:
        return _probe_pattern(Path(path), start, Fraction(pattern_fps or 25))
    p = check_input_file(path)
    _refuse_stream(p)
    with _plain_errors(p, "not a picture or video gsvc can read"), _open_input(p) as container:
        stream = _picture_stream(container, p)
        if _is_image_container(container):
            return None
        width, height = _known_size(stream, p)
        sample_aspect = _sample_aspect(stream)
        width = max(1, round(width * sample_aspect))  # square pixels, as a player shows them
        orientation, odd = _first_frame_orientation(container, stream)
        if orientation >= 5:
            width, height = height, width
        return VideoInfo(p, width, height, _frame_rate(stream), stream.frames or 0, _duration(container, stream),
                         bool(container.streams.audio), orientation, odd, sample_aspect)


def _probe_pattern(pattern: Path, start: int, fps: Fraction) -> VideoInfo:
    first = check_input_file(_pattern_file(pattern, start))
    _refuse_stream(first)
    if not Fraction(1, MAX_FPS) <= fps <= MAX_FPS:
        raise GsvcError(f"--fps {float(fps):g}: out of range")
    frames = _pattern_frames(pattern, start)
    with _plain_errors(first, "not a picture gsvc can read"), _open_input(pattern, fps) as container:
        stream = _picture_stream(container, pattern)
        width, height = _known_size(stream, first)
    return VideoInfo(pattern, width, height, fps, frames, frames / float(fps), False)


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360); one side may be 0 (keep the aspect ratio)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise GsvcError(f"--size {text}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if w < 0 or h < 0 or (w == 0 and h == 0):
        raise GsvcError(f"--size {text}: sizes must be positive (one side may be 0 to keep the aspect)")
    return w, h


def fit_size(size: tuple[int, int] | None, width: int, height: int) -> tuple[int, int]:
    """The output size of a --size request for a width x height source."""
    if size is None:
        return width, height
    w, h = size
    if w == 0:
        w = max(1, round(width * h / height))
    if h == 0:
        h = max(1, round(height * w / width))
    return w, h


@dataclass
class _Damage:
    """What reading a video lost: packets the decoder rejected, frames never found."""

    skipped: int = 0
    first_time: float | None = None  # seconds, of the first skipped packet
    missing: int = 0  # frames the container states beyond those read or skipped
    deinterlaced: bool = False  # interlaced frames were deinterlaced (not a loss: told apart)

    def skip(self, packet) -> None:
        if self.skipped == 0 and packet.pts is not None and packet.time_base:
            self.first_time = float(packet.pts * packet.time_base)
        self.skipped += 1

    def note(self, path: Path, stated: int) -> str | None:
        """One line saying what was lost, or None when nothing was."""
        parts = []
        if self.skipped:
            where = f" (the first at {self.first_time:.2f} s)" if self.first_time is not None else ""
            parts.append(f"skipped {self.skipped} damaged frame{'s' if self.skipped != 1 else ''} "
                         f"that could not be decoded{where}")
        if self.missing:
            parts.append(f"the file lacks {self.missing} of the {stated} frames it states (damaged or cut short)")
        return f"{path}: {'; '.join(parts)}" if parts else None


def _decoded_frames(container, stream, damage: _Damage) -> Iterator:
    """The stream's frames in order; a packet the decoder rejects as damaged is skipped
    (and counted in ``damage``) instead of ending the video."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damage.skip(packet)
            continue
        yield from frames


def _no_frames(info: VideoInfo, start: float, damage: _Damage) -> GsvcError:
    if damage.skipped:
        return GsvcError(f"{info.path}: no frame could be decoded ({damage.skipped} damaged)")
    if start > 0:
        length = f" (the video is {info.duration:.2f} s long)" if info.duration else ""
        return GsvcError(f"{info.path}: no frames from --start {start:g} s on{length}")
    return GsvcError(f"{info.path}: the video has no frames")


def _timed_frames(info: VideoInfo, start: float, damage: _Damage) -> Iterator[tuple[object, float]]:
    """(frame, seconds from the video's first frame) in decoding order, from about
    ``start`` on: a seek to the key frame before it, or, where the demuxer cannot seek
    there (MPEG-TS without an index lands past it or nowhere), from the top. Seconds
    count from the first frame, as ffmpeg's -ss does: a capture or transport stream may
    begin its clock anywhere (10 s, 3 hours). Interlaced frames come deinterlaced
    (``_deinterlaced``; ``damage.deinterlaced`` says so)."""
    for from_top in (start <= 0, True):
        with _open_input(info.path, info.fps) as container:
            stream = _picture_stream(container, info.path)
            stream.thread_type = "AUTO"
            base = stream.time_base
            origin = stream.start_time if stream.start_time is not None and base else 0
            target = None
            if not from_top and base:
                target = origin + int(start / base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            decoded = _decoded_frames(container, stream, damage)
            first = next(decoded, None)
            landed = first is not None and not (target is not None and first.pts is not None and first.pts > target)
            if landed:
                frames: Iterator = itertools.chain([first], decoded)
                interlaced = getattr(first, "interlaced_frame", False)
                if interlaced and min(first.width, first.height) >= _MIN_DEINTERLACE_SIDE:
                    damage.deinterlaced = True
                    frames = _deinterlaced(frames, stream)
                for index, frame in enumerate(frames):
                    timed = frame.pts is not None and base
                    yield frame, (float((frame.pts - origin) * base) if timed else index / float(info.fps))
            if landed or from_top:
                return
            damage.skipped, damage.first_time = 0, None  # read again from the top


#: bwdif needs a few lines and columns around each pixel.
_MIN_DEINTERLACE_SIDE = 4


def _deinterlaced(frames: Iterator, stream) -> Iterator:
    """``frames`` through FFmpeg's bwdif, a frame for each frame (what players do with an
    interlaced broadcast or camcorder clip; coded as stored, its two fields would be
    drawn as combs). Only frames flagged interlaced are touched."""
    import av

    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    deinterlace = graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
    sink = graph.add("buffersink")
    source.link_to(deinterlace)
    deinterlace.link_to(sink)
    graph.configure()

    def ready() -> Iterator:
        while True:
            try:
                yield graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return

    for frame in frames:
        graph.push(frame)
        yield from ready()
    graph.push(None)
    yield from ready()


def read_video(
    info: VideoInfo, start: float = 0.0, max_frames: int | None = None, size: tuple[int, int] | None = None,
    notice: Notice | None = None,
) -> Iterator[np.ndarray]:
    """Decode frames one at a time as upright [H, W, 3] uint8 RGB (the display matrix
    applied, as players do), from ``start`` seconds on, resized (area filter) to
    ``size`` when given. Samples over 8 bits are rounded to 8 (as pictures are) and
    transparency is dropped, told in one ``notice`` line.

    Every decoded frame is yielded once, in order, whatever its timestamp (none dropped
    or repeated onto a constant-rate grid): a variable-rate video keeps its frame count,
    and ``info.fps`` is its average rate. Frames the decoder rejects as damaged are
    skipped; they, and frames the container states but the file lacks, are told in one
    ``notice`` line at the end. No frame at all fails.
    """
    width, height = fit_size(size, info.width, info.height)
    check_encodable(info.path, width, height, resized=size is not None)
    stored = (height, width) if info.orientation >= 5 else (width, height)
    damage = _Damage()
    count = 0
    losses: dict[str, None] = {}  # what converting lost, in order, once each
    with _plain_errors(info.path, lambda: f"cannot decode the video after frame {count}"):
        timed = _timed_frames(info, start, damage)
        for frame, t in timed:
            if t < start - 0.5 / float(info.fps):
                continue
            if max_frames is not None and count >= max_frames:
                timed.close()
                break
            rgb, lost = _to_rgb(frame, *stored)
            losses.update(dict.fromkeys(lost))
            count += 1
            yield _upright(rgb, info.orientation)
        else:  # read to the end: are frames the container states missing?
            if start <= 0 and info.frames:
                damage.missing = max(0, info.frames - count - damage.skipped)
    if count == 0 and max_frames != 0:
        raise _no_frames(info, start, damage)
    note = damage.note(info.path, info.frames)
    if note and notice is not None:
        notice(note)
    if losses and notice is not None:
        notice(f"{info.path}: converted to 8-bit RGB: {', '.join(losses)}")
    if damage.deinterlaced and notice is not None:
        notice(f"{info.path}: interlaced; deinterlaced (bwdif, a frame for each frame) as players show it")
    if info.odd_rotation is not None and notice is not None and count:
        notice(f"{info.path}: its display rotation ({info.odd_rotation:g} degrees clockwise) is not applied "
               f"(only quarter turns and flips are)")


def is_frame_pattern(path: str | os.PathLike) -> bool:
    """A printf-style file pattern such as frames/f_%04d.png (one file per frame)."""
    return _FRAME_FIELD.search(Path(path).name) is not None


def numbered_names(pattern: Path) -> re.Pattern:
    """The file names a frame pattern's number field can give (f_%04d.png: f_<digits>.png),
    the number as group 1."""
    field = _FRAME_FIELD.search(pattern.name)
    return re.compile(re.escape(pattern.name[:field.start()]) + r"(\d+)" + re.escape(pattern.name[field.end():]))


def check_video_output(path: str | os.PathLike) -> None:
    p = Path(path)
    if is_frame_pattern(p):
        if p.suffix.lower() != ".png":
            raise GsvcError(f"{p}: frame patterns are written as PNG (use e.g. f_%04d.png)")
        return
    if p.suffix.lower() not in VIDEO_WRITERS:
        raise GsvcError(f"{p}: unsupported video extension {p.suffix or '(none)'} "
                        f"(use {', '.join(VIDEO_WRITERS)} or a frame pattern like f_%04d.png)")


@contextlib.contextmanager
def video_output(path: str | os.PathLike, width: int, height: int, fps: Fraction,
                 notice: Callable[[str], None] | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Yield ``write(rgb)`` taking frames in order; the file (or every file of a frame
    pattern) appears only when the block completes without error."""
    check_video_output(path)
    if is_frame_pattern(path):
        with _frame_files(Path(path)) as write:
            yield write
        return
    import av

    dest = Path(path)
    codec, pix_fmt, options = VIDEO_WRITERS[dest.suffix.lower()]
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"  # 4:2:0 needs even sizes; keep every pixel instead of cropping
        if notice:
            notice(f"{dest}: odd frame size {width}x{height}, written as H.264 4:4:4")
    if codec == "ffv1" and width == 1:
        options = {**options, "level": "1"}  # FFV1's sliced levels cannot open a 1-pixel-wide frame
    with atomic_output(dest) as tmp:
        # an .mp4/.mov with its index first (ffmpeg's -movflags +faststart): a browser plays it while loading
        muxer = {"movflags": "+faststart"} if dest.suffix.lower() in (".mp4", ".mov") else {}
        with av.open(str(tmp), "w", options=muxer) as out:
            stream = out.add_stream(codec, rate=fps, options=dict(options))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.codec_context.time_base = 1 / Fraction(fps)
            yuv = pix_fmt.startswith("yuv")
            if yuv:  # BT.709, limited range, and said so: players guess otherwise for untagged SD or HD
                cc = stream.codec_context
                cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
                cc.color_range = _LIMITED_RANGE
            index = 0

            def write(rgb: np.ndarray) -> None:
                nonlocal index
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                if yuv:
                    frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
                else:
                    frame = frame.reformat(format=pix_fmt)
                frame.pts = index
                frame.time_base = stream.codec_context.time_base
                index += 1
                for packet in stream.encode(frame):
                    out.mux(packet)

            yield write
            for packet in stream.encode():
                out.mux(packet)


@contextlib.contextmanager
def _frame_files(pattern: Path) -> Iterator[Callable[[np.ndarray], None]]:
    """One PNG per frame, numbered from 1 as ffmpeg's image2 muxer does; all or none."""
    written: list[Path] = []
    index = 1

    def write(rgb: np.ndarray) -> None:
        nonlocal index
        dest = Path(str(pattern) % index)
        index += 1
        write_image(dest, rgb)
        written.append(dest)

    try:
        yield write
    except BaseException:
        for p in written:
            with contextlib.suppress(OSError):
                p.unlink()
        raise



def read_video_frames(path: str | os.PathLike) -> tuple[list[np.ndarray], Fraction]:
    """Every frame of a video file (or of a frame pattern, read as ``probe_video`` reads
    one) in memory, and its frame rate (tests, eval)."""
    p = Path(path)
    info = probe_video(p)
    if info is None:
        return [read_image(p)], Fraction(0)
    return list(read_video(info)), info.fps


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8 resized with the area filter (the one video input uses)."""
    import av

    if rgb.shape[:2] == (height, width):
        return rgb
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return np.ascontiguousarray(frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray())
