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

Streams are coded one after another into a single word sequence.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from .container import StreamError

CODER_RANGE_V1 = 1

MODEL_CATEGORICAL = 0
MODEL_UNIFORM = 1
MODEL_CONSTANT = 2
MODEL_GEOMETRIC = 3
MODELS = (MODEL_CATEGORICAL, MODEL_UNIFORM, MODEL_CONSTANT, MODEL_GEOMETRIC)

#: constriction's Uniform and Categorical models take alphabets below 2**24.
MAX_ALPHABET = (1 << 24) - 1
#: The geometric model's alphabet is kept small: its table is built on every use.
MAX_GEOMETRIC_ALPHABET = 1 << 12
#: theta = code / GEOMETRIC_ONE, code in [1, GEOMETRIC_ONE - 1]
GEOMETRIC_ONE = 1 << 16
#: candidate theta codes the encoder tries (log-spaced tail masses), fixed for determinism
_THETA_CODES = np.unique(
    np.clip(np.rint(GEOMETRIC_ONE * (1.0 - 2.0 ** -np.linspace(0.05, 14.0, 96))), 1, GEOMETRIC_ONE - 1)
).astype(np.int64)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(src: io.BytesIO) -> int:
    shift = 0
    value = 0
    while True:
        b = src.read(1)
        if not b:
            raise StreamError("corrupt stream: varint runs past the end of its chunk")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 35:
            raise StreamError("corrupt stream: varint too long")


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
    theta = theta_code / GEOMETRIC_ONE
    values = np.arange(min_symbol, min_symbol + size, dtype=np.int64)
    mags = _geometric_distances(values, min_symbol, size)
    top = int(mags.max())
    powers = np.multiply.accumulate(np.concatenate([[1.0], np.full(top, theta)]))  # theta^0..theta^top
    tail = powers[mags]
    tail[mags == 0] = 0.0
    probs = tail * ((1.0 - centre_code / GEOMETRIC_ONE) / tail.sum())
    probs[mags == 0] = centre_code / GEOMETRIC_ONE
    return probs


@dataclass(frozen=True)
class _Model:
    kind: int
    min_symbol: int
    size: int
    counts: np.ndarray | None  # [size] for categorical
    theta_code: int = 0  # geometric only
    centre_code: int = 0  # geometric only

    def constriction(self):
        import constriction  # local: keeps `import bitstream` light

        model = constriction.stream.model

        if self.kind == MODEL_CATEGORICAL:
            probs = self.counts.astype(np.float64)
            return model.Categorical(probs / probs.sum(), perfect=False)
        if self.kind == MODEL_GEOMETRIC:
            probs = geometric_probabilities(self.min_symbol, self.size, self.theta_code, self.centre_code)
            return model.Categorical(probs, perfect=False)
        return model.Uniform(self.size)


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
    best = (np.inf, int(_THETA_CODES[0]))
    for code in _THETA_CODES:
        log_t = np.log2(code / GEOMETRIC_ONE)
        log_z = np.log2(np.sum(np.exp2(all_mags * log_t)))  # normalizer of the tail
        bits = float(np.sum(hist[present] * (log_z - present * log_t)))
        if bits < best[0]:
            best = (bits, int(code))
    return centre_bits + best[0], best[1], centre_code


def _choose_model(symbols: np.ndarray, geometric: bool = False) -> _Model:
    lo, hi = int(symbols.min()), int(symbols.max())
    size = hi - lo + 1
    if size > MAX_ALPHABET:
        raise ValueError(f"alphabet of {size} symbols is too large to code")
    if size == 1:
        return _Model(MODEL_CONSTANT, lo, 1, None)
    counts = np.bincount(symbols - lo, minlength=size)
    n = symbols.size
    nz = counts[counts > 0]
    entropy_bits = float(-(nz * np.log2(nz / n)).sum())
    table_bits = 8.0 * sum(len(_uvarint(int(c))) for c in counts)
    uniform_bits = n * np.log2(size)
    if geometric and size <= MAX_GEOMETRIC_ALPHABET:
        geo_bits, theta, centre = _best_geometric(symbols, lo, size)
        if geo_bits + 32 < min(entropy_bits + table_bits, uniform_bits):
            return _Model(MODEL_GEOMETRIC, lo, size, None, theta, centre)
    if entropy_bits + table_bits < uniform_bits:
        return _Model(MODEL_CATEGORICAL, lo, size, counts)
    return _Model(MODEL_UNIFORM, lo, size, None)


