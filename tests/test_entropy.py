import numpy as np
import pytest

from bitstream import StreamError, decode_streams, encode_streams
from bitstream.entropy import MODEL_CATEGORICAL, MODEL_CONSTANT, MODEL_UNIFORM, _choose_model


@pytest.mark.parametrize("coder", [1, 2])
def test_round_trip_mixed_streams(coder):
    rng = np.random.default_rng(0)
    streams = [
        rng.integers(-3, 4, size=500),  # peaked, small alphabet
        rng.integers(0, 12000, size=500),  # wide: uniform model
        np.full(500, 7),  # constant
        np.round(rng.normal(0, 20, size=500)).astype(np.int64),
        np.round(rng.laplace(5, 3, size=500)).astype(np.int64),
        np.concatenate([rng.normal(-40, 3, 300), rng.normal(40, 3, 300)]).round().astype(np.int64),  # bimodal
        rng.integers(0, 2, size=50),
        np.array([], dtype=np.int64),
    ]
    payload = encode_streams(streams, coder=coder)
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


# ---------------------------------------------------------------- coder 2 (no tables)
from bitstream.entropy import (  # noqa: E402
    CODER_RANGE_V2,
    MODEL_BINNED,
    MODEL_PEAKED,
    _choose_model_v2,
    binned_probabilities,
    peaked_probabilities,
)


def test_coder2_model_choice():
    rng = np.random.default_rng(4)
    assert _choose_model_v2(np.full(10, 3)).kind == MODEL_CONSTANT
    assert _choose_model_v2(rng.integers(0, 100000, size=200)).kind == MODEL_UNIFORM
    assert _choose_model_v2(np.round(rng.laplace(2, 4, size=3000)).astype(np.int64)).kind == MODEL_PEAKED
    bimodal = np.concatenate([rng.normal(-60, 4, 2000), rng.normal(60, 4, 2000)]).round().astype(np.int64)
    assert _choose_model_v2(bimodal).kind == MODEL_BINNED


def test_coder2_sends_no_tables_and_codes_near_the_entropy():
    rng = np.random.default_rng(5)
    symbols = np.round(rng.laplace(0, 6, size=2000)).astype(np.int64)
    values, counts = np.unique(symbols, return_counts=True)
    entropy_bytes = -(counts * np.log2(counts / symbols.size)).sum() / 8
    v1, v2 = len(encode_streams([symbols])), len(encode_streams([symbols], coder=CODER_RANGE_V2))
    assert v2 < v1  # coder 1 pays for its count table
    assert v2 < entropy_bytes * 1.03 + 24


@pytest.mark.parametrize("mode,left", [(-5, 9000), (0, 30000), (7, 100)])
def test_peaked_and_binned_probabilities_sum_to_one(mode, left):
    p = peaked_probabilities(-5, 13, mode, 20000, left, 40000, 50000)
    assert p.shape == (13,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    assert p[mode + 5] == pytest.approx(20000 / 65536)
    b = binned_probabilities(13, 4, np.array([3, 0, 5, 2]))  # bins of 4, 4, 4, 1 values
    assert b.shape == (13,) and b.sum() == pytest.approx(1.0)
    assert b[12] == pytest.approx(2 / 10) and b[0] == pytest.approx(3 / 10 / 4)


def test_peaked_code_lengths_are_what_the_coder_spends():
    """The rate a training loss reads (peaked_code_lengths) is the coded size of a stream
    that coder 2 codes with its peaked model: the same model serves both."""
    from bitstream.entropy import peaked_code_lengths

    rng = np.random.default_rng(6)
    symbols = np.round(rng.laplace(3, 5, size=4000)).astype(np.int64)
    assert _choose_model_v2(symbols).kind == MODEL_PEAKED
    lo, bits = peaked_code_lengths(symbols)
    assert lo == symbols.min() and bits.size == symbols.max() - symbols.min() + 1
    estimate = bits[symbols - lo].sum() / 8
    coded = len(encode_streams([symbols], coder=CODER_RANGE_V2))
    assert estimate < coded < estimate + 32  # the descriptor and the coder's tail
    assert np.argmin(bits) == np.bincount(symbols - lo).argmax()  # cheapest at the mode
    assert peaked_code_lengths(np.full(5, 9)) == (9, pytest.approx(np.zeros(1)))
