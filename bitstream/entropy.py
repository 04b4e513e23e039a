"""Entropy coding of integer symbol streams with constriction's range coder.

The coder is fixed by the format (coder id CODER_RANGE_V1 in the header), never by
defaults of the installed library: ``constriction.stream.queue.RangeEncoder`` with
32-bit words, one model per stream, models built as described in FORMAT.md:

* categorical: ``Categorical(counts / sum(counts), perfect=False)`` over the stored
  alphabet, counts written into the stream;
* uniform: ``Uniform(size)``;
* constant: a single-letter alphabet, no symbols coded;
* geometric (video streams): ``Categorical`` over the alphabet with a stored mass pi
  at the value nearest 0 and the rest shared in proportion to theta^|distance|
  (pi, theta: 16-bit fractions): no table to send, and it fits residuals that are
  mostly exactly zero with a wide spread around the others.

Coder 2 (CODER_RANGE_V2) sends no count tables. Its models have a few parameters each:

* peaked: a mass at a stored mode and two geometric tails with their own decay and a
  stored share of the rest on each side (unimodal streams: sizes, colours, residuals);
* binned: the alphabet cut into at most 4096 equal bins, one count per bin, uniform
  inside a bin (any shape, at a few bytes per bin); with one value per bin it is a
  categorical for small alphabets;
* uniform and constant, as in coder 1.

Streams are coded one after another into a single word sequence. Alphabet sizes are
limited per model to what constriction itself accepts (bitstream.limits), for the
reader and the encoder alike; the reader checks every descriptor field before it
allocates anything, and any error of the decoder becomes a StreamError.
"""
from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

from .container import StreamError, check_range
from .limits import (
    MAX_CATEGORICAL_ALPHABET,
    MAX_BINS,
    MAX_GEOMETRIC_ALPHABET,
    MAX_SYMBOL_COUNT,
    MAX_TABLE_FREE_ALPHABET,
    MAX_UNIFORM_ALPHABET,
)


class _LazyNumpy:
    """numpy, imported on first use: reading a stream's headers (`gsvc info`) never
    needs it. The first attribute access imports it and puts it in place of this."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()

CODER_RANGE_V1 = 1
#: coder 2: table-free models (peaked, binned); FORMAT.md section 4.2
CODER_RANGE_V2 = 2
#: coder 3: coder 2's models, positions coded as a point set (gaps, raw bits); FORMAT.md 4.3
CODER_RANGE_V3 = 3
#: coder 4: coder 3, and a video P-frame's streams may take their model from the same
#: stream of the previous frame (``MODEL_INHERITED``); FORMAT.md section 4.4
CODER_RANGE_V4 = 4
CODERS = (CODER_RANGE_V1, CODER_RANGE_V2, CODER_RANGE_V3, CODER_RANGE_V4)
#: coders with compact descriptors and raw fields (section 4.3)
COMPACT_CODERS = (CODER_RANGE_V3, CODER_RANGE_V4)

MODEL_CATEGORICAL = 0
MODEL_UNIFORM = 1
MODEL_CONSTANT = 2
MODEL_GEOMETRIC = 3
MODEL_PEAKED = 4
MODEL_BINNED = 5
#: coder 4: a peaked model fitted to the stream's history (``inherited_model``)
MODEL_INHERITED = 6
MODEL_NAMES = {MODEL_CATEGORICAL: "categorical", MODEL_UNIFORM: "uniform", MODEL_CONSTANT: "constant",
               MODEL_GEOMETRIC: "geometric", MODEL_PEAKED: "peaked", MODEL_BINNED: "binned",
               MODEL_INHERITED: "inherited"}
MODELS = tuple(MODEL_NAMES)
#: alphabet sizes S each model takes (bitstream.limits: constriction's own limits)
ALPHABET_RANGES = {
    MODEL_CATEGORICAL: (2, MAX_CATEGORICAL_ALPHABET),
    MODEL_UNIFORM: (2, MAX_UNIFORM_ALPHABET),
    MODEL_CONSTANT: (1, 1),
    MODEL_GEOMETRIC: (2, MAX_GEOMETRIC_ALPHABET),
    MODEL_PEAKED: (2, MAX_TABLE_FREE_ALPHABET),
    MODEL_BINNED: (2, MAX_TABLE_FREE_ALPHABET),
    MODEL_INHERITED: (2, MAX_TABLE_FREE_ALPHABET),
}
#: the models each coder's encoder may choose (a reader accepts any model in any coder;
#: the inherited one only where its stream has a history, section 4.4)
CODER_MODELS = {
    CODER_RANGE_V1: (MODEL_CONSTANT, MODEL_UNIFORM, MODEL_CATEGORICAL, MODEL_GEOMETRIC),
    CODER_RANGE_V2: (MODEL_CONSTANT, MODEL_UNIFORM, MODEL_PEAKED, MODEL_BINNED),
    CODER_RANGE_V3: (MODEL_CONSTANT, MODEL_UNIFORM, MODEL_PEAKED, MODEL_BINNED),
    CODER_RANGE_V4: (MODEL_CONSTANT, MODEL_UNIFORM, MODEL_PEAKED, MODEL_BINNED, MODEL_INHERITED),
}
#: raw fields (coder 3) are coded in pieces of at most this many bits, each with
#: ``Uniform(2^w)``; a field is at most RAW_MAX_WIDTH bits wide
RAW_PIECE = 16
RAW_MAX_WIDTH = 62
#: coded symbols (value - min_symbol) and the values themselves are int32
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
#: bytes of the longest count-table varint (MAX_SYMBOL_COUNT < 2**35)
_VARINT_MAX_BYTES = 5
#: theta = code / GEOMETRIC_ONE, code in [1, GEOMETRIC_ONE - 1]
GEOMETRIC_ONE = 1 << 16


@functools.cache
def _theta_codes() -> np.ndarray:
    """Candidate theta codes the encoder tries (log-spaced tail masses), fixed for determinism."""
    return np.unique(
        np.clip(np.rint(GEOMETRIC_ONE * (1.0 - 2.0 ** -np.linspace(0.05, 14.0, 96))), 1, GEOMETRIC_ONE - 1)
    ).astype(np.int64)


def _uvarint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each value as an unsigned LEB128 varint (values in [0, 2**35))."""
    values = np.asarray(values, dtype=np.int64)
    return 1 + sum((values >> (7 * k) > 0).astype(np.int64) for k in range(1, _VARINT_MAX_BYTES))