def encode_streams(streams: list[np.ndarray], geometric: bool = False) -> bytes:
    """Code integer arrays into one payload: model descriptors, then coded words.

    Lengths are not stored: the reader passes them to ``decode_streams``.
    ``geometric`` lets the encoder pick the geometric model (video streams only:
    image streams of format version 1 never use it, so their bytes stay as they were).
    """
    import constriction

    RangeEncoder = constriction.stream.queue.RangeEncoder

    head = io.BytesIO()
    encoder = RangeEncoder()
    for symbols in streams:
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        if symbols.size == 0:  # nothing to code, no descriptor (the reader knows the length)
            continue
        m = _choose_model(symbols, geometric)
        head.write(struct.pack(">BiI", m.kind, m.min_symbol, m.size))
        if m.kind == MODEL_CATEGORICAL:
            head.write(b"".join(_uvarint(int(c)) for c in m.counts))
        elif m.kind == MODEL_GEOMETRIC:
            head.write(struct.pack(">HH", m.theta_code, m.centre_code))
        if m.kind != MODEL_CONSTANT:
            encoder.encode((symbols - m.min_symbol).astype(np.int32), m.constriction())
    words = encoder.get_compressed().astype(">u4")
    return head.getvalue() + struct.pack(">I", words.size) + words.tobytes()


def decode_streams(payload: bytes, lengths: list[int]) -> list[np.ndarray]:
    """Inverse of ``encode_streams``; returns int64 arrays of the given lengths."""
    import constriction

    RangeDecoder = constriction.stream.queue.RangeDecoder

    src = io.BytesIO(payload)
    models = []
    for n in lengths:
        if n == 0:
            models.append(_Model(MODEL_CONSTANT, 0, 1, None))
            continue
        raw = src.read(9)
        if len(raw) != 9:
            raise StreamError("corrupt stream: model descriptor runs past its chunk")
        kind, lo, size = struct.unpack(">BiI", raw)
        if kind not in MODELS or not (1 <= size <= MAX_ALPHABET):
            raise StreamError("corrupt stream: bad entropy model descriptor")
        counts = None
        theta_code = centre_code = 0
        if kind == MODEL_GEOMETRIC:
            raw = src.read(4)
            if len(raw) != 4:
                raise StreamError("corrupt stream: model descriptor runs past its chunk")
            theta_code, centre_code = struct.unpack(">HH", raw)
            if (not (1 <= theta_code < GEOMETRIC_ONE and 1 <= centre_code < GEOMETRIC_ONE)
                    or size > MAX_GEOMETRIC_ALPHABET):
                raise StreamError("corrupt stream: bad geometric model descriptor")
        if kind == MODEL_CATEGORICAL:
            counts = np.array([_read_uvarint(src) for _ in range(size)], dtype=np.int64)
            if counts.sum() <= 0:
                raise StreamError("corrupt stream: empty symbol table")
        if kind != MODEL_CONSTANT and size < 2:
            raise StreamError("corrupt stream: alphabet too small for its model")
        if kind != MODEL_CONSTANT and lo + size - 1 > 0x7FFFFFFF:
            raise StreamError("corrupt stream: alphabet leaves the 32-bit range")
        models.append(_Model(kind, lo, size, counts, theta_code, centre_code))
    raw = src.read(4)
    if len(raw) != 4:
        raise StreamError("corrupt stream: missing coded word count")
    (nwords,) = struct.unpack(">I", raw)
    body = src.read(4 * nwords)
    if len(body) != 4 * nwords or src.read(1):
        raise StreamError("corrupt stream: coded data does not fill its chunk")
    words = np.frombuffer(body, dtype=">u4").astype(np.uint32)
    decoder = RangeDecoder(words)
    out = []
    for m, n in zip(models, lengths):
        if m.kind == MODEL_CONSTANT:
            out.append(np.full(n, m.min_symbol, dtype=np.int64))
        else:
            out.append(decoder.decode(m.constriction(), n).astype(np.int64) + m.min_symbol)
    return out
