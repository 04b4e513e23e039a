"""The joint rounding of the positions and shapes (gsvc/geometry_rounding.py): its move
prices against a plain re-evaluation of the objective, that it never loses to the
nearest steps on what it optimizes, that its output lies on the stream's steps,
determinism on any thread count, and that a fit uses it. For P-frame layers
(``round_predicted_geometry``): it lowers distortion plus priced bits, keeps
unchanged parameters unchanged and new Gaussians as they are, and buys zeros with
distortion as the price of a bit rises."""
from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np
import pytest
import torch

from gsvc.colour_solve import objective_weights
from bitstream.entropy import peaked_code_lengths
from gsvc.geometry_rounding import (
    GEOMETRY, MOVES, GeometryRounding, _candidates, _move_deltas, round_geometry, round_predicted_geometry,
)
from gsvc.model import GaussianLayer
from gsvc.params import dequantize_array
from gsvc.quantize import quantize_ints
from gsvc.rate_term import rate_weight
from gsvc.render import render_array
from gsvc.train import TrainSettings, fit
from test_colour_solve import STEPS, _layers, _target


def _objective(layers: list[GaussianLayer], ints: list[np.ndarray], target: np.ndarray, weights) -> float:
    """sum_k w_k * sum((clamp(P_k) - T)^2): ``ints``' geometry with the layers' float
    colours, drawn by the decoder's own draw (float64 sums)."""
    h, w = target.shape[:2]
    total, acc = 0.0, np.zeros((h, w, 3))
    for layer, q, wk in zip(layers, ints, weights):
        d = dequantize_array(q, STEPS)
        acc = acc + render_array(np.ascontiguousarray(d[:, 0:2]), np.ascontiguousarray(d[:, 2:5]),
                                 layer.colors.numpy().astype(np.float32), h, w)
        total += wk * float(np.sum(np.square(np.clip(acc, 0.0, 1.0) - target)))
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_move_prices_are_the_objective_re_evaluated(seed):
    """_move_deltas (float64 exp, the pixels of a Gaussian's candidates) against the
    whole objective evaluated again with the decoder's draw after the move (clamped
    pixels included), for every move of every few Gaussians of every layer."""
    layers, target = _layers(seed), _target(seed + 1)
    tgt = target.numpy().astype(np.float64)
    h, w = tgt.shape[:2]
    weights = np.asarray(objective_weights(len(layers), 1.0))
    ints = [quantize_ints(l, STEPS) for l in layers]
    prefixes = np.empty((len(layers), h, w, 3), dtype=np.float32)
    acc = np.zeros((h, w, 3), dtype=np.float32)
    for l, (layer, q) in enumerate(zip(layers, ints)):
        d = dequantize_array(q, STEPS)
        acc = acc + render_array(np.ascontiguousarray(d[:, 0:2]), np.ascontiguousarray(d[:, 2:5]),
                                 layer.colors.numpy().astype(np.float32), h, w)
        prefixes[l] = acc
    assert np.any(prefixes > 1.0) or np.any(prefixes < 0.0)  # the clamp is exercised
    base = _objective(layers, ints, tgt, weights)
    deltas, errors = np.zeros(len(MOVES) + 1), np.zeros((len(layers), 3))
    checked = 0
    for l, (layer, q) in enumerate(zip(layers, ints)):
        cand, means, conics, boxes = _candidates(q, STEPS, h, w)
        colours = layer.colors.numpy().astype(np.float64)
        for i in range(0, len(q), 4):
            rate = np.zeros((len(q), len(MOVES) + 1))  # the distortion alone
            _move_deltas(means, conics, boxes, i, colours, prefixes, tgt.astype(np.float32), weights, l, rate,
                         deltas, errors)
            assert deltas[0] == 0.0
            for c in range(1, len(MOVES) + 1):
                moved = [x.copy() for x in ints]
                moved[l][i] = cand[i, c]
                if boxes[i, c, 0] > boxes[i, c, 1]:
                    assert deltas[c] == np.inf
                    continue
                expected = _objective(layers, moved, tgt, weights) - base
                assert deltas[c] == pytest.approx(expected, rel=2e-3, abs=1e-6), (l, i, c)
                checked += 1
    assert checked > 200


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lowers_the_objective_and_lands_on_the_steps(seed):
    """Against the nearest steps: a lower objective (the one it prices), geometry the
    quantizer keeps as it is, colours untouched; passes 0 is the nearest steps."""
    layers, target = _layers(seed), _target(seed + 1)
    tgt = target.numpy().astype(np.float64)
    weights = objective_weights(len(layers), 1.0)
    nearest = [quantize_ints(l, STEPS) for l in layers]
    out = round_geometry(layers, target, STEPS, 1.0)
    ints = [quantize_ints(l, STEPS) for l in out]
    for layer, rounded, near, q in zip(layers, out, nearest, ints):
        assert torch.equal(rounded.colors, layer.colors)
        decoded = dequantize_array(q, STEPS)
        assert np.array_equal(decoded[:, 0:5], torch.cat([rounded.means, rounded.chol], 1).numpy())
        assert np.abs(q[:, 0:5] - near[:, 0:5]).max() <= GeometryRounding().passes  # a step a pass at most
    assert sum(int((a[:, 0:5] != b[:, 0:5]).any(axis=1).sum()) for a, b in zip(ints, nearest)) > 10
    assert _objective(layers, ints, tgt, weights) < 0.97 * _objective(layers, nearest, tgt, weights)
    assert round_geometry(layers, target, STEPS, 1.0, GeometryRounding(passes=0)) is layers


