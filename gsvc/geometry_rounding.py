"""Distortion-optimized rounding of the geometry: the positions and shapes the stream codes.

Rounding each position and shape parameter to its nearest step treats every Gaussian
alone, but the picture is their sum: where one Gaussian's rounding leaves an error a
neighbour's step the other way can take it up, and the steps that fit the float model
best are not the ones that fit its quantized neighbours best. ``round_geometry`` starts
from the nearest steps and runs a few passes of coordinate descent on the integers, as
``colour_rounding`` does on the colours: for each Gaussian in turn, each of the ten
moves of one step in x, y, a, b or r (``MOVES``) is priced by the exact change of the
joint objective of the colour solve (sum over the prefixes 1..k of w_k times the squared
error of the clamped picture) on the pixels the Gaussian draws before or after the
move, with its (float) colours as the fit left them, and the best move that lowers it
is taken and the prefix pictures updated.

The rate is left out: a step of a position or a shape costs about as many bits either
way under the stream's models (Kodak at --bpp 0.25,0.5,1.0, at the finer steps of
then: every cumulative size within -0.07..+0.30 % of what it was without). The fit
solves the colours again afterwards (``train.fit``): the descent moves the geometry for
the colours it had, the solve the colours for the geometry it left. With it, coarser
steps pay (``QuantSettings``).

A P-frame's kept Gaussians code their geometry as differences to the previous frame's
(``video_encoder``), and there a step does change the bits: an unchanged parameter
costs a fraction of a bit under the difference streams' peaked models, a changed one
several. ``round_predicted_geometry`` runs the same descent on the Gaussians whose
geometry changed, with one more move per parameter, back to its previous value, and
prices every move by the distortion plus lambda times the change of the differences'
bits (the exchange rate ``colour_rounding`` prices colours at); a parameter left
unchanged by the fit and the deadzone stays unchanged.

Encoder only: the decoder reads the integers. Deterministic: each layer in its own
order, layer 1 first, in blocks of ``band`` rows side by side (``row_blocks``), fixed
by the Gaussians' boxes alone, so the same on any number of threads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
from numba import prange
import numpy as np
import torch

from bitstream.entropy import peaked_code_lengths

from .colour_solve import objective_weights
from .model import GaussianLayer
from .params import dequantize_array
from .quantize import quantize_ints
from .rate_term import rate_weight
from .render import render_array
from .render.geometry import conics_from_chol
from .render.kernel_floats import Q32
from .render.numba_kernels import pixel_boxes
from .row_blocks import row_blocks

_Q = float(Q32)
#: the moves tried: (parameter column of the coded integers, step): x, y, a, b, r
MOVES = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1), (3, 1), (3, -1), (4, 1), (4, -1))
#: the geometry's columns of the coded integers (x, y, a, b, r)
GEOMETRY = 5


@dataclass(frozen=True)
class GeometryRounding:
    """How a fit's positions and shapes become integers (``TrainSettings.geometry_rounding``)."""

    #: passes of coordinate descent over all Gaussians; 0: the nearest steps. kodim03 /
    #: 08 at --bpp 0.25,0.5,1.0, layer 3 (``medium``, the finer steps of the time):
    #: +0.15 / +0.14 dB after 2 passes, no more after 3 or 6; each pass ~2 s there
    #: (docs/results.md, "Geometry rounded for the picture"). The presets set it
    #: (``Preset.geometry_passes``)
    passes: int = 2
    #: a pass that moves fewer than this share of the Gaussians ends the descent
    settled: float = 0.02
    #: rows per block of Gaussians visited side by side (``row_blocks``); 0: one block
    band: int = 64


@numba.njit(cache=True, nogil=True, inline="always")
def _weight(means, conics, i, c, x, y):
    """What candidate c of Gaussian i draws at pixel (x, y) per unit of colour:
    exp(-q / 2), 0 beyond the cut-off (float64; the decoder's draw rounds in float32)."""
    dx = x + 0.5 - means[i, c, 0]
    dy = y + 0.5 - means[i, c, 1]
    q = conics[i, c, 0] * dx * dx + 2.0 * conics[i, c, 1] * dx * dy + conics[i, c, 2] * dy * dy
    return 0.0 if q > _Q else math.exp(-0.5 * q)