def _write_uvarints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 varints of ``values`` (each in [0, 2**35)), back to back."""
    values = np.asarray(values, dtype=np.int64)
    sizes = _uvarint_sizes(values)
    starts = np.cumsum(sizes) - sizes
    place = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)  # byte index inside its varint
    groups = (np.repeat(values, sizes) >> (7 * place)) & 0x7F
    more = place < np.repeat(sizes, sizes) - 1  # continuation bit on all but the last byte
    return (groups | (more << 7)).astype(np.uint8).tobytes()


def write_svarints(values) -> bytes:
    """Signed integers (each in [-2**31, 2**31)) as zigzag LEB128 varints, back to back."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < INT32_MIN or values.max() > INT32_MAX):
        raise ValueError("a signed varint must fit in int32")
    return _write_uvarints((values << 1) ^ (values >> 63))


def write_uvarints(values) -> bytes:
    """Unsigned integers (each in [0, 2**35)) as LEB128 varints, back to back."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= 1 << 35):
        raise ValueError("an unsigned varint must lie in [0, 2**35)")
    return _write_uvarints(values)


def read_uvarints(payload: bytes, pos: int, n: int, what: str) -> tuple[np.ndarray, int]:
    """``n`` LEB128 varints (``write_uvarints``) from ``payload[pos:]``: int64 values,
    end position; a short or overlong field is a StreamError naming ``what``."""
    try:
        return _read_uvarints(payload, pos, n)
    except StreamError:
        raise StreamError(f"corrupt stream: {what} runs past the end of its chunk or is too long") from None


def read_svarints(payload: bytes, pos: int, n: int, what: str) -> tuple[np.ndarray, int]:
    """``n`` zigzag LEB128 varints (``write_svarints``) from ``payload[pos:]``: int64
    values, end position; a short or overlong field is a StreamError naming ``what``."""
    raw, end = read_uvarints(payload, pos, n, what)
    return (raw >> 1) ^ -(raw & 1), end


def _read_uvarints(payload: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    """``n`` unsigned LEB128 varints from ``payload[pos:]``: int64 values, end position.

    Vectorized (a table may hold 2**24 entries); a table cannot be longer than the
    bytes left (each entry takes at least one), which is checked before anything is read.
    """
    left = len(payload) - pos
    if n > left:
        raise StreamError(f"corrupt stream: a count table of {n} entries is longer than the "
                          f"{left} bytes left in its chunk")
    raw = np.frombuffer(payload, dtype=np.uint8, count=min(left, _VARINT_MAX_BYTES * n), offset=pos)
    ends = np.flatnonzero(raw < 0x80)[:n]  # last byte of each varint
    if ends.size < n:
        raise StreamError("corrupt stream: a count table runs past the end of its chunk")
    starts = np.concatenate(([0], ends[:-1] + 1))
    sizes = ends - starts + 1
    if sizes.max() > _VARINT_MAX_BYTES:
        raise StreamError(f"corrupt stream: a count table entry is longer than {_VARINT_MAX_BYTES} bytes")
    end = int(ends[-1]) + 1
    place = np.arange(end) - np.repeat(starts, sizes)
    values = np.add.reduceat((raw[:end].astype(np.int64) & 0x7F) << (7 * place), starts)
    return values, pos + end


def _geometric_distances(values: np.ndarray, min_symbol: int, size: int) -> np.ndarray:
    """|v - c| with c the alphabet's value nearest to 0 (the mode of the model)."""
    centre = min(max(0, min_symbol), min_symbol + size - 1)
    return np.abs(values - centre)


