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

from .colour_solve import objective_weights
from .model import GaussianLayer
from .params import dequantize_array
from .quantize import quantize_ints
from .render import render_array
from .render.geometry import conics_from_chol
from .render.kernel_floats import Q32
from .render.numba_kernels import pixel_boxes
from .row_blocks import row_blocks

_Q = float(Q32)
#: the moves tried: (parameter column of the coded integers, step): x, y, a, b, r
MOVES = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1), (3, 1), (3, -1), (4, 1), (4, -1))


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
def _move_deltas(means, conics, boxes, i, colours, prefixes, target, weights, first, deltas, errors):
    """deltas[c]: the change of the weighted squared error of the prefixes first..L-1
    if Gaussian i takes candidate c instead of candidate 0 (its current geometry); a
    candidate that draws nothing is never taken (+inf)."""
    n_cand = means.shape[1]
    deltas[:] = 0.0
    x0, x1, y0, y1 = boxes[i, 0, 0], boxes[i, 0, 1], boxes[i, 0, 2], boxes[i, 0, 3]
    for c in range(1, n_cand):
        if boxes[i, c, 0] > boxes[i, c, 1]:
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
def _pass(means, conics, boxes, colours, prefixes, target, weights, first, order, starts, choice):
    """One pass over Gaussians of layer ``first`` (their prefixes first..L-1): the
    blocks order[starts[b]:starts[b + 1]] side by side, each in its own order (blocks
    whose candidates draw on disjoint rows). means [N, C, 2], conics [N, C, 3], boxes
    [N, C, 4]: each Gaussian's candidates, 0 its current geometry; choice [N] int64:
    the candidate each visited Gaussian took (0: none better). The number moved."""
    blocks = starts.shape[0] - 1
    moved = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        deltas = np.zeros(means.shape[1])
        errors = np.zeros((prefixes.shape[0], 3))
        for j in range(starts[b], starts[b + 1]):
            i = order[j]
            _move_deltas(means, conics, boxes, i, colours, prefixes, target, weights, first, deltas, errors)
            best, value = 0, 0.0
            for c in range(1, means.shape[1]):
                if deltas[c] < value:
                    best, value = c, deltas[c]
            choice[i] = best
            if best:
                _move(means, conics, boxes, i, best, colours, prefixes, first)
                moved[b] += 1
    return moved.sum()


def _candidates(q: np.ndarray, steps: tuple[float, ...], height: int, width: int):
    """Each Gaussian's integers unmoved and moved by each of ``MOVES`` ([N, C, 8]), with
    the decoder's geometry of each: means [N, C, 2], conics [N, C, 3] (float64) and pixel
    boxes [N, C, 4]."""
    n, n_cand = len(q), len(MOVES) + 1
    cand = np.repeat(q[:, None, :], n_cand, axis=1)
    for c, (column, step) in enumerate(MOVES, start=1):
        cand[:, c, column] += step
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


def round_geometry(layers: list[GaussianLayer], target: torch.Tensor, steps: tuple[float, ...],
                   intermediate_weight: float, settings: GeometryRounding = GeometryRounding()) -> list[GaussianLayer]:
    """``layers`` with positions and shapes on their quantizer steps, chosen jointly for
    the distortion (module docstring), colours as they were: ``quantize_ints`` of the
    result codes these geometry integers."""
    if settings.passes <= 0 or not layers:
        return layers
    h, w = target.shape[:2]
    tgt = np.ascontiguousarray(target.detach().cpu().float().numpy())  # [H, W, 3] (float32: a 12 MP picture's 144 MB)
    weights = np.asarray(objective_weights(len(layers), intermediate_weight), dtype=np.float64)
    ints = [quantize_ints(l, steps) for l in layers]  # [N_l, 8] int64
    colours = [np.ascontiguousarray(l.colors.detach().cpu().double().numpy()) for l in layers]  # [N_l, 3]
    prefixes = np.empty((len(layers), h, w, 3), dtype=np.float32)  # [L, H, W, 3]
    for l, (q, c) in enumerate(zip(ints, colours)):
        decoded = dequantize_array(q, steps)
        prefixes[l] = render_array(np.ascontiguousarray(decoded[:, 0:2]), np.ascontiguousarray(decoded[:, 2:5]),
                                   c.astype(np.float32), h, w)
        if l:
            prefixes[l] += prefixes[l - 1]
    total = sum(len(q) for q in ints)
    for _ in range(settings.passes):
        moved = 0
        for l, q in enumerate(ints):
            if not len(q):
                continue
            cand, means, conics, boxes = _candidates(q, steps, h, w)
            choice = np.zeros(len(q), dtype=np.int64)
            for order, starts in row_blocks(_union_boxes(boxes), np.ones(len(q), dtype=bool), settings.band):
                moved += _pass(means, conics, boxes, colours[l], prefixes, tgt, weights, l, order, starts, choice)
            ints[l] = cand[np.arange(len(q)), choice]
        if moved < settings.settled * total:
            break
    out = []
    for layer, q in zip(layers, ints):
        decoded = torch.from_numpy(dequantize_array(q, steps)).to(layer.means.device)
        out.append(GaussianLayer(decoded[:, 0:2].to(layer.means.dtype), decoded[:, 2:5].to(layer.chol.dtype),
                                 layer.colors.detach()))
    return out