@numba.njit(cache=True, nogil=True)
def _move_deltas(means, conics, boxes, i, colours, prefixes, target, weights, first, rate, deltas, errors):
    """deltas[c]: the change of the weighted squared error of the prefixes first..L-1
    if Gaussian i takes candidate c instead of candidate 0 (its current geometry); a
    candidate that draws nothing, or one ``rate`` rules out (rate[i, c] = +inf), is
    never taken (+inf, not evaluated)."""
    n_cand = means.shape[1]
    deltas[:] = 0.0
    x0, x1, y0, y1 = boxes[i, 0, 0], boxes[i, 0, 1], boxes[i, 0, 2], boxes[i, 0, 3]
    for c in range(1, n_cand):
        if boxes[i, c, 0] > boxes[i, c, 1] or rate[i, c] == np.inf:
            deltas[c] = np.inf
            continue
        x0, x1 = min(x0, boxes[i, c, 0]), max(x1, boxes[i, c, 1])
        y0, y1 = min(y0, boxes[i, c, 2]), max(y1, boxes[i, c, 3])
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            w0 = _weight(means, conics, i, 0, x, y)
            known = False
            for c in range(1, n_cand):
                if deltas[c] == np.inf:
                    continue
                d = _weight(means, conics, i, c, x, y) - w0
                if d == 0.0:
                    continue
                if not known:  # the current errors, once per pixel
                    for k in range(first, prefixes.shape[0]):
                        for ch in range(3):
                            e = min(max(np.float64(prefixes[k, y, x, ch]), 0.0), 1.0) - np.float64(target[y, x, ch])
                            errors[k, ch] = e * e
                    known = True
                acc = 0.0
                for k in range(first, prefixes.shape[0]):
                    for ch in range(3):
                        p = np.float64(prefixes[k, y, x, ch]) + d * colours[i, ch]
                        e = min(max(p, 0.0), 1.0) - np.float64(target[y, x, ch])
                        acc += weights[k] * (e * e - errors[k, ch])
                deltas[c] += acc


@numba.njit(cache=True, nogil=True)
def _move(means, conics, boxes, i, c, colours, prefixes, first):
    """Gaussian i moved from candidate 0 to candidate c: the prefixes first..L-1 follow."""
    x0, x1 = min(boxes[i, 0, 0], boxes[i, c, 0]), max(boxes[i, 0, 1], boxes[i, c, 1])
    y0, y1 = min(boxes[i, 0, 2], boxes[i, c, 2]), max(boxes[i, 0, 3], boxes[i, c, 3])
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            d = _weight(means, conics, i, c, x, y) - _weight(means, conics, i, 0, x, y)
            if d == 0.0:
                continue
            for k in range(first, prefixes.shape[0]):
                for ch in range(3):
                    prefixes[k, y, x, ch] += np.float32(d * colours[i, ch])


@numba.njit(parallel=True, cache=True, nogil=True)
def _pass(means, conics, boxes, colours, prefixes, target, weights, first, order, starts, rate, choice):
    """One pass over Gaussians of layer ``first`` (their prefixes first..L-1): the
    blocks order[starts[b]:starts[b + 1]] side by side, each in its own order (blocks
    whose candidates draw on disjoint rows). means [N, C, 2], conics [N, C, 3], boxes
    [N, C, 4]: each Gaussian's candidates, 0 its current geometry; rate [N, C]: what
    each candidate adds to the objective besides the distortion (lambda times its bits
    less candidate 0's; zeros: the distortion alone); choice [N] int64: the candidate
    each visited Gaussian took (0: none better). The number moved."""
    blocks = starts.shape[0] - 1
    moved = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        deltas = np.zeros(means.shape[1])
        errors = np.zeros((prefixes.shape[0], 3))
        for j in range(starts[b], starts[b + 1]):
            i = order[j]
            _move_deltas(means, conics, boxes, i, colours, prefixes, target, weights, first, rate, deltas, errors)
            best, value = 0, 0.0
            for c in range(1, means.shape[1]):
                if deltas[c] + rate[i, c] < value:
                    best, value = c, deltas[c] + rate[i, c]
            choice[i] = best
            if best:
                _move(means, conics, boxes, i, best, colours, prefixes, first)
                moved[b] += 1
    return moved.sum()


