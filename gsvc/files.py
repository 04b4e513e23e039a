"""Files in and out: readable-input checks, and outputs that appear whole or not at all.

Outputs are written to a temporary file in the destination's folder and renamed into
place on success, so an error, Ctrl-C or a full disk never leaves a partial or
clobbered file. Special files that exist already (``/dev/null``, a FIFO) are written
directly: they cannot be replaced by a rename.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import GsvcError


def check_input_file(path: str | os.PathLike) -> Path:
    """Fail with one clear line if ``path`` is not a readable, non-empty regular file.

    A FIFO or device is refused before it is opened (opening one can block forever);
    pipes are read through ``-`` instead.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise GsvcError(f"{p}: no such file") from None
    except OSError as e:
        raise GsvcError(f"{p}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GsvcError(f"{p}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise GsvcError(f"{p}: not a regular file (to read a pipe, give - and redirect it to stdin)")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise GsvcError(f"{p}: cannot read ({e.strerror})") from None
    if st.st_size == 0:
        raise GsvcError(f"{p}: empty file")
    return p


def is_special(path: str | os.PathLike) -> bool:
    """An existing file that is not a regular file or a folder (/dev/null, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths name one file (the same path, or one file through a link)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
        return pa.resolve() == pb.resolve()
    except OSError:
        return False


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, with one line, if ``path`` cannot be written; leaves nothing behind."""
    if is_special(path):
        return
    _temp_beside(Path(path)).unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    dest = Path(path)
    if is_special(dest):  # /dev/null, a FIFO: written in place, never renamed over
        yield dest
        return
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


