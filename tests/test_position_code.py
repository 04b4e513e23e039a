"""Coder 3: positions coded as a point set (gaps in (row, x) order), raw bit fields."""
import struct

import numpy as np
import pytest

from bitstream import CODER_RANGE_V2, CODER_RANGE_V3, StreamError, decode_streams, encode_streams
from bitstream.entropy import INT32_MAX, INT32_MIN, RAW_MAX_WIDTH
from gsvc.layer_codec import (
    ROW_SHIFTS,
    PositionCode,
    bit_lengths,
    decode_intra,
    decode_predicted,
    encode_intra,
    encode_predicted,
    position_bits,
    position_code,
)


def _layer(rng, n, lo=-40, hi=3100):  # [n, 8] int64
    q = np.empty((n, 8), dtype=np.int64)
    q[:, 0] = rng.integers(lo, hi, n)
    q[:, 1] = rng.integers(lo, hi * 2 // 3, n)
    q[:, 2:5] = rng.integers(-30, 30, (n, 3))
    q[:, 5:8] = rng.integers(-128, 200, (n, 3))
    return q


def _same_rows(a, b):
    """a and b hold the same Gaussians (as multisets of rows)."""
    key = lambda q: q[np.lexsort(q.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(a), key(b))


def test_bit_lengths_are_pythons():
    rng = np.random.default_rng(0)
    v = np.concatenate([[0, 1, 2, 3, 4, (1 << 62) - 1, 1 << 61], rng.integers(0, 1 << 62, 500)])
    assert bit_lengths(v).tolist() == [int(x).bit_length() for x in v]


@pytest.mark.parametrize("n", [1, 2, 17, 3000])
def test_intra_layers_round_trip_and_re_encode_to_the_same_bytes(n):
    rng = np.random.default_rng(n)
    q = _layer(rng, n)
    payload, view = encode_intra(q, CODER_RANGE_V3)
    _same_rows(view, q)
    back = decode_intra(payload, n, CODER_RANGE_V3)
    np.testing.assert_array_equal(back, view)  # the decoder's order is the encoder's view
    assert encode_intra(back, CODER_RANGE_V3)[0] == payload


def test_edge_positions_round_trip():
    """Duplicates, negative positions, one row, one column and the int32 extremes."""
    rng = np.random.default_rng(1)
    cases = []
    q = _layer(rng, 50)
    q[10:20, :2] = q[5, :2]  # ten Gaussians on one spot
    cases.append(q)
    q = _layer(rng, 40, lo=-500, hi=-100)
    q[:, 1] = 7  # one row
    cases.append(q)
    q = _layer(rng, 40)
    q[:, 0] = -3  # one column
    cases.append(q)
    q = _layer(rng, 6)
    q[:, 0] = [INT32_MIN, INT32_MAX, 0, INT32_MIN, INT32_MAX, 5]
    q[:, 1] = [INT32_MIN, INT32_MAX, 0, INT32_MAX, INT32_MIN, -5]
    cases.append(q)
    for q in cases:
        payload, view = encode_intra(q, CODER_RANGE_V3)
        _same_rows(view, q)
        np.testing.assert_array_equal(decode_intra(payload, len(q), CODER_RANGE_V3), view)


@pytest.mark.parametrize("spread", [40, 400])
def test_the_row_height_written_is_the_cheapest_within_a_percent(spread):
    rng = np.random.default_rng(2)
    q = _layer(rng, 800)
    q[:, :2] = rng.integers(0, 3000, (8, 2))[rng.integers(0, 8, 800)] + rng.integers(-spread, spread, (800, 2))
    chosen = position_code(q)
    every = [c for c in (PositionCode.of(q[:, 0], q[:, 1], s) for s in ROW_SHIFTS) if c is not None]
    assert chosen.estimate() == min(c.estimate() for c in every)
    assert chosen.bits() <= 1.01 * min(c.bits() for c in every)
    assert all(abs(c.estimate() - c.bits()) < 0.02 * c.bits() + 200 for c in every)  # what it stands for
    payload, _ = encode_intra(q, CODER_RANGE_V3)
    assert payload[0] == chosen.shift


def test_clustered_positions_cost_less_than_coder_2s_sorted_streams():
    """Gaussians packed into a few small regions (an enhancement layer's detail): the
    gaps are short there, so the set costs well under coder 2's dy and x streams; spread
    uniformly it costs no more."""
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 3000, (12, 2))
    q = _layer(rng, 2400)
    q[:, :2] = centres[rng.integers(0, 12, 2400)] + rng.normal(0, 40, (2400, 2)).round().astype(np.int64)
    n = len(q)
    assert position_bits(q, CODER_RANGE_V3) / n < position_bits(q, CODER_RANGE_V2) / n - 1.0
    spread = _layer(rng, 2400)
    assert position_bits(spread, CODER_RANGE_V3) <= position_bits(spread, CODER_RANGE_V2) * 1.01
    # what position_bits says is what the payload spends (up to the word rounding)
    full = len(encode_intra(q, CODER_RANGE_V3)[0])
    streams_only = len(encode_streams([q[:, j] for j in range(2, 5)] + [q[:, 6], q[:, 5] - q[:, 6], q[:, 7] - q[:, 6]],
                                      coder=CODER_RANGE_V3))
    assert abs(8 * (full - streams_only) - position_bits(q, CODER_RANGE_V3)) < 8 * 12


@pytest.mark.parametrize("fresh", [0, 1, 25])
def test_predicted_layers_round_trip(fresh):
    rng = np.random.default_rng(4 + fresh)
    ref = _layer(rng, 60)
    keep = rng.random(60) < 0.8
    kept = ref[keep] + rng.integers(-2, 3, (int(keep.sum()), 8)) * (rng.random((int(keep.sum()), 8)) < 0.3)
    new = _layer(rng, fresh)
    payload, view = encode_predicted(ref, keep, kept, new, CODER_RANGE_V3)
    np.testing.assert_array_equal(view[: len(kept)], kept)
    _same_rows(view[len(kept):], new)
    np.testing.assert_array_equal(decode_predicted(payload, ref, len(view), CODER_RANGE_V3), view)


def test_raw_fields_round_trip_at_every_width():
    rng = np.random.default_rng(5)
    widths = np.concatenate([np.arange(RAW_MAX_WIDTH + 1), rng.integers(0, RAW_MAX_WIDTH + 1, 300)])
    values = np.array([int(rng.integers(0, 1 << int(w))) if w else 0 for w in widths], dtype=np.int64)
    values[:RAW_MAX_WIDTH + 1] = (1 << np.arange(RAW_MAX_WIDTH + 1)) - 1  # all ones
    payload = encode_streams([np.arange(5)], coder=CODER_RANGE_V3, raw=(values, widths))
    stream, back = decode_streams(payload, [5], raw_widths=lambda s: widths, coder=CODER_RANGE_V3)
    np.testing.assert_array_equal(stream, np.arange(5))
    np.testing.assert_array_equal(back, values)
    with pytest.raises(ValueError, match="does not fit"):
        encode_streams([], coder=CODER_RANGE_V3, raw=(np.array([4]), np.array([2])))
    with pytest.raises(ValueError, match="no raw fields"):
        encode_streams([], coder=CODER_RANGE_V2, raw=(np.array([1]), np.array([2])))


def _payload(prefix: bytes, classes, rest_n: int, raw=None) -> bytes:
    streams = [np.asarray(classes)] + [np.zeros(rest_n, np.int64)] * 6
    return prefix + encode_streams(streams, coder=CODER_RANGE_V3, raw=raw)


@pytest.mark.parametrize("prefix, match", [
    (b"", "runs past the end"),
    (bytes([33, 0, 0, 0]), "row shift"),
    (bytes([0, 0]), "position code of a layer"),
    (bytes([0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F]), "span of a position code"),
])
def test_hostile_position_prefixes(prefix, match):
    with pytest.raises(StreamError, match=match):
        decode_intra(prefix, 1, CODER_RANGE_V3)


def test_hostile_position_classes():
    head = bytes([0]) + bytes([0, 0, 0])  # shift 0, x0 = y0 = 0, span 1
    with pytest.raises(StreamError, match="longer than 62 bits"):
        decode_intra(_payload(head, [63, 1], 2), 2, CODER_RANGE_V3)
    # gaps of 2^61 each: the cells leave the grid before any position is computed
    big = _payload(head, [62] * 8, 8, raw=(np.zeros(8, np.int64), np.full(8, 61)))
    with pytest.raises(StreamError, match="leaves its grid"):
        decode_intra(big, 8, CODER_RANGE_V3)
    # a position past int32: x0 near the top, then a gap of 2^20 in one row (span 2^32)
    head = bytes([32]) + bytes.fromhex("feffffff0f") + bytes([0]) + bytes.fromhex("feffffff0f")
    far = _payload(head, [21], 1, raw=(np.zeros(2, np.int64), np.array([32, 20])))
    with pytest.raises(StreamError, match="32-bit range"):
        decode_intra(far, 1, CODER_RANGE_V3)


def test_a_predicted_layer_with_a_short_position_prefix_is_refused():
    rng = np.random.default_rng(6)
    ref = _layer(rng, 5)
    payload, view = encode_predicted(ref, np.ones(5, bool), ref, _layer(rng, 3), CODER_RANGE_V3)
    with pytest.raises(StreamError):
        decode_predicted(payload[:6], ref, len(view), CODER_RANGE_V3)
    assert struct.unpack_from(">I", payload)[0] == 5


def _models():
    from bitstream.entropy import (MODEL_BINNED, MODEL_CATEGORICAL, MODEL_CONSTANT, MODEL_GEOMETRIC, MODEL_PEAKED,
                                   MODEL_UNIFORM, _Model)

    return [
        _Model(MODEL_CONSTANT, -7, 1, None),
        _Model(MODEL_UNIFORM, INT32_MIN, 1 << 24, None),
        _Model(MODEL_CATEGORICAL, 3, 4, np.array([5, 0, 1, 300])),
        _Model(MODEL_GEOMETRIC, -20, 41, None, theta_code=60000, centre_code=30000),
        _Model(MODEL_PEAKED, INT32_MAX - 99, 100, None, centre_code=9, mode=INT32_MAX - 3, left_code=65535,
               left_theta=1, right_theta=40000),
        _Model(MODEL_BINNED, -1000, 5000, np.array([1, 2, 0, 4, 9]), width=1000),
    ]


def test_compact_descriptors_read_back_field_for_field():
    from bitstream.entropy import _read_model

    for model in _models():
        compact = model.descriptor(compact=True)
        back, end = _read_model(compact + b"tail", 0, compact=True)
        assert end == len(compact)
        assert back.descriptor(compact=True) == compact and back.descriptor() == model.descriptor()
        if abs(model.min_symbol) < 1 << 20:  # varints: small values are what streams hold
            assert len(compact) < len(model.descriptor())


def test_coder_3_descriptors_are_shorter_and_stream_bytes_smaller():
    rng = np.random.default_rng(7)
    streams = [np.round(rng.laplace(0, 2, 300)).astype(np.int64) for _ in range(8)]
    v2, v3 = encode_streams(streams, coder=CODER_RANGE_V2), encode_streams(streams, coder=CODER_RANGE_V3)
    assert len(v3) <= len(v2) - 8 * 5  # >= 5 bytes a descriptor
    for payload, coder in ((v2, CODER_RANGE_V2), (v3, CODER_RANGE_V3)):
        for a, b in zip(streams, decode_streams(payload, [300] * 8, coder=coder)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("descriptor, match", [
    (bytes([4]) + bytes([0x80] * 6), "model descriptor"),  # a varint that never ends
    (bytes([4, 0, 10, 10, 0, 1, 0, 1, 0, 1, 0, 1]), "mode of a peaked model"),  # mode offset 10 of 10 values
    (bytes([1]) + bytes.fromhex("feffffff1f") + bytes([2]), "smallest symbol"),  # min past int32
    (bytes([5, 0, 100, 0]), "bin width"),
    (bytes([9, 0, 4]), "unknown entropy model"),
])
def test_hostile_compact_descriptors(descriptor, match):
    with pytest.raises(StreamError, match=match):
        decode_streams(descriptor + struct.pack(">I", 0), [4], coder=CODER_RANGE_V3)
