import numpy as np
import pytest

from bitstream import StreamError, decode_streams, encode_streams
from bitstream.entropy import MODEL_CATEGORICAL, MODEL_CONSTANT, MODEL_UNIFORM, _choose_model


def test_round_trip_mixed_streams():
    rng = np.random.default_rng(0)
    streams = [
        rng.integers(-3, 4, size=500),  # peaked, small alphabet
        rng.integers(0, 12000, size=500),  # wide: uniform model
        np.full(500, 7),  # constant
        np.round(rng.normal(0, 20, size=500)).astype(np.int64),
        np.array([], dtype=np.int64),
    ]
    payload = encode_streams(streams)
    back = decode_streams(payload, [len(s) for s in streams])
    for a, b in zip(streams, back):
        np.testing.assert_array_equal(a, b)


def test_model_choice():
    rng = np.random.default_rng(1)
    assert _choose_model(np.full(10, 3)).kind == MODEL_CONSTANT
    assert _choose_model(rng.integers(0, 100000, size=200)).kind == MODEL_UNIFORM
    assert _choose_model(rng.integers(0, 4, size=2000) ** 2).kind == MODEL_CATEGORICAL


def test_peaked_data_codes_below_its_entropy_bound_plus_slack():
    rng = np.random.default_rng(2)
    symbols = rng.geometric(0.5, size=20000) - 1
    payload = encode_streams([symbols])
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    entropy_bytes = -(counts[counts > 0] * np.log2(p)).sum() / 8
    assert len(payload) < entropy_bytes * 1.02 + 64


def test_payload_with_garbage_is_rejected():
    payload = encode_streams([np.arange(10)])
    with pytest.raises(StreamError):
        decode_streams(payload + b"\0", [10])
    with pytest.raises(StreamError):
        decode_streams(payload[:5], [10])


def _leb128(n: int) -> bytes:
    """The count-table varint of FORMAT.md section 4, one byte at a time (the reference)."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_count_table_varints_are_plain_leb128():
    from bitstream.entropy import _read_uvarints, _write_uvarints

    values = np.array([0, 1, 127, 128, 255, 16383, 16384, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28,
                       (1 << 32) - 1, 5, 0])
    table = _write_uvarints(values)
    assert table == b"".join(_leb128(int(v)) for v in values)
    back, end = _read_uvarints(b"\x07" + table + b"\x09", 1, values.size)
    np.testing.assert_array_equal(back, values)
    assert end == 1 + len(table)


def test_categorical_streams_round_trip_with_their_table():
    rng = np.random.default_rng(3)
    symbols = np.round(rng.normal(0, 40, size=3000)).astype(np.int64)  # wide, peaked: a long table
    assert _choose_model(symbols).kind == MODEL_CATEGORICAL
    payload = encode_streams([symbols])
    np.testing.assert_array_equal(decode_streams(payload, [symbols.size])[0], symbols)
