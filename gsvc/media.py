"""Picture and video input and output through PyAV (no Pillow), with atomic writes."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import GsvcError
from .files import atomic_output, check_input_file

#: Output formats by file extension: (av codec, pixel format written).
IMAGE_WRITERS = {
    ".png": ("png", "rgb24"),
    ".jpg": ("mjpeg", "yuvj444p"),
    ".jpeg": ("mjpeg", "yuvj444p"),
}

_PLAIN_RGB = {"rgb24"}


def read_image(path: str | os.PathLike, notice: Callable[[str], None] | None = None) -> np.ndarray:
    """First frame of an image file as 8-bit RGB, [H, W, 3] uint8.

    Grayscale, alpha and high-bit-depth inputs are converted, with a one-line notice.
    """
    import av

    p = check_input_file(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise GsvcError(f"{p}: not an image (no picture in it)")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise GsvcError(f"{p}: not an image (no picture could be decoded)")
            source_format = frame.format.name
            rgb = frame.to_ndarray(format="rgb24")
    except GsvcError:
        raise
    except (av.error.FFmpegError, StopIteration, ValueError) as e:
        raise GsvcError(f"{p}: not an image gsvc can read ({_first_line(e)})") from None
    if source_format not in _PLAIN_RGB and notice is not None:
        notice(f"{p}: converted {source_format} to 8-bit RGB")
    return np.ascontiguousarray(rgb)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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


def _is_image_container(container) -> bool:
    name = container.format.name
    return name in _IMAGE_DEMUXERS or name.endswith("_pipe")  # png_pipe, jpeg_pipe, ... (y4m is "yuv4mpegpipe")


def probe_video(path: str | os.PathLike) -> VideoInfo | None:
    """The video's properties, or None when the file is a still picture."""
    import av

    p = check_input_file(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise GsvcError(f"{p}: no video or picture in it")
            if _is_image_container(container):
                return None
            s = container.streams.video[0]
            fps = s.average_rate or s.guessed_rate or s.base_rate
            if not fps or fps <= 0:
                fps = Fraction(25)
            duration = float(s.duration * s.time_base) if s.duration and s.time_base else 0.0
            if not duration and container.duration:
                duration = container.duration / 1e6
            return VideoInfo(p, s.codec_context.width, s.codec_context.height, Fraction(fps), s.frames or 0,
                             duration, bool(container.streams.audio))
    except GsvcError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise GsvcError(f"{p}: not a picture or video gsvc can read ({_first_line(e)})") from None


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


def read_video(
    info: VideoInfo, start: float = 0.0, max_frames: int | None = None, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """Decode frames one at a time as [H, W, 3] uint8 RGB, from ``start`` seconds on,
    resized (area filter) to ``size`` when given."""
    import av

    width, height = fit_size(size, info.width, info.height)
    count = 0
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 0 and stream.time_base:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            index = 0
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else index / float(info.fps)
                index += 1
                if t < start - 0.5 / float(info.fps):
                    continue
                if max_frames is not None and count >= max_frames:
                    return
                out = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
                count += 1
                yield np.ascontiguousarray(out.to_ndarray())
    except GsvcError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise GsvcError(f"{info.path}: cannot decode frame {count} ({_first_line(e)})") from None


def is_frame_pattern(path: str | os.PathLike) -> bool:
    """A printf-style file pattern such as frames/f_%04d.png (one file per frame)."""
    import re

    return re.search(r"%0?\d*d", Path(path).name) is not None


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
    with atomic_output(dest) as tmp:
        with av.open(str(tmp), "w") as out:
            stream = out.add_stream(codec, rate=fps, options=dict(options))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.codec_context.time_base = 1 / Fraction(fps)
            index = 0

            def write(rgb: np.ndarray) -> None:
                nonlocal index
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
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
    """Every frame of a video file (or frame pattern) in memory, and its frame rate (tests, eval)."""
    p = Path(path)
    if is_frame_pattern(p):
        frames = []
        i = 1
        while Path(str(p) % i).exists():
            frames.append(read_image(Path(str(p) % i)))
            i += 1
        return frames, Fraction(0)
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
