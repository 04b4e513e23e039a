"""Global motion estimation for P-frames: a camera pan, zoom and roll between two pictures.

A pan moves every Gaussian of the previous frame by the same amount; coded as
differences to the unmoved reference, each kept Gaussian then pays for a change of x
and y (a 2-pixel pan is 16 position steps). With the reference first moved by the
frame's global motion (``layer_codec.GlobalMotion``, FORMAT.md section 7.4), a pure
pan leaves nothing to code but the content that enters the picture.

The model is a similarity about the picture's centre C: ``p' = zoom * R(angle) (p - C)
+ C + t`` maps a point of the previous frame to the new one. It is estimated on luma
(at most ``MAX_SIDE`` pixels on the long side): integer translation from phase
correlation, then robust Gauss-Newton (Cauchy weights: a moving object does not drag
the camera's motion along; at half size first, ``COARSE_SIDE``) over the pixels both
frames see, on the inverse map ``u = B (p - C) + C + v`` (B a scaled rotation), which
is linear in its four numbers.
Everything is float64, and every sum is taken in one fixed order (the Gauss-Newton
step's warp and normal equations are serial numba loops over the pixels in raster
order; no BLAS products, no parallel reductions): the same frames give the same
motion on any thread count, so serial and parallel encodes write the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .layer_codec import ZC_RANGE, ZOOM_ONE, ZS_LIMIT, GlobalMotion

#: motion is estimated on pictures downscaled (by an integer factor) to this long side
MAX_SIDE = 384
#: Gauss-Newton iterations per estimate at most
ITERATIONS = 20
#: pictures (as estimated) whose shorter side is at least this are fitted coarse to
#: fine: from both starts at half size, then at full size from the better fit, where
#: a few iterations finish it (Megamind 360x264: 128 -> 66 ms an estimate; the same
#: motion within 0.03 px, its gain never lower)
COARSE_SIDE = 96
#: pixels at the picture's edges left out of the fit (edge effects of the downscaling)
MARGIN = 2
#: pictures with a shorter side than this get no motion (too few pixels to tell a
#: camera motion from the content's: on 24x16 frames a roll was fitted to moving shapes)
MIN_SIDE = 32
#: Cauchy weights: scale = CAUCHY_K x the residuals' robust spread (1.4826 x median
#: absolute residual), at least CAUCHY_FLOOR (luma, full scale 1: about 2.5 levels of 255)
CAUCHY_K = 2.0
CAUCHY_FLOOR = 0.01


@dataclass(frozen=True)
class MotionEstimate:
    """A global motion in pixels of the full-size picture, and how well it predicts:
    a point p of the previous frame moves to ``zoom * R(angle) (p - C) + C + t``."""

    tx: float  # translation, pixels
    ty: float
    zoom: float  # 1.0: none
    angle: float  # rotation, radians (image axes: x right, y down)
    mse: float  # luma MSE (full scale 1) of the moved previous frame against the new one
    still_mse: float  # the same without motion, over the same pixels

    @property
    def gain(self) -> float:
        """Share of the still MSE the motion removes (0: none, 1: all)."""
        return 1.0 - self.mse / self.still_mse if self.still_mse > 0 else 0.0


def _luma(rgb: np.ndarray, factor: int) -> np.ndarray:  # [H, W, 3] uint8 -> [H / f, W / f] float64
    # channel by channel: no float64 copy of the whole frame (200 MB at 4K)
    y = (0.299 * rgb[..., 0].astype(np.float64) + 0.587 * rgb[..., 1].astype(np.float64)
         + 0.114 * rgb[..., 2].astype(np.float64)) / 255.0
    if factor > 1:
        h, w = (y.shape[0] // factor) * factor, (y.shape[1] // factor) * factor
        y = y[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return y


def _phase_shift(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Integer translation d with cur(p) ~ prev(p - d) (phase correlation, Hann window)."""
    h, w = prev.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    a = np.fft.rfft2((prev - prev.mean()) * window)
    b = np.fft.rfft2((cur - cur.mean()) * window)
    cross = b * np.conj(a)
    corr = np.fft.irfft2(cross / (np.abs(cross) + 1e-12), s=(h, w))
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return float(dx - w if dx > w // 2 else dx), float(dy - h if dy > h // 2 else dy)


@numba.njit(cache=True)
def _warp(prev, gx, gy, cur, theta, margin):  # -> [6, P]
    """At every pixel p (raster order, inside the margin) whose u = B (p - C) + C + v lies
    inside the margin too: the residual prev(u) - cur(p), the still one prev(p) - cur(p),
    the gradient of prev at u (gx, gy) and p - C."""
    h, w = prev.shape
    alpha, beta, vx, vy = theta[0], theta[1], theta[2], theta[3]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    size = (h - 2 * margin) * (w - 2 * margin)
    out = np.empty((6, size))  # r, still, sx, sy, xs, ys
    n = 0
    for py in range(margin, h - margin):
        y = py - cy
        for px in range(margin, w - margin):
            x = px - cx
            ux = alpha * x + beta * y + cx + vx
            uy = -beta * x + alpha * y + cy + vy
            if ux >= margin and ux <= w - 1 - margin and uy >= margin and uy <= h - 1 - margin:
                x0 = min(int(math.floor(ux)), w - 2)
                y0 = min(int(math.floor(uy)), h - 2)
                fx, fy = ux - x0, uy - y0
                w00, w01 = (1.0 - fx) * (1.0 - fy), fx * (1.0 - fy)
                w10, w11 = (1.0 - fx) * fy, fx * fy
                out[0, n] = (prev[y0, x0] * w00 + prev[y0, x0 + 1] * w01 + prev[y0 + 1, x0] * w10
                             + prev[y0 + 1, x0 + 1] * w11) - cur[py, px]
                out[1, n] = prev[py, px] - cur[py, px]
                out[2, n] = gx[y0, x0] * w00 + gx[y0, x0 + 1] * w01 + gx[y0 + 1, x0] * w10 + gx[y0 + 1, x0 + 1] * w11
                out[3, n] = gy[y0, x0] * w00 + gy[y0, x0 + 1] * w01 + gy[y0 + 1, x0] * w10 + gy[y0 + 1, x0 + 1] * w11
                out[4, n], out[5, n] = x, y
                n += 1
    return out[:, :n]


@numba.njit(cache=True)
def _normal_equations(r, sx, sy, xs, ys, scale):  # 5 x [P] -> [4, 4], [4]
    """J^T W J and J^T W r of one Gauss-Newton step (Cauchy weights at ``scale``), summed
    in order (the same on every machine and thread count)."""
    normal = np.zeros((4, 4))
    rhs = np.zeros(4)
    n00 = n01 = n02 = n03 = n11 = n12 = n13 = n22 = n23 = n33 = 0.0
    b0 = b1 = b2 = b3 = 0.0
    for i in range(r.size):
        t = r[i] / scale
        weight = 1.0 / (1.0 + t * t)
        j0 = sx[i] * xs[i] + sy[i] * ys[i]
        j1 = sx[i] * ys[i] - sy[i] * xs[i]
        j2, j3 = sx[i], sy[i]
        w0, w1, w2, w3 = weight * j0, weight * j1, weight * j2, weight * j3
        n00 += w0 * j0
        n01 += w0 * j1
        n02 += w0 * j2
        n03 += w0 * j3
        n11 += w1 * j1
        n12 += w1 * j2
        n13 += w1 * j3
        n22 += w2 * j2
        n23 += w2 * j3
        n33 += w3 * j3
        b0 += w0 * r[i]
        b1 += w1 * r[i]
        b2 += w2 * r[i]
        b3 += w3 * r[i]
    normal[0, 0], normal[0, 1], normal[0, 2], normal[0, 3] = n00, n01, n02, n03
    normal[1, 1], normal[1, 2], normal[1, 3] = n11, n12, n13
    normal[2, 2], normal[2, 3], normal[3, 3] = n22, n23, n33
    for i in range(4):
        for j in range(i):
            normal[i, j] = normal[j, i]
    rhs[0], rhs[1], rhs[2], rhs[3] = b0, b1, b2, b3
    return normal, rhs


def _cauchy_scale(r: np.ndarray) -> float:
    """The Cauchy weights' scale for residuals ``r``: a multiple of their robust spread."""
    return max(CAUCHY_K * 1.4826 * float(np.median(np.abs(r))), CAUCHY_FLOOR)


def _plausible(theta: np.ndarray) -> bool:
    """zoom 0.5x .. 2x, rotation under 60 degrees"""
    return 0.25 < theta[0] ** 2 + theta[1] ** 2 < 4.0 and theta[0] > abs(theta[1]) * 0.57


def _fit(prev: np.ndarray, gx: np.ndarray, gy: np.ndarray, cur: np.ndarray, theta: np.ndarray,
         scale: float) -> tuple[np.ndarray, float, float, float]:
    """Robust Gauss-Newton (Cauchy weights, re-estimated each step) on the inverse map
    theta = (alpha, beta, vx, vy) (pixels of these pictures), linear in theta:
    cur(p) ~ prev(u), u = B (p - C) + C + v with B = [[alpha, beta], [-beta, alpha]].
    Pixels that move otherwise (an object crossing a still scene) weigh little, so the
    motion most of the picture shares wins. Returns theta, the moved MSE and the still
    MSE over the pixels the moved frame covers, and the mean Cauchy cost at ``scale``
    (to compare fits from different starts). ``gx``, ``gy``: the gradient of ``prev``."""
    for _ in range(ITERATIONS):
        r, _still, sx, sy, xs, ys = _warp(prev, gx, gy, cur, theta, MARGIN)
        if r.size < 64:
            break
        normal, rhs = _normal_equations(r, sx, sy, xs, ys, _cauchy_scale(r))
        if not np.all(np.isfinite(normal)) or np.linalg.cond(normal) > 1e12:
            break
        delta = -np.linalg.solve(normal, rhs)
        theta = theta + delta
        if not _plausible(theta):
            break
        if abs(delta[0]) < 1e-5 and abs(delta[1]) < 1e-5 and abs(delta[2]) < 1e-3 and abs(delta[3]) < 1e-3:
            break
    r, still = _warp(prev, gx, gy, cur, theta, MARGIN)[:2]
    if r.size < 64 or not _plausible(theta):
        theta = np.array([1.0, 0.0, 0.0, 0.0])
        r, still = _warp(prev, gx, gy, cur, theta, MARGIN)[:2]
    moved = float(np.mean(r**2))
    return theta, moved, float(np.mean(still**2)), float(np.mean(np.log1p((r / scale) ** 2)))


def _halved(y: np.ndarray) -> np.ndarray:  # [H, W] -> [H / 2, W / 2]: means of 2x2 blocks
    h, w = (y.shape[0] // 2) * 2, (y.shape[1] // 2) * 2
    return y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _gradient(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # -> gx, gy
    gy, gx = np.gradient(y)
    return gx, gy


def _best_fit(prev: np.ndarray, cur: np.ndarray, start: np.ndarray,
              scale: float) -> tuple[np.ndarray, float, float, float]:
    """``_fit`` from ``start`` (the phase correlation's translation) and, when that moves
    anything, from no motion too; the fit of the lower Cauchy cost at ``scale``."""
    gx, gy = _gradient(prev)  # one gradient for the fits from both starts
    best = _fit(prev, gx, gy, cur, start, scale)
    if start[2] != 0.0 or start[3] != 0.0:
        # the correlation's peak may be an object's, not the scene's: try from no motion too
        alt = _fit(prev, gx, gy, cur, np.array([1.0, 0.0, 0.0, 0.0]), scale)
        if alt[3] < best[3]:
            best = alt
    return best


def estimate_global_motion(previous: np.ndarray, current: np.ndarray) -> MotionEstimate:  # 2 x [H, W, 3] uint8
    """The pan, zoom and rotation that carry ``previous`` onto ``current`` (module doc)."""
    assert previous.shape == current.shape, (previous.shape, current.shape)
    height, width = previous.shape[:2]
    factor = max(1, math.ceil(max(width, height) / MAX_SIDE))
    prev, cur = _luma(previous, factor), _luma(current, factor)
    if min(height, width) < MIN_SIDE:
        still = float(np.mean((prev - cur) ** 2))
        return MotionEstimate(0.0, 0.0, 1.0, 0.0, still, still)
    scale = _cauchy_scale(prev - cur)  # one scale to compare the fits from each start
    dx, dy = _phase_shift(prev, cur)  # cur(p) ~ prev(p - d): u = p - d
    start = np.array([1.0, 0.0, -dx, -dy])
    if min(prev.shape) >= COARSE_SIDE:
        # both starts at half size; its theta is the full size's with the translation
        # halved (pixel p of the half picture is 2 p + 0.5 of the full one, and so are
        # the centres): the full-size fit below goes on from the better one
        half_prev, half_cur = _halved(prev), _halved(cur)
        theta = _best_fit(half_prev, half_cur, start * [1.0, 1.0, 0.5, 0.5], scale)[0]
        theta, moved, still, _ = _fit(prev, *_gradient(prev), cur, theta * [1.0, 1.0, 2.0, 2.0], scale)
    else:
        theta, moved, still = _best_fit(prev, cur, start, scale)[:3]
    # the forward map: p' = A (p - c) + c + t, A = B^-1 = [[zc, -zs], [zs, zc]], t = -A v
    alpha, beta, vx, vy = theta
    norm = alpha * alpha + beta * beta
    zc, zs = alpha / norm, beta / norm
    tx, ty = -(zc * vx - zs * vy), -(zs * vx + zc * vy)
    # pixels of the full picture, about its centre C rather than the downscaled one's c:
    # t_C = t * f + (A - I) (C - c)
    ex, ey = width / 2.0 - factor * prev.shape[1] / 2.0, height / 2.0 - factor * prev.shape[0] / 2.0
    tx = tx * factor + (zc - 1.0) * ex - zs * ey
    ty = ty * factor + zs * ex + (zc - 1.0) * ey
    return MotionEstimate(float(tx), float(ty), float(math.hypot(zc, zs)), float(math.atan2(zs, zc)), moved, still)


def to_global_motion(estimate: MotionEstimate, width: int, height: int,
                     steps: tuple[float, ...]) -> GlobalMotion:
    """The stream's integer form of ``estimate`` (``layer_codec.GlobalMotion``): zoom times
    cosine and sine of the rotation in 2^-16 units (no rotation when the x and y position
    steps differ: the integer map rotates in step units), the motion about the centre
    folded into the translation, in position steps; sizes follow a zoom of at least half
    a log-scale step per frame (3 % at the default step). Slower zooms leave sizes to
    training: carrying the remainder over frames (one step every few frames) was
    measured on a pan with a 0.4 % zoom per frame and cost 1.7 % more bytes for +0.02 dB."""
    angle = estimate.angle if steps[0] == steps[1] else 0.0
    zc = min(max(round(estimate.zoom * math.cos(angle) * ZOOM_ONE), ZC_RANGE[0]), ZC_RANGE[1])
    zs = min(max(round(estimate.zoom * math.sin(angle) * ZOOM_ONE), -ZS_LIMIT), ZS_LIMIT)
    a, b = zc / ZOOM_ONE, zs / ZOOM_ONE
    # p' = A (p - C) + C + t = A p + (I - A) C + t
    cx, cy = width / 2.0, height / 2.0
    tx = round(((1.0 - a) * cx + b * cy + estimate.tx) / steps[0])
    ty = round((-b * cx + (1.0 - a) * cy + estimate.ty) / steps[1])
    limit = (1 << 31) - 1
    tx, ty = min(max(tx, -limit), limit), min(max(ty, -limit), limit)
    return GlobalMotion(tx, ty, zc, zs, round(math.log(math.hypot(a, b)) / steps[2]))
