"""The pictures' rate proxy on the CPU: ``rate_term._Tails`` of one layer in one numba
pass, value and gradient, instead of a dozen small torch operations (and as many in the
backward) a layer and iteration.

The proxy: each priced stream s (a, b, r and the colour streams, each a parameter in
quantizer steps or the difference of two, ``RateTerm``'s ``plus`` / ``minus`` columns)
costs ``right[s] * d`` bits above its mode and ``-left[s] * d`` below it, d = u - mode.
The slope at d = 0 is ``right - left``, as torch's clamps give it. The value is summed
in float64 (no gradient reads it); the slopes are float32, as the torch form's. The
parameters' gradients come out the same as the torch form's up to the order of float32
additions (``tests/test_rate_term.py`` compares them). Columns in FORMAT.md order: a
priced column c is chol[:, c - 2] for c in 2..4 and colors[:, c - 5] for c in 5..7.
"""
from __future__ import annotations

import numba
import numpy as np

_JIT = dict(cache=True, fastmath=False, error_model="numpy")


@numba.njit(**_JIT)
def _value_and_slopes(chol, colors, plus, minus, has_minus, inv_steps, mode, left, right, g_chol, g_colors):
    """The proxy's bits (float64); g_chol, g_colors [N, 3] <- its gradient (float32)."""
    n = chol.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(3):
            g_chol[i, j] = 0.0
            g_colors[i, j] = 0.0
        for s in range(plus.shape[0]):
            p, m = plus[s], minus[s]
            vp = chol[i, p - 2] if p < 5 else colors[i, p - 5]
            u = vp * inv_steps[p]
            if has_minus[s]:
                vm = chol[i, m - 2] if m < 5 else colors[i, m - 5]
                u = u - vm * inv_steps[m]
            d = u - mode[s]
            if d > 0:
                slope = right[s]
                total += right[s] * d
            elif d < 0:
                slope = -left[s]
                total -= left[s] * d
            else:
                slope = right[s] - left[s]
            if p < 5:
                g_chol[i, p - 2] += slope * inv_steps[p]
            else:
                g_colors[i, p - 5] += slope * inv_steps[p]
            if has_minus[s]:
                if m < 5:
                    g_chol[i, m - 2] -= slope * inv_steps[m]
                else:
                    g_colors[i, m - 5] -= slope * inv_steps[m]
    return total


def tail_bits(chol: np.ndarray, colors: np.ndarray, plus: np.ndarray, minus: np.ndarray, has_minus: np.ndarray,
              inv_steps: np.ndarray, mode: np.ndarray, left: np.ndarray,
              right: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(bits, d bits / d chol [N, 3], d bits / d colors [N, 3]) of one layer; float32
    parameters and model arrays, int64 columns, ``has_minus`` bool."""
    g_chol = np.empty(chol.shape, dtype=np.float32)
    g_colors = np.empty(colors.shape, dtype=np.float32)
    total = _value_and_slopes(chol, colors, plus, minus, has_minus, inv_steps, mode, left, right, g_chol, g_colors)
    return total, g_chol, g_colors