def geometric_probabilities(min_symbol: int, size: int, theta_code: int, centre_code: int) -> np.ndarray:
    """The geometric model's probabilities over [min_symbol, min_symbol + size), float64.

    c is the alphabet's value nearest to 0; p(c) = pi = centre_code / 2^16, and the
    other values share 1 - pi in proportion to theta^|v - c|, theta = theta_code / 2^16.
    Powers are built by repeated multiplication (np.multiply.accumulate runs in order),
    so every platform computes the same numbers (FORMAT.md, section 4).
    """
    values = np.arange(min_symbol, min_symbol + size, dtype=np.int64)
    mags = _geometric_distances(values, min_symbol, size)
    powers = np.concatenate([[1.0], _tail(theta_code, int(mags.max()))])  # theta^0..theta^top
    tail = powers[mags]
    tail[mags == 0] = 0.0
    probs = tail * ((1.0 - centre_code / GEOMETRIC_ONE) / tail.sum())
    probs[mags == 0] = centre_code / GEOMETRIC_ONE
    return probs


def _tail(theta_code: int, n: int) -> np.ndarray:
    """theta^1 .. theta^n (float64) by repeated multiplication, theta = code / 2^16."""
    t = theta_code / GEOMETRIC_ONE
    return np.multiply.accumulate(np.full(n, t))


def peaked_probabilities(min_symbol: int, size: int, mode: int, centre_code: int, left_code: int,
                         left_theta: int, right_theta: int) -> np.ndarray:
    """The peaked model's probabilities over [min_symbol, min_symbol + size), float64.

    p(mode) = pi = centre_code / 2^16. The nl values below the mode share (1 - pi) * lam
    and the nr values above it (1 - pi) * (1 - lam), lam = left_code / 2^16 when both
    sides exist (1 with only a left side, 0 with only a right side), each side in
    proportion to theta_side^distance (FORMAT.md, section 4.2).
    """
    pi = centre_code / GEOMETRIC_ONE
    nl = mode - min_symbol
    nr = min_symbol + size - 1 - mode
    lam = left_code / GEOMETRIC_ONE if nl and nr else (1.0 if nl else 0.0)
    probs = np.empty(size, dtype=np.float64)
    probs[nl] = pi
    if nl:
        tail = _tail(left_theta, nl)
        probs[:nl] = (tail * ((1.0 - pi) * lam / tail.sum()))[::-1]
    if nr:
        tail = _tail(right_theta, nr)
        probs[nl + 1 :] = tail * ((1.0 - pi) * (1.0 - lam) / tail.sum())
    return probs


def binned_probabilities(size: int, width: int, counts: np.ndarray) -> np.ndarray:
    """The binned model's probabilities: bin i holds values [i*width, (i+1)*width) of the
    alphabet (the last bin what is left) and mass counts[i] / sum(counts), uniform inside."""
    nbins = counts.size
    widths = np.full(nbins, float(width))
    widths[-1] = float(size - width * (nbins - 1))
    per_value = counts.astype(np.float64) / float(counts.sum()) / widths
    return np.repeat(per_value, width)[:size]


