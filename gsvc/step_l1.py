"""The P-frames' rate proxy on the CPU: the L1 distance, in quantizer steps, of a layer's
first K Gaussians to their reference (``base``, the reference's integers), or its
logarithmic form (``log_distance``), and the soft threshold that shrinks it
(video_encoder's ``_rate_bits`` and ``_shrink_towards``).

One numba pass each instead of a dozen small numpy operations a layer and iteration
(360 times a layer in a Megamind P-frame). The float32 arithmetic is numpy's,
operation for operation, so the parameters and gradients are the same bit for bit;
only the proxy's value (a float64 sum, which no gradient reads) is summed in another
order. Parameters in FORMAT.md order: means [N, 2], chol [N, 3], colors [N, 3] against
base [K, 8] and steps [8], all float32, K <= N.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_JIT = dict(cache=True, fastmath=False, error_model="numpy")
_TWO32 = np.float32(2.0)
_ZERO32 = np.float32(0.0)


@numba.njit(**_JIT)
def _distance(params, col, base, steps, slope):
    """|params[:K] / steps - base| over the columns col.. of base, summed (float64);
    slope[:, col..] <- sign(d) * (2 / steps) (float32: numpy's order)."""
    k = base.shape[0]
    width = params.shape[1]
    total = 0.0
    for i in range(k):
        for j in range(width):
            c = col + j
            d = params[i, j] / steps[c] - base[i, c]
            slope[i, c] = np.sign(d) * (_TWO32 / steps[c])
            total += abs(d)
    return total


def _by_columns(kernel, parts: tuple[np.ndarray, ...], base: np.ndarray, steps: np.ndarray,
                *args) -> tuple[float, np.ndarray]:
    """``kernel(params, col, base, steps, *args, slope)`` over the parameter tensors in
    FORMAT.md order: the summed totals and the slope [K, 8] they fill."""
    slope = np.empty(base.shape, dtype=np.float32)
    total = 0.0
    col = 0
    for params in parts:
        total += kernel(params, col, base, steps, *args, slope)
        col += params.shape[1]
    return total, slope


def step_distance(means: np.ndarray, chol: np.ndarray, colors: np.ndarray, base: np.ndarray,
                  steps: np.ndarray) -> tuple[float, np.ndarray]:
    """(2 x sum |v / steps - base| over the first K Gaussians, slope [K, 8] of that sum
    with respect to v: sign(v / steps - base) * 2 / steps)."""
    total, slope = _by_columns(_distance, (means, chol, colors), base, steps)
    return 2.0 * total, slope


@numba.njit(**_JIT)
def _log_distance(params, col, base, steps, knee, slope):
    """sum of log2(1 + |d| / knee) over the columns col.. of base, d = params[:K] / steps
    - base (float64); slope[:, col..] <- sign(d) / (ln 2 (knee + |d|) steps) (float32)."""
    k = base.shape[0]
    width = params.shape[1]
    total = 0.0
    ln2 = math.log(2.0)
    for i in range(k):
        for j in range(width):
            c = col + j
            d = np.float64(params[i, j] / steps[c] - base[i, c])
            a = abs(d)
            total += math.log2(1.0 + a / knee)
            slope[i, c] = np.float32(np.sign(d) / (ln2 * (knee + a) * np.float64(steps[c])))
    return total


def log_distance(means: np.ndarray, chol: np.ndarray, colors: np.ndarray, base: np.ndarray, steps: np.ndarray,
                 scale: float, knee: float) -> tuple[float, np.ndarray]:
    """(scale x sum log2(1 + |v / steps - base| / knee) over the first K Gaussians, slope
    [K, 8] of that sum with respect to v): a change of d steps priced like the code length
    of a difference, which grows with log |d|, steep near zero."""
    assert knee > 0, knee
    total, slope = _by_columns(_log_distance, (means, chol, colors), base, steps, float(knee))
    slope *= np.float32(scale)
    return scale * total, slope


@numba.njit(**_JIT)
def _scaled(slope, grad, col, out):
    """out[:K] <- slope[:, col..] * grad (float32); the rows past K stay zero."""
    for i in range(slope.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = slope[i, col + j] * grad


def distance_grads(slope: np.ndarray, grad: np.float32, count: int,
                   widths: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The gradients of ``grad`` x the distance for each parameter, [N, width] for each of
    ``widths`` (GaussianLayer.WIDTHS; N = ``count``): slope x grad on the first K
    Gaussians, zero on the rest."""
    out, col = [], 0
    for width in widths:
        g = np.zeros((count, width), dtype=np.float32)
        _scaled(slope, np.float32(grad), col, g)
        out.append(g)
        col += width
    return tuple(out)


@numba.njit(**_JIT)
def _shrink(params, col, base, steps, tau):
    """params[:K] <- (b + sign(d) * max(|d| - tau, 0)) * step, d = params / step - b, in
    place (float32: numpy's order)."""
    for i in range(base.shape[0]):
        for j in range(params.shape[1]):
            c = col + j
            b = base[i, c]
            d = params[i, j] / steps[c] - b
            params[i, j] = (b + np.sign(d) * max(abs(d) - tau, _ZERO32)) * steps[c]


def shrink_towards(means: np.ndarray, chol: np.ndarray, colors: np.ndarray, base: np.ndarray, steps: np.ndarray,
                   tau: float) -> None:
    """Soft-threshold the first K Gaussians' distances to ``base`` by ``tau`` steps, in
    place (the arrays are the parameters' own memory)."""
    col = 0
    for params in (means, chol, colors):
        _shrink(params, col, base, steps, np.float32(tau))
        col += params.shape[1]
