"""Image input and output through PyAV (no Pillow), with atomic writes."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import GsvcError

#: Output formats by file extension: (av codec, pixel format written).
IMAGE_WRITERS = {
    ".png": ("png", "rgb24"),
    ".jpg": ("mjpeg", "yuvj444p"),
    ".jpeg": ("mjpeg", "yuvj444p"),
}

_PLAIN_RGB = {"rgb24"}


def check_input_file(path: str | os.PathLike) -> Path:
    """Fail with one clear line if ``path`` is not a readable, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise GsvcError(f"{p}: no such file")
    if p.is_dir():
        raise GsvcError(f"{p}: is a directory, not a file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except OSError as e:
        raise GsvcError(f"{p}: cannot read ({e.strerror})") from None
    if size == 0:
        raise GsvcError(f"{p}: empty file")
    return p


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


def _temp_beside(dest: Path) -> Path:
    """A new empty temporary file in ``dest``'s directory (same file system)."""
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise GsvcError(f"{dest}: is a directory")
    if not parent.is_dir():
        raise GsvcError(f"{dest}: directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part" + dest.suffix, dir=parent)
    except OSError as e:
        raise GsvcError(f"{dest}: cannot write ({e.strerror})") from None
    os.close(fd)
    return Path(tmp)


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, with one line, if ``path`` cannot be written; leaves nothing behind."""
    _temp_beside(Path(path)).unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    dest = Path(path)
    tmp_path = _temp_beside(dest)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


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