@dataclass(frozen=True)
class _Model:
    kind: int
    min_symbol: int
    size: int
    counts: np.ndarray | None  # [size] for categorical, [bins] for binned
    theta_code: int = 0  # geometric only
    centre_code: int = 0  # geometric, peaked
    mode: int = 0  # peaked only
    left_code: int = 0  # peaked only
    left_theta: int = 0  # peaked only
    right_theta: int = 0  # peaked only
    width: int = 0  # binned only

    def probabilities(self) -> np.ndarray:
        """Probabilities of the alphabet, float64 (categorical, geometric, peaked, binned)."""
        if self.kind == MODEL_CATEGORICAL:
            probs = self.counts.astype(np.float64)
            return probs / probs.sum()
        if self.kind == MODEL_GEOMETRIC:
            return geometric_probabilities(self.min_symbol, self.size, self.theta_code, self.centre_code)
        if self.kind in (MODEL_PEAKED, MODEL_INHERITED):
            return peaked_probabilities(self.min_symbol, self.size, self.mode, self.centre_code,
                                        self.left_code, self.left_theta, self.right_theta)
        assert self.kind == MODEL_BINNED, self.kind
        return binned_probabilities(self.size, self.width, self.counts)

    def constriction(self):
        import constriction  # local: keeps `import bitstream` light

        model = constriction.stream.model
        if self.kind == MODEL_UNIFORM:
            return model.Uniform(self.size)
        return model.Categorical(self.probabilities(), perfect=False)

    def descriptor(self, compact: bool = False) -> bytes:
        """The model descriptor (FORMAT.md, section 4); ``compact``: coder 3's, whose
        integers are varints (section 4.3)."""
        if compact:
            out = bytes([self.kind]) + write_svarints([self.min_symbol]) + _write_uvarints([self.size])
        else:
            out = struct.pack(">BiI", self.kind, self.min_symbol, self.size)
        if self.kind == MODEL_CATEGORICAL:
            out += _write_uvarints(self.counts)
        elif self.kind == MODEL_GEOMETRIC:
            out += struct.pack(">HH", self.theta_code, self.centre_code)
        elif self.kind == MODEL_PEAKED:
            codes = struct.pack(">HHHH", self.centre_code, self.left_code, self.left_theta, self.right_theta)
            mode = _write_uvarints([self.mode - self.min_symbol]) if compact else struct.pack(">i", self.mode)
            out += mode + codes
        elif self.kind == MODEL_BINNED:
            out += (_write_uvarints([self.width]) if compact else struct.pack(">I", self.width))
            out += _write_uvarints(self.counts)
        return out

    def decode(self, decoder, n: int) -> np.ndarray:
        """``n`` values (int64) from a constriction RangeDecoder."""
        if self.kind == MODEL_CONSTANT:
            return np.full(n, self.min_symbol, dtype=np.int64)
        return decoder.decode(self.constriction(), n).astype(np.int64) + self.min_symbol


def _best_geometric(symbols: np.ndarray, lo: int, size: int) -> tuple[float, int, int]:
    """(estimated bits, theta code, centre code) of the cheapest geometric model."""
    hist = np.bincount(_geometric_distances(symbols, lo, size))  # occurrences of each |v - c|
    n, n0 = symbols.size, int(hist[0])
    centre_code = int(min(max(round(GEOMETRIC_ONE * n0 / n), 1), GEOMETRIC_ONE - 1))
    pi = centre_code / GEOMETRIC_ONE
    centre_bits = -n0 * np.log2(pi) - (n - n0) * np.log2(1.0 - pi)
    present = np.nonzero(hist)[0]
    present = present[present > 0]
    all_mags = _geometric_distances(np.arange(lo, lo + size, dtype=np.int64), lo, size)
    all_mags = all_mags[all_mags > 0]
    best = (np.inf, int(_theta_codes()[0]))
    for code in _theta_codes():
        log_t = np.log2(code / GEOMETRIC_ONE)
        log_z = np.log2(np.sum(np.exp2(all_mags * log_t)))  # normalizer of the tail
        bits = float(np.sum(hist[present] * (log_z - present * log_t)))
        if bits < best[0]:
            best = (bits, int(code))
    return centre_bits + best[0], best[1], centre_code


def _alphabet(symbols: np.ndarray) -> tuple[int, int]:
    """(smallest value, alphabet size) of a stream any coder can take (ValueError if none)."""
    lo, hi = int(symbols.min()), int(symbols.max())
    size = hi - lo + 1
    if lo < INT32_MIN or hi > INT32_MAX:
        raise ValueError(f"values in [{lo}, {hi}] leave the 32-bit range")
    if size > MAX_UNIFORM_ALPHABET:
        raise ValueError(f"alphabet of {size} symbols is too large to code (limit {MAX_UNIFORM_ALPHABET})")
    return lo, size


def _choose_model(symbols: np.ndarray, geometric: bool = False) -> _Model:
    """The cheapest model the reader accepts for ``symbols`` (ValueError if none can code them)."""
    lo, size = _alphabet(symbols)
    if size == 1:
        return _Model(MODEL_CONSTANT, lo, 1, None)
    counts = np.bincount(symbols - lo, minlength=size)
    n = symbols.size
    nz = counts[counts > 0]
    entropy_bits = float(-(nz * np.log2(nz / n)).sum())
    table_bits = 8.0 * float(_uvarint_sizes(counts).sum())
    uniform_bits = n * np.log2(size)
    if geometric and size <= MAX_GEOMETRIC_ALPHABET:
        geo_bits, theta, centre = _best_geometric(symbols, lo, size)
        if geo_bits + 32 < min(entropy_bits + table_bits, uniform_bits):
            return _Model(MODEL_GEOMETRIC, lo, size, None, theta, centre)
    categorical_fits = size <= MAX_CATEGORICAL_ALPHABET and n <= MAX_SYMBOL_COUNT
    if categorical_fits and entropy_bits + table_bits < uniform_bits:
        return _Model(MODEL_CATEGORICAL, lo, size, counts)
    return _Model(MODEL_UNIFORM, lo, size, None)


