"""The C heap's policy for training: keep large freed blocks for reuse.

Every training iteration allocates and frees the same large arrays: two rendered
pictures, the gradient images, the backward's per-pair sums and the binning's lists
(about 20 MB at 768x512). glibc serves blocks above its mmap threshold with a fresh
``mmap`` and returns them with ``munmap`` when freed, so each iteration pays page faults
on first touch and, with the kernels' worker threads alive, TLB shoot-downs on every
unmap. Raising the threshold to its maximum (32 MiB on 64-bit glibc) and the trim
threshold with it keeps those blocks in the heap, reused from one iteration to the next.

Measured (docs/results.md, "Page faults out of the training loop"): a default medium
Kodak encode 11-15 % faster, its system time 11-13 s -> ~2 s. Blocks above 32 MiB (a
12 MP picture: 144 MB) stay mapped as before (``loss.Pictures`` reuses those itself).
It changes no number: the same bytes are written. Other C libraries (macOS, musl):
nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts on 64-bit (4 * 1024 * 1024 * sizeof(long))
MMAP_THRESHOLD = 32 << 20
#: free memory at the top of the heap kept before it is returned to the system
TRIM_THRESHOLD = 256 << 20

_done = False


def keep_freed_blocks() -> bool:
    """Set glibc's heap policy for training (once per process); whether it applies."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
