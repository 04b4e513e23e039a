"""Range limits of a .gsv stream (FORMAT.md, section "Limits").

A reader checks every header and chunk field against these before it allocates
anything, so a stream that lies about its sizes fails fast, in bounded memory and
time. An encoder never writes a stream outside them.
"""
from __future__ import annotations

#: Largest picture side, in pixels.
MAX_SIDE = 1 << 15  # 32768
#: Largest picture, in pixels (width x height): the encoded size, and any decoded size.
MAX_PIXELS = 1 << 26  # 67,108,864 (67 MP)
#: Largest number of Gaussians in one picture (all its layers together; a video frame).
MAX_GAUSSIANS = 1 << 22  # 4,194,304
#: Largest number of frames in a video stream.
MAX_FRAMES = 1 << 24
#: Largest chunk payload, in bytes.
MAX_CHUNK = 1 << 28  # 256 MiB
