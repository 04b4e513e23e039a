"""The joint rounding of the colours (gsvc/colour_rounding.py): its move prices against
a plain re-evaluation of the objective, that it never loses to the nearest steps on
what it optimizes, that its output is what the stream codes, budgets, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bitstream.entropy import peaked_code_lengths
from gsvc.colour_rounding import (
    ColourRounding, _colour_transform, _footprint_deltas, _Layer, round_colours, round_predicted,
)
from gsvc.colour_solve import objective_weights
from gsvc.layer_codec import DEFAULT_CODER, colour_streams
from gsvc.model import GaussianLayer
from gsvc.quantize import quantize_ints
from gsvc.rate_control import layer_bytes
from gsvc.render import render_array
from gsvc.row_blocks import row_blocks
from test_colour_solve import STEPS, _layers, _target

STEP = STEPS[5]


def _objective(state: list[_Layer], target: np.ndarray, weights: np.ndarray) -> float:
    """sum_k w_k * sum((clamp(P_k) - T)^2) with the decoder's own draw (float64 sums)."""
    h, w = target.shape[:2]
    total, acc = 0.0, np.zeros((h, w, 3))
    for s, wk in zip(state, weights):
        acc = acc + render_array(s.means32, s.chol32, (s.colours * STEP).astype(np.float32), h, w)
        total += wk * float(np.sum(np.square(np.clip(acc, 0.0, 1.0) - target)))
    return total


def _bits(state: list[_Layer], coder: int = DEFAULT_CODER) -> float:
    """Each layer's colour streams under their own peaked models (the rate priced)."""
    total = 0.0
    for s in state:
        q = np.zeros((len(s.colours), 8), dtype=np.int64)
        q[:, 5:8] = s.colours
        for stream in colour_streams(q, coder):
            lo, bits = peaked_code_lengths(stream)
            total += float(bits[stream - lo].sum()) if bits.size > 1 else 0.0
    return total


def _state(seed: int):
    layers, target = _layers(seed), _target(seed + 1)
    h, w = target.shape[:2]
    return layers, target, [_Layer(quantize_ints(l, STEPS), STEPS, h, w) for l in layers]


@pytest.mark.parametrize("seed", [0, 1])
def test_move_prices_are_the_objective_re_evaluated(seed):
    """_footprint_deltas (float64 exp, one Gaussian's pixels) against the whole objective
    evaluated again with the decoder's draw after the move (clamped pixels included)."""
    layers, target, state = _state(seed)
    tgt = target.numpy().astype(np.float64)
    weights = np.asarray(objective_weights(len(layers), 1.0))
    h, w = tgt.shape[:2]
    prefixes = np.empty((len(state), h, w, 3), dtype=np.float32)
    acc = np.zeros((h, w, 3), dtype=np.float32)
    for l, s in enumerate(state):
        acc = acc + render_array(s.means32, s.chol32, (s.colours * STEP).astype(np.float32), h, w)
        prefixes[l] = acc
    assert np.any(prefixes > 1.0) or np.any(prefixes < 0.0)  # the clamp is exercised
    base = _objective(state, tgt, weights)
    dd = np.zeros((3, 2))
    checked = 0
    for l, s in enumerate(state):
        for i in range(0, len(s.colours), 7):
            gone = _footprint_deltas(s.means, s.conics, s.boxes, i, STEP, s.colours.astype(np.float64), prefixes,
                                     tgt.astype(np.float32), weights, l, dd)
            kept = s.colours[i].copy()
            s.colours[i] = 0  # draws nothing: the same picture as without Gaussian i
            expected = _objective(state, tgt, weights) - base
            s.colours[i] = kept
            assert gone == pytest.approx(expected, rel=2e-3, abs=1e-6), (l, i)
            for c in range(3):
                for j, move in enumerate((1, -1)):
                    s.colours[i, c] += move
                    expected = _objective(state, tgt, weights) - base
                    s.colours[i, c] -= move
                    assert dd[c, j] == pytest.approx(expected, rel=2e-3, abs=1e-6), (l, i, c, move)
                    checked += 1
    assert checked > 50


def test_lowers_the_objective_and_the_bits_as_priced():
    """From the nearest steps: the distortion alone (slope 0) falls by more than
    rounding noise; at the default slope both fall; a higher slope buys fewer bits for
    more distortion."""
    layers, target, state = _state(3)
    tgt = target.numpy().astype(np.float64)
    weights = np.asarray(objective_weights(len(layers), 1.0))
    h, w = tgt.shape[:2]
    f, bits = {}, {}
    for slope in (None, 0.0, 6.0, 40.0):
        out = layers if slope is None else round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER,
                                                         ColourRounding(passes=3, slope=slope, prune=False))
        after = [_Layer(quantize_ints(l, STEPS), STEPS, h, w) for l in out]
        f[slope], bits[slope] = _objective(after, tgt, weights), _bits(after)
    assert f[0.0] < 0.97 * f[None]
    assert f[6.0] < f[None] and bits[6.0] < bits[None]
    assert bits[40.0] < bits[6.0] and f[40.0] > f[6.0] > f[0.0]


