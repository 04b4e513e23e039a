"""Bjøntegaard delta rate (BD-rate) with piecewise cubic (PCHIP) interpolation.

The rate a test codec needs relative to an anchor at equal quality, averaged over the
quality range both curves cover (VCEG-M33; the piecewise cubic variant of JCTVC-L0242
and of the AOM/CTC tools): log10(rate) is interpolated as a monotone cubic
(Fritsch–Carlson PCHIP) in PSNR for each codec, both are integrated over the
overlapping PSNR interval, and BD-rate = 10^(mean difference) - 1. Negative: the test
codec needs fewer bits.
"""
from __future__ import annotations

import numpy as np


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson derivatives of the monotone piecewise cubic through (x, y)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = x.size
    d = np.zeros(n)
    if n == 2:
        return np.full(2, delta[0])
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    # one-sided three-point ends, kept shape-preserving
    for k, (h0, h1, d0, d1) in ((0, (h[0], h[1], delta[0], delta[1])), (n - 1, (h[-1], h[-2], delta[-1], delta[-2]))):
        e = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(e) != np.sign(d0):
            e = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(e) > abs(3 * d0):
            e = 3 * d0
        d[k] = e
    return d


def pchip_eval(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The PCHIP interpolant through (x, y) (x increasing) at points ``at`` within [x0, xn]."""
    d = pchip_slopes(x, y)
    k = np.clip(np.searchsorted(x, at, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    t = (at - x[k]) / h
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]


def bd_rate(anchor_rate, anchor_psnr, test_rate, test_psnr, samples: int = 2001) -> float | None:
    """BD-rate of the test codec against the anchor, in per cent; None when the PSNR
    ranges do not overlap or a curve has fewer than two distinct points."""
    curves = []
    for rate, quality in ((anchor_rate, anchor_psnr), (test_rate, test_psnr)):
        rate, quality = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
        order = np.argsort(quality)
        q, r = quality[order], np.log10(rate[order])
        keep = np.concatenate([[True], np.diff(q) > 0])
        if keep.sum() < 2:
            return None
        curves.append((q[keep], r[keep]))
    lo = max(c[0][0] for c in curves)
    hi = min(c[0][-1] for c in curves)
    if hi <= lo:
        return None
    grid = np.linspace(lo, hi, samples)
    (qa, ra), (qt, rt) = curves
    diff = np.trapezoid(pchip_eval(qt, rt, grid) - pchip_eval(qa, ra, grid), grid) / (hi - lo)
    return float(100.0 * (10.0**diff - 1.0))
