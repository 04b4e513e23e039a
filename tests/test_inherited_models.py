"""Coder 4: a P-frame's streams may inherit their models from the previous frame (FORMAT.md 4.4)."""
import numpy as np
import pytest

from bitstream import CODER_RANGE_V3, CODER_RANGE_V4, StreamError, decode_streams, encode_streams
from bitstream.entropy import (
    GEOMETRIC_ONE,
    MODEL_INHERITED,
    MODEL_PEAKED,
    _peaked_model,
    inherited_model,
    peaked_probabilities,
    write_svarints,
    write_uvarints,
)
from gsvc.decoder import decode_video, open_video
from gsvc.encoder import EncodeSettings
from gsvc.layer_codec import code_predicted, read_predicted
from gsvc.metrics import psnr
from gsvc.train import TrainSettings
from gsvc.video_encoder import CodingStructure

from conftest import encode_clip
from golden import DATA, INHERITED, tiny_video_inherited


def _code16(p: float) -> int:  # the float reference of the spec's rounding
    return int(min(max(np.floor(GEOMETRIC_ONE * p + 0.5), 1), GEOMETRIC_ONE - 1))


def _laplace_ints(rng, n, scale=1.5, mode=0):  # [n] int64: a P-frame difference stream's shape
    zero = rng.random(n) < 0.5
    v = np.rint(rng.laplace(0.0, scale, n)).astype(np.int64)
    return np.where(zero, 0, v) + mode


@pytest.mark.parametrize("seed", range(4))
def test_the_fit_is_the_specs_smoothed_ratios(seed):
    rng = np.random.default_rng(seed)
    h = _laplace_ints(rng, int(rng.integers(1, 300)), scale=rng.uniform(0.3, 4), mode=int(rng.integers(-3, 4)))
    values, counts = np.unique(h, return_counts=True)
    mode = int(values[np.argmax(counts)])  # the smallest of the most frequent
    below, above = h[h < mode], h[h > mode]
    sb, sa = float((mode - 1 - below).sum()), float((above - mode - 1).sum())
    m = inherited_model(h, mode - 20, 41)
    assert m.kind == MODEL_INHERITED and m.mode == mode
    assert m.centre_code == _code16((counts.max() + 1) / (h.size + 2))
    assert m.left_code == _code16((below.size + 1) / (below.size + above.size + 2))
    assert m.left_theta == _code16((sb + 1) / (sb + below.size + 2))
    assert m.right_theta == _code16((sa + 1) / (sa + above.size + 2))
    # its table is the peaked model's (section 4.2) with these codes
    np.testing.assert_array_equal(m.probabilities(), peaked_probabilities(
        mode - 20, 41, mode, m.centre_code, m.left_code, m.left_theta, m.right_theta))
    assert inherited_model(h, mode + 1, 10) is None  # the mode outside the alphabet
    assert inherited_model(h, mode - 10, 10) is None


def test_the_mode_is_the_smallest_of_ties_on_both_paths():
    assert inherited_model(np.array([5, 5, 2, 2, 9]), 0, 16).mode == 2
    wide = np.array([-(1 << 30), 7, 7, 3, 3, 1 << 30])  # past the bincount path
    assert inherited_model(wide, 0, 16).mode == 3


def test_a_one_value_history_still_gives_every_symbol_a_probability():
    m = inherited_model(np.zeros(50, np.int64), -30, 61)
    p = m.probabilities()
    assert p.min() > 0 and p.sum() == pytest.approx(1.0)
    assert p.argmax() == 30


@pytest.mark.parametrize("seed", range(6))
def test_streams_round_trip_with_a_history_and_never_cost_more(seed):
    rng = np.random.default_rng(seed)
    streams, history = [], []
    for _ in range(5):
        scale = rng.uniform(0.3, 3.0)
        history.append(_laplace_ints(rng, int(rng.integers(0, 400)), scale) if rng.random() < 0.8 else None)
        streams.append(_laplace_ints(rng, int(rng.integers(0, 400)), scale * rng.uniform(0.7, 1.4)))
    lengths = [s.size for s in streams]
    raw = (rng.integers(0, 1 << 10, 20), np.full(20, 10))
    plain = encode_streams(streams, coder=CODER_RANGE_V3, raw=raw)
    inherited = encode_streams(streams, coder=CODER_RANGE_V4, raw=raw, history=history)
    got = decode_streams(inherited, lengths, raw_widths=lambda s: raw[1], coder=CODER_RANGE_V4, history=history)
    for a, b in zip(got, streams + [raw[0]]):
        np.testing.assert_array_equal(a, b)
    assert len(inherited) <= len(plain) + 4  # a candidate more; the word count rounds
    # without any history coder 4 writes coder 3's bytes
    assert encode_streams(streams, coder=CODER_RANGE_V4, raw=raw, history=[None] * 5) == plain


