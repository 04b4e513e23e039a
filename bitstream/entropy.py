"""Entropy coding of integer symbol streams with constriction's range coder.

The coder is fixed by the format (coder id CODER_RANGE_V1 in the header), never by
defaults of the installed library: ``constriction.stream.queue.RangeEncoder`` with
32-bit words, one model per stream, models built as described in FORMAT.md:

* categorical: ``Categorical(counts / sum(counts), perfect=False)`` over the stored
  alphabet, counts written into the stream;
* uniform: ``Uniform(size)``;
* constant: a single-letter alphabet, no symbols coded.

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

#: constriction's Uniform and Categorical models take alphabets below 2**24.
MAX_ALPHABET = (1 << 24) - 1


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


@dataclass(frozen=True)
class _Model:
    kind: int
    min_symbol: int
    size: int
    counts: np.ndarray | None  # [size] for categorical

    def constriction(self):
        import constriction  # local: keeps `import bitstream` light

        model = constriction.stream.model

        if self.kind == MODEL_CATEGORICAL:
            probs = self.counts.astype(np.float64)
            return model.Categorical(probs / probs.sum(), perfect=False)
        return model.Uniform(self.size)


def _choose_model(symbols: np.ndarray) -> _Model:
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
    if entropy_bits + table_bits < uniform_bits:
        return _Model(MODEL_CATEGORICAL, lo, size, counts)
    return _Model(MODEL_UNIFORM, lo, size, None)


def encode_streams(streams: list[np.ndarray]) -> bytes:
    """Code integer arrays into one payload: model descriptors, then coded words.

    Lengths are not stored: the reader passes them to ``decode_streams``.
    """
    import constriction

    RangeEncoder = constriction.stream.queue.RangeEncoder

    head = io.BytesIO()
    encoder = RangeEncoder()
    for symbols in streams:
        symbols = np.asarray(symbols, dtype=np.int64).ravel()
        if symbols.size == 0:
            head.write(struct.pack(">BiI", MODEL_CONSTANT, 0, 1))
            continue
        m = _choose_model(symbols)
        head.write(struct.pack(">BiI", m.kind, m.min_symbol, m.size))
        if m.kind == MODEL_CATEGORICAL:
            head.write(b"".join(_uvarint(int(c)) for c in m.counts))
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
    for _ in lengths:
        raw = src.read(9)
        if len(raw) != 9:
            raise StreamError("corrupt stream: model descriptor runs past its chunk")
        kind, lo, size = struct.unpack(">BiI", raw)
        if kind not in (MODEL_CATEGORICAL, MODEL_UNIFORM, MODEL_CONSTANT) or not (
            1 <= size <= MAX_ALPHABET
        ):
            raise StreamError("corrupt stream: bad entropy model descriptor")
        counts = None
        if kind == MODEL_CATEGORICAL:
            counts = np.array([_read_uvarint(src) for _ in range(size)], dtype=np.int64)
            if counts.sum() <= 0:
                raise StreamError("corrupt stream: empty symbol table")
        if kind != MODEL_CONSTANT and size < 2:
            raise StreamError("corrupt stream: alphabet too small for its model")
        models.append(_Model(kind, lo, size, counts))
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