def _candidates(q: np.ndarray, steps: tuple[float, ...], height: int, width: int,
                base: np.ndarray | None = None):
    """Each Gaussian's integers unmoved and moved by each of ``MOVES`` ([N, C, 8]) and,
    given ``base`` ([N, 5]: a prediction of x, y, a, b, r), with each of those set to
    its prediction in turn (``GEOMETRY``); with the decoder's geometry of each: means
    [N, C, 2], conics [N, C, 3] (float64) and pixel boxes [N, C, 4]."""
    n, n_cand = len(q), len(MOVES) + 1 + (0 if base is None else GEOMETRY)
    cand = np.repeat(q[:, None, :], n_cand, axis=1)
    for c, (column, step) in enumerate(MOVES, start=1):
        cand[:, c, column] += step
    if base is not None:
        for column in range(GEOMETRY):
            cand[:, len(MOVES) + 1 + column, column] = base[:, column]
    decoded = dequantize_array(cand.reshape(-1, 8), steps)  # [N * C, 8] float32
    means = np.ascontiguousarray(decoded[:, 0:2])
    conics = np.ascontiguousarray(conics_from_chol(decoded[:, 2:5]), dtype=np.float32)
    boxes = pixel_boxes(means, conics, height, width).reshape(n, n_cand, 4)
    return (cand, means.astype(np.float64).reshape(n, n_cand, 2), conics.astype(np.float64).reshape(n, n_cand, 3),
            boxes)


def _union_boxes(boxes: np.ndarray) -> np.ndarray:  # [N, C, 4] -> [N, 4]
    """The box around every candidate that draws (empty where the current one does not)."""
    draws = boxes[:, :, 0] <= boxes[:, :, 1]  # [N, C]
    big = np.iinfo(np.int32).max
    lo = np.where(draws[:, :, None], boxes[:, :, [0, 2]], big).min(axis=1)
    hi = np.where(draws[:, :, None], boxes[:, :, [1, 3]], -1).max(axis=1)
    out = np.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], axis=1).astype(np.int32)
    out[~draws[:, 0]] = (0, -1, 0, -1)
    return out


def _descend(ints: list[np.ndarray], colours: list[np.ndarray], tgt: np.ndarray, steps: tuple[float, ...],
             weights: np.ndarray, settings: GeometryRounding, bases: list[np.ndarray] | None = None,
             price=None) -> list[np.ndarray]:
    """The passes of coordinate descent over the layers' integers ([N_l, 8], updated
    copies returned) with their (float) colours [N_l, 3] on the target [H, W, 3].
    ``bases`` ([K_l, 8]): the first K_l Gaussians of each layer are predicted from these;
    only those whose geometry differs from its prediction are visited, with the "back to
    the prediction" candidates too, and ``price(l, diffs [V, C, 5], current [K_l, 5],
    prefixes)`` -> [V, C] says what each visited candidate adds to the objective besides
    the distortion (+inf: not a candidate)."""
    h, w = tgt.shape[:2]
    ints = [q.copy() for q in ints]
    prefixes = np.empty((len(ints), h, w, 3), dtype=np.float32)  # [L, H, W, 3]
    for l, (q, c) in enumerate(zip(ints, colours)):
        decoded = dequantize_array(q, steps)
        prefixes[l] = render_array(np.ascontiguousarray(decoded[:, 0:2]), np.ascontiguousarray(decoded[:, 2:5]),
                                   c.astype(np.float32), h, w)
        if l:
            prefixes[l] += prefixes[l - 1]
    total = sum(len(q) if bases is None else len(b) for q, b in zip(ints, bases or ints))
    for _ in range(settings.passes):
        moved = 0
        for l, q in enumerate(ints):
            visit = np.ones(len(q), dtype=bool)
            base = None
            if bases is not None:
                k = len(bases[l])
                # only the kept Gaussians whose geometry changed (``price`` keeps an
                # unchanged parameter unchanged)
                visit[:k] = (q[:k, :GEOMETRY] != bases[l][:, :GEOMETRY]).any(axis=1)
                visit[k:] = False
                base = np.zeros((len(q), GEOMETRY), dtype=np.int64)
                base[:k] = bases[l][:, :GEOMETRY]
                base[k:] = q[k:, :GEOMETRY]
            if not visit.any():
                continue
            cand, means, conics, boxes = _candidates(q, steps, h, w, base)
            choice = np.zeros(len(q), dtype=np.int64)
            rate = np.zeros(choice.shape + (cand.shape[1],))  # [N, C]
            if price is not None:  # (given with bases: k is this layer's kept count)
                rate[visit] = price(l, cand[visit, :, :GEOMETRY] - base[visit, None, :],
                                    q[:k, :GEOMETRY] - bases[l][:, :GEOMETRY], prefixes)
            for order, starts in row_blocks(_union_boxes(boxes), visit, settings.band):
                moved += _pass(means, conics, boxes, colours[l], prefixes, tgt, weights, l, order, starts, rate, choice)
            ints[l] = cand[np.arange(len(q)), choice]
        if moved < settings.settled * total:
            break
    return ints