def test_output_is_what_the_stream_codes_and_geometry_is_untouched():
    layers, target, _ = _state(5)
    out = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(prune=False))
    for a, b in zip(layers, out):
        assert torch.equal(a.means, b.means) and torch.equal(a.chol, b.chol)
        ints = quantize_ints(b, STEPS)[:, 5:8]
        assert torch.equal(torch.from_numpy((ints * STEP).astype(np.float32)), b.colors)
        # each colour within a few steps of its nearest one (one step per pass at most)
        near = quantize_ints(a, STEPS)[:, 5:8]
        assert np.abs(ints - near).max() <= ColourRounding().passes
    again = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(prune=False))
    assert all(torch.equal(a.colors, b.colors) for a, b in zip(out, again))  # deterministic


def test_pruning_drops_gaussians_that_do_not_pay_and_keeps_the_rest_as_they_were():
    """At a slope where bits are dear, some Gaussians go: the rest are the same
    Gaussians (geometry bit for bit, in order), every layer keeps one at least, and the
    picture loses less than their bits were worth."""
    layers, target, state = _state(8)
    tgt = target.numpy().astype(np.float64)
    weights = np.asarray(objective_weights(len(layers), 1.0))
    h, w = tgt.shape[:2]
    settings = ColourRounding(slope=60.0)
    out = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, settings)
    kept = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(slope=60.0, prune=False))
    assert sum(len(l) for l in out) < sum(len(l) for l in layers)
    for src, got in zip(layers, out):
        assert len(got) >= 1
        rows = [int(np.flatnonzero((src.means == m).all(1))[0]) for m in got.means]
        assert rows == sorted(rows) and len(set(rows)) == len(rows)  # a subset, in order
        assert torch.equal(src.chol[rows], got.chol)
    bytes_pruned = sum(layer_bytes(l, STEPS, DEFAULT_CODER) for l in out)
    bytes_kept = sum(layer_bytes(l, STEPS, DEFAULT_CODER) for l in kept)
    assert bytes_pruned < bytes_kept
    again = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, settings)
    assert all(torch.equal(a.means, b.means) and torch.equal(a.colors, b.colors) for a, b in zip(out, again))
    one = round_colours([l.select(slice(0, 1)) for l in layers], target, STEPS, 1.0, DEFAULT_CODER,
                        ColourRounding(slope=1e6))
    assert [len(l) for l in one] == [1, 1, 1]


def test_no_passes_is_the_nearest_step():
    layers, target, _ = _state(6)
    out = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(passes=0))
    assert all(np.array_equal(quantize_ints(a, STEPS), quantize_ints(b, STEPS)) for a, b in zip(layers, out))


@pytest.mark.parametrize("coder", [1, 2])
def test_budgets_hold_for_each_layer(coder):
    """Budgets under what the rounding would spend: lambda rises (and a layer still over
    loses Gaussians), so every layer ends within its budget."""
    layers, target, _ = _state(7)
    free = round_colours(layers, target, STEPS, 1.0, coder, ColourRounding(slope=0.0))
    budgets = tuple(int(0.9 * layer_bytes(l, STEPS, coder)) for l in free)
    out = round_colours(layers, target, STEPS, 1.0, coder, budgets=budgets)
    assert all(layer_bytes(l, STEPS, coder) <= b for l, b in zip(out, budgets))
    assert sum(len(l) for l in out) >= 0.8 * sum(len(l) for l in layers)


def test_models_price_the_coders_colour_streams():
    """The tables are peaked_code_lengths of layer_codec's colour streams: of the colours
    themselves (an intra layer), of their differences to the reference's (a P-frame's
    kept Gaussians, group 0) and of the new Gaussians' colours (group 1)."""
    rng = np.random.default_rng(0)
    q = np.zeros((200, 8), dtype=np.int64)
    q[:, 2:4] = -8
    q[:, 5:8] = rng.integers(-20, 40, size=(200, 3))
    base = q[:150, 5:8] + rng.integers(-2, 3, size=(150, 3))
    transform = _colour_transform(DEFAULT_CODER)
    for layer, parts in ((_Layer(q, STEPS, 16, 16), [q]),
                         (_Layer(q, STEPS, 16, 16, base), [q[:150] - np.pad(base, ((0, 0), (5, 0))), q[150:]])):
        los, tables = layer.models(transform)
        assert los.shape[0] == tables.shape[0] == len(parts)
        for g, part in enumerate(parts):
            for j, stream in enumerate(colour_streams(part, DEFAULT_CODER)):
                lo, bits = peaked_code_lengths(stream)
                assert los[g, j] == lo and np.array_equal(tables[g, j, : bits.size], bits)