def _code16(fraction: float) -> int:
    """A probability as a 16-bit code in [1, 65535]."""
    return int(min(max(round(GEOMETRIC_ONE * fraction), 1), GEOMETRIC_ONE - 1))


def _best_tail(hist: np.ndarray) -> int:
    """The theta code whose geometric tail over distances 1..len(hist)-1 codes ``hist``
    (occurrences of each distance; hist[0] unused) in the fewest bits."""
    n = hist.size - 1
    d = np.nonzero(hist[1:])[0] + 1
    if d.size == 0:
        return GEOMETRIC_ONE // 2
    codes = _theta_codes()
    t = codes / GEOMETRIC_ONE  # [C]
    log_z = np.log2(t * -np.expm1(n * np.log(t)) / (1.0 - t))  # log2 sum_{j=1..n} t^j
    bits = hist[d].sum() * log_z - np.log2(t) * float((hist[d] * d).sum())
    return int(codes[int(np.argmin(bits))])


def _model_bits(model: _Model, values: np.ndarray, counts: np.ndarray, compact: bool = False) -> float:
    """Bits of ``counts`` occurrences of ``values`` (offsets from min_symbol) under ``model``
    plus its descriptor (``compact``: coder 3's)."""
    with np.errstate(divide="ignore"):
        code = -float((counts * np.log2(model.probabilities()[values])).sum())
    return code + 8.0 * len(model.descriptor(compact))


def _peaked_model(counts: np.ndarray, lo: int, size: int) -> _Model:
    """The peaked model of a histogram ``counts`` over [lo, lo + size)."""
    n = int(counts.sum())
    mode_at = int(np.argmax(counts))
    below, above = int(counts[:mode_at].sum()), int(counts[mode_at + 1 :].sum())
    left = _code16(below / (below + above)) if below and above else GEOMETRIC_ONE // 2
    return _Model(MODEL_PEAKED, lo, size, None, centre_code=_code16(counts[mode_at] / n), mode=lo + mode_at,
                  left_code=left, left_theta=_best_tail(np.concatenate([[0], counts[:mode_at][::-1]])),
                  right_theta=_best_tail(np.concatenate([[0], counts[mode_at + 1 :]])))