def round_geometry(layers: list[GaussianLayer], target: torch.Tensor, steps: tuple[float, ...],
                   intermediate_weight: float, settings: GeometryRounding = GeometryRounding()) -> list[GaussianLayer]:
    """``layers`` with positions and shapes on their quantizer steps, chosen jointly for
    the distortion (module docstring), colours as they were: ``quantize_ints`` of the
    result codes these geometry integers."""
    if settings.passes <= 0 or not layers:
        return layers
    tgt = np.ascontiguousarray(target.detach().cpu().float().numpy())  # [H, W, 3] (float32: a 12 MP picture's 144 MB)
    weights = np.asarray(objective_weights(len(layers), intermediate_weight), dtype=np.float64)
    colours = [np.ascontiguousarray(l.colors.detach().cpu().double().numpy()) for l in layers]  # [N_l, 3]
    ints = _descend([quantize_ints(l, steps) for l in layers], colours, tgt, steps, weights, settings)
    out = []
    for layer, q in zip(layers, ints):
        decoded = torch.from_numpy(dequantize_array(q, steps)).to(layer.means.device)
        out.append(GaussianLayer(decoded[:, 0:2].to(layer.means.dtype), decoded[:, 2:5].to(layer.chol.dtype),
                                 layer.colors.detach()))
    return out


def _difference_bits(diffs: np.ndarray, current: np.ndarray) -> np.ndarray:  # [V, C, 5], [K, 5] -> [V, C]
    """Bits of each candidate's geometry differences under the peaked models of the
    difference streams as they stand (``current``: every kept Gaussian's, the streams
    ``encode_predicted`` codes); +inf for a value outside a stream's alphabet (the
    model has no code for it)."""
    total = np.zeros(diffs.shape[:2])
    for j in range(diffs.shape[2]):
        lo, table = peaked_code_lengths(current[:, j])
        index = diffs[:, :, j] - lo
        inside = (index >= 0) & (index < len(table))
        total += np.where(inside, table[np.clip(index, 0, len(table) - 1)], np.inf)
    return total


def round_predicted_geometry(ints: list[np.ndarray], bases: list[np.ndarray], colours: list[np.ndarray],
                             target: torch.Tensor, steps: tuple[float, ...], intermediate_weight: float,
                             slope: float, settings: GeometryRounding = GeometryRounding()) -> list[np.ndarray]:
    """A P-frame's layers ([N_l, 8] integers, the K_l kept Gaussians first, their
    geometry deadzone-rounded differences to ``bases`` [K_l, 8]) with the kept
    Gaussians' positions and shapes chosen for distortion and rate: each move of
    ``MOVES`` and each "this parameter unchanged" is priced by the exact change of the
    joint objective (``colours`` [N_l, 3], float) plus lambda_l times the change of the
    differences' bits under their streams' peaked models (refitted every pass), with
    lambda_l the exchange rate of ``slope`` dB per bit per pixel at the MSE of layers
    1..l (as ``colour_rounding`` prices the colours). New Gaussians are left as they are."""
    if settings.passes <= 0 or not ints:
        return ints
    h, w = target.shape[:2]
    tgt = np.ascontiguousarray(target.detach().cpu().float().numpy())  # [H, W, 3]
    weights = np.asarray(objective_weights(len(ints), intermediate_weight), dtype=np.float64)

    def price(l: int, diffs: np.ndarray, current: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        # diffs [V, C, 5]: the visited Gaussians' candidates; current [K, 5] -> [V, C]
        mse = float(np.mean(np.square(np.clip(prefixes[l], 0.0, 1.0) - tgt)))
        lam = rate_weight(mse, h * w, slope) * 3 * h * w
        bits = _difference_bits(diffs, current)
        with np.errstate(invalid="ignore"):
            rate = lam * (bits - bits[:, :1])
        # a parameter the fit and the deadzone left unchanged stays so
        changed = diffs[:, 0, :] != 0  # [V, 5]
        for c, (column, _) in enumerate(MOVES, start=1):
            rate[~changed[:, column], c] = np.inf
        for column in range(GEOMETRY):
            rate[~changed[:, column], len(MOVES) + 1 + column] = np.inf
        return rate

    return _descend(ints, [np.asarray(c, dtype=np.float64) for c in colours], tgt, steps, weights, settings,
                    bases, price)