def test_blocks_side_by_side_are_the_same_on_any_thread_count():
    """Small bands (many blocks side by side) on one thread and on two: the same
    integers; and a different band is another deterministic order, not another result
    quality."""
    layers, target = _layers(3, counts=(60, 40, 30), h=48, w=40), _target(4, h=48, w=40)
    settings = GeometryRounding(band=12)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            runs.append([quantize_ints(l, STEPS) for l in round_geometry(layers, target, STEPS, 1.0, settings)])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_a_fit_rounds_its_geometry_and_solves_the_colours_after():
    """``fit`` hands over geometry on the steps (the descent's) when the rounding is on,
    and the float geometry of its last iteration when it is off."""
    target = _target(5)
    settings = TrainSettings(iterations=60)
    on = fit(target, (20, 12, 8), settings, STEPS, "numba")
    off = fit(target, (20, 12, 8), replace(settings, geometry_rounding=GeometryRounding(passes=0)), STEPS, "numba")
    for a, b in zip(on.layers, off.layers):
        geometry = torch.cat([a.means, a.chol], 1)
        on_steps = torch.from_numpy(dequantize_array(quantize_ints(a, STEPS), STEPS)[:, 0:5])
        assert torch.equal(geometry, on_steps)
        float_geometry = torch.cat([b.means, b.chol], 1)
        nearest = torch.from_numpy(dequantize_array(quantize_ints(b, STEPS), STEPS)[:, 0:5])
        assert not torch.equal(float_geometry, nearest)


def _predicted(seed: int, counts=(40, 25, 15), new: int = 3):
    """A P-frame's layers as the encoder hands them over: random layers' integers as the
    reference, the same Gaussians moved by a few steps in some parameters (most left
    unchanged), ``new`` fresh Gaussians after the kept ones of each layer; and float
    colours."""
    layers, target = _layers(seed, counts), _target(seed + 1)
    rng = np.random.default_rng(seed)
    ints, bases, colours = [], [], []
    for layer in layers:
        base = quantize_ints(layer, STEPS)
        q = base.copy()
        changed = rng.random((len(q), GEOMETRY)) < 0.4
        q[:, :GEOMETRY] += np.where(changed, rng.integers(-3, 4, (len(q), GEOMETRY)), 0)
        fresh = quantize_ints(_layers(seed + 7, (new,))[0], STEPS)
        ints.append(np.concatenate([q, fresh]))
        bases.append(base)
        colours.append(np.concatenate([layer.colors.numpy(), np.full((new, 3), 0.1, np.float32)]).astype(np.float64))
    return ints, bases, colours, target