def test_predicted_layers_price_differences_to_the_reference():
    """A P-frame's kept Gaussians: their colours' differences to the reference are what
    the rate prices, so where bits are dear the colours move towards the reference's,
    and the distortion alone moves them towards the picture; geometry, counts and order
    stay."""
    layers, target, _ = _state(9)
    h, w = target.shape[:2]
    q_layers = [quantize_ints(l, STEPS) for l in layers]
    rng = np.random.default_rng(1)
    # the reference: the same colours, a few steps off; the last 5 of each layer are new
    bases = [q[:-5, 5:8] + rng.integers(-3, 4, size=(len(q) - 5, 3)) for q in q_layers]
    weights = np.asarray(objective_weights(len(layers), 1.0))
    tgt = target.numpy().astype(np.float64)

    def off_reference(qs):
        return sum(int(np.abs(q[: len(b), 5:8] - b).sum()) for q, b in zip(qs, bases))

    def objective(qs):
        return _objective([_Layer(q, STEPS, h, w) for q in qs], tgt, weights)

    dear = round_predicted(q_layers, bases, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(slope=1e5))
    free = round_predicted(q_layers, bases, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(slope=0.0))
    for out in (dear, free):
        for q, got in zip(q_layers, out):
            assert got.shape == q.shape and np.array_equal(got[:, :5], q[:, :5])
    assert off_reference(dear) < 0.75 * off_reference(q_layers)
    assert objective(free) < 0.97 * objective(q_layers)
    assert round_predicted(q_layers, bases, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(passes=0)) is q_layers


def test_default_counts_are_a_ceiling_and_given_counts_are_kept(crop):
    """An encode at the default counts may drop Gaussians in the rounding (at a slope that
    makes bits dear here); the same counts given explicitly are kept; the streams hold
    the model's Gaussians with its colours."""
    from gsvc.decoder import read, stream_to_model
    from gsvc.encoder import EncodeSettings, encode_image
    from gsvc.presets import train_settings

    train = train_settings("fast", iterations=60, colour_rounding=ColourRounding(slope=60.0))
    default = EncodeSettings(device="cpu", train=train)
    counts = default.counts_for(crop.shape[1], crop.shape[0])
    pruned = encode_image(crop, default)
    kept = encode_image(crop, EncodeSettings(gaussians=counts, device="cpu", train=train))
    assert kept.model.counts == counts
    assert sum(pruned.model.counts) < sum(counts) and min(pruned.model.counts) >= 1
    for result in (pruned, kept):
        decoded = stream_to_model(read(result.data))
        assert decoded.counts == result.model.counts
        for a, b in zip(decoded.layers, result.model.layers):  # (the stream sorts by position)
            assert sorted(map(tuple, a.colors.tolist())) == sorted(map(tuple, b.colors.tolist()))


def test_bands_run_side_by_side_on_disjoint_rows_and_on_any_thread_count():
    """row_blocks: every Gaussian that draws appears once; within a phase the blocks'
    rows never meet. The banded rounding gives the same integers on 1 thread as on all,
    and lowers the objective about as much as the serial one."""
    import numba

    g = torch.Generator().manual_seed(10)
    h, w = 96, 32
    layers = []
    for n in (120, 60, 60):  # small Gaussians on a tall picture: many bands of 12 rows
        means = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        chol = torch.cat([torch.rand(n, 2, generator=g) * 0.8 - 0.5, torch.randn(n, 1, generator=g) * 0.3], 1)
        layers.append(GaussianLayer(means, chol, torch.rand(n, 3, generator=g) * 0.6 - 0.1))
    target = _target(11, h, w)
    state = [_Layer(quantize_ints(l, STEPS), STEPS, h, w) for l in layers]
    for s in state:
        phases = row_blocks(s.boxes, s.keep, 12)
        seen = np.concatenate([order for order, _ in phases])
        live = np.flatnonzero(s.boxes[:, 0] <= s.boxes[:, 1])
        assert sorted(seen.tolist()) == live.tolist()
        for order, starts in phases[:-1]:
            rows = [set() for _ in range(len(starts) - 1)]
            for b in range(len(starts) - 1):
                for i in order[starts[b]:starts[b + 1]]:
                    rows[b] |= set(range(int(s.boxes[i, 2]), int(s.boxes[i, 3]) + 1))
            assert all(not (rows[a] & rows[b]) for a in range(len(rows)) for b in range(a))
        assert len(phases[0][1]) > 2  # several blocks side by side
    banded = ColourRounding(slope=0.0, parallel_from=0, band=12)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, banded)
    finally:
        numba.set_num_threads(threads)
    many = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, banded)
    assert all(torch.equal(a.colors, b.colors) for a, b in zip(one, many))
    serial = round_colours(layers, target, STEPS, 1.0, DEFAULT_CODER, ColourRounding(slope=0.0))
    tgt = target.numpy().astype(np.float64)
    weights = np.asarray(objective_weights(len(layers), 1.0))
    f = {name: _objective([_Layer(quantize_ints(l, STEPS), STEPS, h, w) for l in out], tgt, weights)
         for name, out in (("start", layers), ("banded", many), ("serial", serial))}
    assert f["banded"] < 0.97 * f["start"] and f["banded"] < 1.02 * f["serial"]