def _ratio16(num: int, den: int) -> int:
    """num / den as a 16-bit code in [1, 65535], rounded half up, in integers."""
    return min(max((2 * GEOMETRIC_ONE * num + den) // (2 * den), 1), GEOMETRIC_ONE - 1)


def _most_frequent(history: np.ndarray) -> tuple[int, int]:  # [n >= 1] -> (value, count)
    """The most frequent value of ``history`` (the smallest of ties) and its count."""
    lo, hi = int(history.min()), int(history.max())
    if hi - lo < (1 << 20):
        counts = np.bincount(history - lo)
        at = int(np.argmax(counts))
        return lo + at, int(counts[at])
    values, counts = np.unique(history, return_counts=True)
    at = int(np.argmax(counts))
    return int(values[at]), int(counts[at])


def inherited_model(history: np.ndarray, lo: int, size: int) -> _Model | None:
    """Coder 4's inherited model (FORMAT.md section 4.4): a peaked model over [lo, lo +
    size) whose mode and codes are fitted, in integers, to ``history`` (the same stream
    of the previous frame: int64 values, at least one); None when the mode lies outside
    the alphabet. Nothing of it is written but its alphabet: a P-frame's streams look
    like the last frame's, and ~10 bytes of descriptor a stream were ~10 % of a P-frame."""
    history = np.asarray(history, dtype=np.int64).ravel()
    mode, n0 = _most_frequent(history)
    if not lo <= mode <= lo + size - 1:
        return None
    below, above = history[history < mode], history[history > mode]
    nb, na = int(below.size), int(above.size)
    sb = int((mode - 1 - below).sum())  # distances beyond the first step, each side
    sa = int((above - mode - 1).sum())
    return _Model(MODEL_INHERITED, lo, size, None, centre_code=_ratio16(n0 + 1, history.size + 2), mode=mode,
                  left_code=_ratio16(nb + 1, nb + na + 2), left_theta=_ratio16(sb + 1, sb + nb + 2),
                  right_theta=_ratio16(sa + 1, sa + na + 2))


def _table_free_candidates(symbols: np.ndarray, lo: int, size: int) -> list[_Model]:
    """Peaked and binned models fitted to ``symbols`` (alphabet [lo, lo + size))."""
    counts = np.bincount(symbols - lo, minlength=size)
    models = [_peaked_model(counts, lo, size)]
    for nbins in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        width = -(-size // nbins)
        if nbins > size:
            width = 1
        nb = -(-size // width)
        if nb > MAX_BINS:
            continue
        bins = np.add.reduceat(counts, np.arange(0, size, width))
        models.append(_Model(MODEL_BINNED, lo, size, bins, width=width))
        if width == 1:
            break
    return models


def _fitted_peaked(symbols: np.ndarray) -> tuple[int, _Model | None]:
    """(lo, model): coder 2's peaked model fitted to ``symbols`` as the coder fits it
    (None for a single value)."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lo, size = _alphabet(symbols)
    if size == 1:
        return lo, None
    return lo, _peaked_model(np.bincount(symbols - lo, minlength=size), lo, size)


def peaked_code_lengths(symbols: np.ndarray) -> tuple[int, np.ndarray]:
    """(lo, bits): coder 2's peaked model fitted to ``symbols`` (as the coder fits it)
    and the code length in bits of each value of its alphabet [lo, lo + bits.size).
    A training loss takes the rate of parameters from it (the same model family codes
    the stream); one value costs 0 bits."""
    lo, model = _fitted_peaked(symbols)
    if model is None:
        return lo, np.zeros(1)
    with np.errstate(divide="ignore"):
        bits = -np.log2(model.probabilities())
    return lo, np.minimum(bits, 32.0)


def peaked_tail_slopes(symbols: np.ndarray) -> tuple[int, float, float]:
    """(mode, left, right): coder 2's peaked model fitted to ``symbols`` and the bits one
    more step away from the mode costs in its tail on each side (-log2 theta): the
    slopes of its code length away from the mode."""
    lo, model = _fitted_peaked(symbols)
    if model is None:
        return lo, 0.0, 0.0
    return (model.mode, -float(np.log2(model.left_theta / GEOMETRIC_ONE)),
            -float(np.log2(model.right_theta / GEOMETRIC_ONE)))


def _choose_model_v2(symbols: np.ndarray, compact: bool = False, history: np.ndarray | None = None) -> _Model:
    """Coders 2 to 4: the cheapest of uniform, peaked and binned (constant for one
    value), descriptors counted as written (``compact``: coder 3's); with a ``history``
    (coder 4) the inherited model too."""
    lo, size = _alphabet(symbols)
    if size == 1:
        return _Model(MODEL_CONSTANT, lo, 1, None)
    best = _Model(MODEL_UNIFORM, lo, size, None)
    if size > MAX_TABLE_FREE_ALPHABET or symbols.size > MAX_SYMBOL_COUNT:
        return best
    best_bits = symbols.size * np.log2(size) + 8.0 * len(best.descriptor(compact))
    values, counts = np.unique(symbols - lo, return_counts=True)
    candidates = _table_free_candidates(symbols, lo, size)
    if history is not None and history.size:
        candidates.append(inherited_model(history, lo, size))
    for model in candidates:
        if model is None:
            continue
        bits = _model_bits(model, values, counts, compact)
        if bits < best_bits:
            best, best_bits = model, bits
    return best


def _piece_rounds(widths: np.ndarray):
    """The rounds raw fields are coded in: round k codes piece k (bits 16 k .. 16 k + 15,
    fewer in a last piece) of every field wider than 16 k bits. Yields (shift 16 k,
    the fields' mask [N] bool, the pieces' widths [M])."""
    k = 0
    while True:
        sel = widths > RAW_PIECE * k
        if not sel.any():
            return
        yield RAW_PIECE * k, sel, np.minimum(widths[sel] - RAW_PIECE * k, RAW_PIECE)
        k += 1


def _raw_pieces(values: np.ndarray, widths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw fields as coded, round by round (``_piece_rounds``): [(bits, widths)]."""
    return [((values[sel] >> shift) & ((1 << w) - 1), w) for shift, sel, w in _piece_rounds(widths)]


def encode_streams(streams: list[np.ndarray], geometric: bool = False, coder: int = CODER_RANGE_V1,
                   raw: tuple[np.ndarray, np.ndarray] | None = None,
                   history: list[np.ndarray | None] | None = None) -> bytes:
    """Code integer arrays into one payload: model descriptors, then coded words.

    Lengths are not stored: the reader passes them to ``decode_streams``.
    ``coder`` picks the models the encoder may choose (CODER_MODELS). With coder 1,
    ``geometric`` lets it pick the geometric model (video streams only: coder-1 image
    streams never use it, so their bytes stay as they were). ``raw`` (coder 3): fields
    (values, widths) coded after the streams as plain bits, 0 <= value < 2^width,
    0 <= width <= 62; their widths are not stored (the reader derives them).
    ``history`` (coder 4): per stream, the values its inherited model is fitted to
    (section 4.4), or None; the reader passes the same to ``decode_streams``.
    """
    if coder not in CODERS:
        raise ValueError(f"unknown coder {coder}")
    if raw is not None and coder not in COMPACT_CODERS:
        raise ValueError(f"coder {coder} has no raw fields")
    if history is not None and (coder != CODER_RANGE_V4 or len(history) != len(streams)):
        raise ValueError("a history is coder 4's, one entry a stream")
    import constriction

    RangeEncoder = constriction.stream.queue.RangeEncoder

    head = io.BytesIO()
    encoder = RangeEncoder()
    compact = coder in COMPACT_CODERS
    for i, symbols in enumerate(streams):
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        if symbols.size == 0:  # nothing to code, no descriptor (the reader knows the length)
            continue
        if coder == CODER_RANGE_V1:
            m = _choose_model(symbols, geometric)
        else:
            m = _choose_model_v2(symbols, compact, history[i] if history is not None else None)
        head.write(m.descriptor(compact))
        if m.kind != MODEL_CONSTANT:
            encoder.encode((symbols - m.min_symbol).astype(np.int32), m.constriction())
    if raw is not None:
        values, widths = (np.asarray(v, dtype=np.int64).ravel() for v in raw)
        if values.shape != widths.shape:
            raise ValueError("raw fields need one width each")
        if widths.size and (widths.min() < 0 or widths.max() > RAW_MAX_WIDTH):
            raise ValueError(f"raw field widths lie in [0, {RAW_MAX_WIDTH}]")
        if values.size and (values.min() < 0 or np.any(values >> widths)):
            raise ValueError("a raw field does not fit its width")
        uniform = constriction.stream.model.Uniform()
        for bits, w in _raw_pieces(values, widths):
            encoder.encode(bits.astype(np.int32), uniform, (1 << w).astype(np.int32))
    words = encoder.get_compressed().astype(">u4")
    return head.getvalue() + struct.pack(">I", words.size) + words.tobytes()


def decode_streams(payload: bytes, lengths: list[int], raw_widths=None,
                   coder: int = CODER_RANGE_V1, history: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
    """Inverse of ``encode_streams``; returns int64 arrays of the given lengths.

    ``raw_widths`` (coder 3 payloads with raw fields): called with the decoded streams,
    returns the raw fields' widths (int64, each in [0, 62]: it raises StreamError on
    streams that imply others); the raw values are then appended to the result.
    ``coder``: the stream's (coders 3 and 4 write compact descriptors; 1 and 2 read
    alike). ``history``: as given to ``encode_streams`` (an inherited model where a
    stream has none is a corrupt stream).
    Every descriptor field is range-checked before anything is allocated for it, and
    any error of the entropy decoder becomes a StreamError.
    """
    pos = 0
    models = []
    for i, n in enumerate(lengths):
        if n == 0:  # no descriptor, nothing coded
            models.append(_Model(MODEL_CONSTANT, 0, 1, None))
            continue
        model, pos = _read_model(payload, pos, coder in COMPACT_CODERS, history[i] if history else None)
        models.append(model)
    words = _read_words(payload, pos)
    return _entropy_decode(models, lengths, words, raw_widths)


def _unpack(fmt: str, payload: bytes, pos: int, what: str) -> tuple[tuple, int]:
    """Fields of struct format ``fmt`` at ``pos`` and the position after them."""
    size = struct.calcsize(fmt)
    if pos + size > len(payload):
        raise StreamError(f"corrupt stream: {what} runs past the end of its chunk")
    return struct.unpack_from(fmt, payload, pos), pos + size


def _read_compact_head(payload: bytes, pos: int) -> tuple[tuple[int, int, int], int]:
    """kind, min_symbol and size of a compact descriptor (coder 3), range-checked as
    the fixed fields they replace."""
    (kind,), pos = _unpack(">B", payload, pos, "a model descriptor")
    (lo,), pos = read_svarints(payload, pos, 1, "a model descriptor")
    (size,), pos = read_uvarints(payload, pos, 1, "a model descriptor")
    check_range("smallest symbol of a model", int(lo), INT32_MIN, INT32_MAX)
    check_range("alphabet size of a model", int(size), 1, (1 << 32) - 1)
    return (kind, int(lo), int(size)), pos


def _read_model(payload: bytes, pos: int, compact: bool = False,
                history: np.ndarray | None = None) -> tuple[_Model, int]:
    """One model descriptor at ``pos`` (FORMAT.md, section 4; ``compact``: coder 3's,
    section 4.3), checked field by field; ``history``: the values an inherited model
    is fitted to (section 4.4)."""
    if compact:
        (kind, lo, size), pos = _read_compact_head(payload, pos)
    else:
        (kind, lo, size), pos = _unpack(">BiI", payload, pos, "a model descriptor")
    if kind not in MODELS:
        raise StreamError(f"corrupt stream: unknown entropy model {kind}")
    smallest, largest = ALPHABET_RANGES[kind]
    check_range(f"alphabet size of a {MODEL_NAMES[kind]} model", size, smallest, largest)
    check_range("largest symbol of a model", lo + size - 1, INT32_MIN, INT32_MAX)
    if kind == MODEL_INHERITED:
        if history is None or not history.size:
            raise StreamError("corrupt stream: an inherited model where the stream has no history")
        model = inherited_model(history, lo, size)
        if model is None:
            raise StreamError("corrupt stream: an inherited model's mode lies outside its alphabet")
        return model, pos
    if kind == MODEL_CATEGORICAL:
        counts, pos = _read_uvarints(payload, pos, size)
        check_range("largest entry of a count table", int(counts.max()), 0, MAX_SYMBOL_COUNT)
        if not counts.any():
            raise StreamError("corrupt stream: empty symbol table")
        return _Model(kind, lo, size, counts), pos
    if kind == MODEL_GEOMETRIC:
        (theta_code, centre_code), pos = _unpack(">HH", payload, pos, "a model descriptor")
        check_range("theta code of a geometric model", theta_code, 1, GEOMETRIC_ONE - 1)
        check_range("centre code of a geometric model", centre_code, 1, GEOMETRIC_ONE - 1)
        return _Model(kind, lo, size, None, theta_code, centre_code), pos
    if kind == MODEL_PEAKED:
        if compact:
            (offset,), pos = read_uvarints(payload, pos, 1, "a model descriptor")
            check_range("mode of a peaked model", int(offset), 0, size - 1)
            (centre, left, left_theta, right_theta), pos = _unpack(">HHHH", payload, pos, "a model descriptor")
            mode = lo + int(offset)
        else:
            (mode, centre, left, left_theta, right_theta), pos = _unpack(">iHHHH", payload, pos, "a model descriptor")
        check_range("mode of a peaked model", mode, lo, lo + size - 1)
        for what, code in (("centre", centre), ("left share", left), ("left theta", left_theta),
                           ("right theta", right_theta)):
            check_range(f"{what} code of a peaked model", code, 1, GEOMETRIC_ONE - 1)
        return _Model(kind, lo, size, None, centre_code=centre, mode=mode, left_code=left,
                      left_theta=left_theta, right_theta=right_theta), pos
    if kind == MODEL_BINNED:
        if compact:
            (width,), pos = read_uvarints(payload, pos, 1, "a model descriptor")
            width = int(width)
        else:
            (width,), pos = _unpack(">I", payload, pos, "a model descriptor")
        check_range("bin width of a binned model", width, -(-size // MAX_BINS), size)
        bins, pos = _read_uvarints(payload, pos, -(-size // width))
        check_range("largest bin count of a binned model", int(bins.max()), 0, MAX_SYMBOL_COUNT)
        if not bins.any():
            raise StreamError("corrupt stream: empty bin table")
        return _Model(kind, lo, size, bins, width=width), pos
    return _Model(kind, lo, size, None), pos


def _read_words(payload: bytes, pos: int) -> np.ndarray:
    """The coded words after the descriptors: their count must fill the chunk exactly."""
    (nwords,), pos = _unpack(">I", payload, pos, "the coded word count")
    left = len(payload) - pos
    if 4 * nwords != left:
        raise StreamError(f"corrupt stream: {nwords} coded words do not fill the {left} bytes left in their chunk")
    return np.frombuffer(payload, dtype=">u4", offset=pos).astype(np.uint32)


def _decode_raw(decoder, widths: np.ndarray) -> np.ndarray:
    """Raw fields of ``widths`` (the inverse of ``_raw_pieces``)."""
    import constriction

    uniform = constriction.stream.model.Uniform()
    values = np.zeros(widths.size, dtype=np.int64)
    for shift, sel, w in _piece_rounds(widths):
        values[sel] |= decoder.decode(uniform, (1 << w).astype(np.int32)).astype(np.int64) << shift
    return values


def _entropy_decode(models: list[_Model], lengths: list[int], words: np.ndarray,
                    raw_widths=None) -> list[np.ndarray]:
    """Decode every stream (then the raw fields); whatever constriction raises becomes a
    StreamError."""
    import constriction

    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        streams = [m.decode(decoder, n) for m, n in zip(models, lengths)]
        if raw_widths is None:
            return streams
        widths = np.asarray(raw_widths(streams), dtype=np.int64)
        if widths.size and (widths.min() < 0 or widths.max() > RAW_MAX_WIDTH):
            raise StreamError(f"corrupt stream: a raw field is wider than {RAW_MAX_WIDTH} bits")
        return streams + [_decode_raw(decoder, widths)]
    except StreamError:
        raise
    except MemoryError:  # not the stream's fault: let it through
        raise
    except Exception as e:  # constriction: AssertionError (invalid data), ValueError (model)
        raise StreamError(f"corrupt stream: entropy decoding failed ({e})") from None
    except BaseException as e:  # a Rust panic: pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        raise StreamError(f"corrupt stream: entropy decoding failed ({e})") from None