def _priced(ints, bases, colours, target, weights, slope, tables) -> float:
    """Distortion (the joint objective, float colours) plus lambda times the geometry
    differences' bits under ``tables`` (per layer and column: (lo, bits)), lambda at
    each prefix's own MSE as the rounding prices it."""
    h, w = target.shape[:2]
    tgt = target.numpy().astype(np.float64)
    total, acc = 0.0, np.zeros((h, w, 3))
    for l, (q, base, c, wk) in enumerate(zip(ints, bases, colours, weights)):
        d = dequantize_array(q, STEPS)
        acc = acc + render_array(np.ascontiguousarray(d[:, 0:2]), np.ascontiguousarray(d[:, 2:5]),
                                 c.astype(np.float32), h, w)
        mse = float(np.mean(np.square(np.clip(acc, 0.0, 1.0) - tgt)))
        total += wk * mse * 3 * h * w
        diff = q[: len(base), :GEOMETRY] - base[:, :GEOMETRY]
        for j, (lo, bits) in enumerate(tables[l]):
            total += rate_weight(mse, h * w, slope) * 3 * h * w * float(bits[diff[:, j] - lo].sum())
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_predicted_rounding_lowers_distortion_plus_bits_and_keeps_what_did_not_change(seed):
    """One layer, one pass (the prices of a pass use the tables and lambda it starts
    from): the priced objective falls; an unchanged parameter stays unchanged, no
    Gaussian moves by more than a step or back to its prediction, the new Gaussians
    and every colour stay as they were."""
    ints, bases, colours, target = _predicted(seed, counts=(60,))
    weights = objective_weights(1, 1.0)
    diff = ints[0][:60, :GEOMETRY] - bases[0][:, :GEOMETRY]
    tables = [[peaked_code_lengths(diff[:, j]) for j in range(GEOMETRY)]]
    # lambda at the start: the prefix's MSE before any move
    out = round_predicted_geometry(ints, bases, colours, target, STEPS, 1.0, 6.0, GeometryRounding(passes=1))
    after = out[0][:60, :GEOMETRY] - bases[0][:, :GEOMETRY]
    assert (after != diff).any()
    assert np.array_equal(after[diff == 0], diff[diff == 0])  # unchanged stays unchanged
    moved = after != diff
    assert np.all((np.abs(after - diff)[moved] == 1) | (after[moved] == 0))
    assert (moved.sum(axis=1) <= 1).all()  # one move per Gaussian and pass
    assert np.array_equal(out[0][60:], ints[0][60:]) and np.array_equal(out[0][:, GEOMETRY:], ints[0][:, GEOMETRY:])
    before = _priced(ints, bases, colours, target, weights, 6.0, tables)
    assert _priced(out, bases, colours, target, weights, 6.0, tables) < before
    # ... and lower than the distortion alone's choice
    unpriced = round_predicted_geometry(ints, bases, colours, target, STEPS, 1.0, 0.0, GeometryRounding(passes=1))
    assert _priced(out, bases, colours, target, weights, 6.0, tables) < \
        _priced(unpriced, bases, colours, target, weights, 6.0, tables)


def test_predicted_rounding_buys_zeros_as_bits_get_dearer():
    """Three layers: a dearer bit (a higher slope) leaves more parameters unchanged, and
    the slope 0 (distortion alone) a better picture than the dearest."""
    ints, bases, colours, target = _predicted(2)
    weights = objective_weights(3, 1.0)
    runs = {s: round_predicted_geometry(ints, bases, colours, target, STEPS, 1.0, s) for s in (0.0, 0.3, 3.0)}
    zeros = {s: sum(int((q[: len(b), :GEOMETRY] == b[:, :GEOMETRY]).sum()) for q, b in zip(out, bases))
             for s, out in runs.items()}
    before = sum(int((q[: len(b), :GEOMETRY] == b[:, :GEOMETRY]).sum()) for q, b in zip(ints, bases))
    assert before < zeros[0.0] < zeros[0.3] < zeros[3.0]
    no_bits = [[] for _ in ints]  # distortion alone
    assert _priced(runs[0.0], bases, colours, target, weights, 0.0, no_bits) < \
        _priced(runs[3.0], bases, colours, target, weights, 0.0, no_bits)
    assert round_predicted_geometry(ints, bases, colours, target, STEPS, 1.0, 6.0, GeometryRounding(passes=0)) is ints
