"""Range limits of a .gsv stream (FORMAT.md, section "Limits").

A reader checks every header and chunk field against these before it allocates
anything, so a stream that lies about its sizes fails fast, in bounded memory and
time. An encoder never writes a stream outside them: the same checks run when a
header or chunk is packed.
"""
from __future__ import annotations

#: Largest picture side, in pixels.
MAX_SIDE = 1 << 15  # 32768
#: Largest picture, in pixels (width x height): the encoded size, and any decoded size.
MAX_PIXELS = 1 << 26  # 67,108,864 (67 MP)
#: Most layers (the header's u8 layer count).
MAX_LAYERS = 255
#: Largest number of Gaussians in one picture (all its layers together; a video frame).
MAX_GAUSSIANS = 1 << 22  # 4,194,304
#: Largest number of frames in a video stream; also the longest GOP.
MAX_FRAMES = 1 << 24
#: Frame rates (fps_num / fps_den) lie in [1 / MAX_FPS, MAX_FPS].
MAX_FPS = 1 << 16
#: Largest chunk payload, in bytes.
MAX_CHUNK = 1 << 28  # 256 MiB

#: Quantizer steps are finite float32 in [MIN_STEP, MAX_STEP] (both exact in float32).
MIN_STEP = 2.0**-24
MAX_STEP = 2.0**15

# Alphabet sizes S of the entropy models: constriction 0.5.0's own limits with its
# default 24-bit probabilities (FORMAT.md, section 4).
#: Categorical(perfect=False) takes 2 <= S < 2**24 - 1.
MAX_CATEGORICAL_ALPHABET = (1 << 24) - 2
#: Uniform(S) takes 2 <= S <= 2**24 (larger sizes abort in a Rust assertion).
MAX_UNIFORM_ALPHABET = 1 << 24
#: The geometric model builds its table on every use: kept small.
MAX_GEOMETRIC_ALPHABET = 1 << 12
#: Largest entry of a categorical count table (an unsigned LEB128 varint of <= 5 bytes).
MAX_SYMBOL_COUNT = (1 << 32) - 1
#: Coder 2's peaked and binned models build a table of S probabilities from a descriptor
#: of a few bytes: S is bounded so a short chunk cannot demand a large allocation.
MAX_TABLE_FREE_ALPHABET = 1 << 16
#: Most bins of a binned model.
MAX_BINS = 1 << 12