def test_a_stream_like_its_history_inherits_and_is_smaller():
    rng = np.random.default_rng(7)
    history, stream = _laplace_ints(rng, 600, 2.0), _laplace_ints(rng, 600, 2.0)
    plain = encode_streams([stream], coder=CODER_RANGE_V3)
    inherited = encode_streams([stream], coder=CODER_RANGE_V4, history=[history])
    assert inherited[0] == MODEL_INHERITED and plain[0] == MODEL_PEAKED
    assert len(inherited) <= len(plain) - 8  # the peaked model's mode and four codes
    with pytest.raises(StreamError, match="no history"):
        decode_streams(inherited, [600], coder=CODER_RANGE_V4)
    with pytest.raises(StreamError, match="no history"):
        decode_streams(inherited, [600], coder=CODER_RANGE_V4, history=[np.zeros(0, np.int64)])
    with pytest.raises(StreamError, match="mode"):
        decode_streams(inherited, [600], coder=CODER_RANGE_V4, history=[history + 1000])
    with pytest.raises(StreamError, match="no history"):  # a coder-3 reader has none
        decode_streams(inherited, [600], coder=CODER_RANGE_V3)


@pytest.mark.parametrize("size", [1, 0, 65537])
def test_hostile_inherited_descriptors(size):
    payload = bytes([MODEL_INHERITED]) + write_svarints([-5]) + write_uvarints([size]) + b"\x00\x00\x00\x00"
    with pytest.raises(StreamError):
        decode_streams(payload, [3], coder=CODER_RANGE_V4, history=[np.zeros(4, np.int64)])


def _layer(rng, n):  # [n, 8]
    return np.column_stack([rng.integers(0, 2000, (n, 2)), rng.integers(-40, 40, (n, 3)), rng.integers(-60, 90, (n, 3))])


@pytest.mark.parametrize("fresh", [0, 7])
def test_predicted_layers_round_trip_with_their_history(fresh):
    rng = np.random.default_rng(fresh)
    ref = _layer(rng, 300)
    history = None
    for t in range(3):
        keep = rng.random(len(ref)) < 0.95
        kept = ref[keep] + np.where(rng.random((int(keep.sum()), 8)) < 0.4, rng.integers(-3, 4, (int(keep.sum()), 8)), 0)
        code = code_predicted(ref, keep, kept, _layer(rng, fresh), CODER_RANGE_V4, history=history)
        q, streams = read_predicted(code.payload, ref, len(code.q), CODER_RANGE_V4, history=history)
        np.testing.assert_array_equal(q, code.q)
        for a, b in zip(streams, code.streams):
            np.testing.assert_array_equal(a, b)
        if history is not None:
            plain = code_predicted(ref, keep, kept, _layer(np.random.default_rng(0), 0)[:0] if not fresh else code.q[len(kept):],
                                   CODER_RANGE_V3)
            assert len(code.payload) < len(plain.payload)
            with pytest.raises(StreamError):
                read_predicted(code.payload, ref, len(code.q), CODER_RANGE_V4)
        ref, history = code.q, code.streams


def test_golden_inherited_video_bytes_and_pixels():
    """tests/data/tiny_video_v4.gsv pins coder 4's inherited models."""
    from gsvc.media import read_image

    golden = (DATA / INHERITED).read_bytes()
    assert tiny_video_inherited() == golden
    expected = read_image(DATA / INHERITED.replace(".gsv", ".png"))
    np.testing.assert_array_equal(np.concatenate(decode_video(golden, backend="torch"), axis=0), expected)
    with open_video(golden) as reader:
        assert reader.stream.header.coder == CODER_RANGE_V4
        frames = list(reader.layer_parts())
    assert [len(f[1]) for f in frames] == [2] * 4
    # frame 2's layer 1 inherits: it cannot be read without frame 1's streams
    chunk, ref = frames[2][0].layers[0], frames[1][1][0]
    with pytest.raises(StreamError, match="no history"):
        read_predicted(chunk.data, ref, chunk.count, CODER_RANGE_V4)
    q, _ = read_predicted(chunk.data, ref, chunk.count, CODER_RANGE_V4, history=frames[1][2][0].streams)
    np.testing.assert_array_equal(q, frames[2][1][0])


def _clip(frames=6, w=48, h=32):
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for t in range(frames):
        r = 127 + 100 * np.sin((x - 1.5 * t) / 5.0) * np.cos(y / 7.0)
        g = 127 + 90 * np.cos((x + y - t) / 6.0)
        b = 127 + 80 * np.sin((y + 0.5 * t) / 4.0)
        out.append(np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8))
    return np.stack(out)


def test_a_video_with_inherited_models_is_smaller_and_decodes_as_encoded():
    clip = _clip()
    settings = EncodeSettings(gaussians=(40, 20, 20), train=TrainSettings(iterations=160, seed=0), device="cpu")
    coded = {inherit: encode_clip(clip, settings, CodingStructure(p_share=0.3, cut_drop_db=99.0,
                                                                  inherit_models=inherit))
             for inherit in (True, False)}
    for inherit, (data, reports) in coded.items():
        with open_video(data) as reader:
            assert reader.stream.header.coder == (CODER_RANGE_V4 if inherit else CODER_RANGE_V3)
        assert [r.type for r in reports] == ["I"] + ["P"] * 5
        for report, frame, source in zip(reports, decode_video(data), clip):
            assert report.psnr == pytest.approx(psnr(frame, source), abs=1e-9)
    p_bytes = {k: sum(sum(r.bytes) for r in reps[2:]) for k, (_, reps) in coded.items()}  # after the first P
    assert p_bytes[True] < 0.97 * p_bytes[False], p_bytes
