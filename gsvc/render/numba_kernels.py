"""Numba kernels of the fast CPU backend (no torch): the forward sum, its hand-written
backward, and their numpy entry points (numba_cpu.py wraps them for autograd; the
decoder calls ``forward_sum`` directly and never imports torch).

Draws the same picture as :func:`gsvc.render.reference.rasterize_sum` (see
geometry.py for the equation):

    q = ca*dx^2 + 2*cb*dx*dy + cc*dy^2,  (dx, dy) = (x + .5, y + .5) - mean
    out[y, x] = sum_i w_i * color_i,     w_i = exp(-q/2) if q <= Q_MAX else 0

q is evaluated in float32 in the reference's operation order, so the cut-off
``q <= Q_MAX`` keeps exactly the pixels the reference keeps (pixels are also limited
to each Gaussian's conservative box, outside which q > Q_MAX anyway); exp is a
vectorizable Cephes polynomial within 1 ulp of torch.exp. Outputs and gradients are
float32 sums, so they match the reference to float32 rounding, not bit for bit.

Forward: each Gaussian's pixel box (geometry.bbox_radius, widened by a hair so it is
conservative) is binned into TILE x TILE tiles (count, prefix sum, fill in ascending
Gaussian order). Tiles are rendered in parallel; a Gaussian visits the rows of its box
inside the tile, all TILE columns at once (one SIMD register of float32), and each
pixel sums its Gaussians in ascending index order: the output is bit-for-bit the same
from run to run and for any thread count.

Backward: parallel over Gaussians; each walks its own box (clipped to the image) in
LANES-wide column chunks with per-lane float32 partial sums, folded into float64 in a
fixed order. Race-free, and likewise independent of the thread count.

Conics that are not positive definite (or not finite), and non-finite means, draw
nothing and get zero gradients; from geometry.conics_from_chol they always are valid.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from .geometry import Q_MAX

TILE = 16  # forward tile side in pixels: a tile row is one 16-lane float32 vector
LANES = 16  # backward column-chunk width
_BLOCK = 16  # Gaussians per parallel work item in the backward
_ROWS_PER_FOLD = 32  # backward: rows summed per lane in float32 before the float64 fold
_CHUNK = 4  # prange work items handed out at a time (dynamic scheduling)

# The GIL is kept (no nogil): concurrent calls from several Python threads then queue
# up instead of nesting parallel regions, which numba's workqueue layer cannot do.
_JIT = dict(cache=True, fastmath=False, error_model="numpy")

_F = np.float32
_Q32 = _F(Q_MAX)  # the reference compares float32 q with Q_MAX rounded to float32
_ZERO32 = _F(0.0)
_ONE32 = _F(1.0)
_HALF32 = _F(0.5)
_MHALF32 = _F(-0.5)
_TWO32 = _F(2.0)
# Boxes use a slightly larger cut-off and a small margin (float64), so that they never
# drop a pixel whose float32 q passes the cut.
_QBOX = Q_MAX * (1.0 + 1e-4)
_MARGIN = 1e-2
# Cephes expf
_EXP_LO = _F(-80.0)
_LOG2E = _F(1.44269504088896341)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
_P0 = _F(1.9875691500e-4)
_P1 = _F(1.3981999507e-3)
_P2 = _F(8.3334519073e-3)
_P3 = _F(4.1665795894e-2)
_P4 = _F(1.6666665459e-1)
_P5 = _F(5.0000001201e-1)


# --------------------------------------------------------------------------- exp
@intrinsic
def _f32_from_bits(typingctx, bits):
    """float32 whose IEEE bits are the low 32 bits of an int64 (an LLVM bitcast)."""
    sig = types.float32(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return sig, codegen


@numba.njit(inline="always", **_JIT)
def _exp(e):
    """exp(e) for float32 e <= ~0, clamped below at exp(-80). Cephes expf: within
    1 ulp of torch.exp on [-Q_MAX/2, 0]; unlike the libm call, LLVM vectorizes it."""
    e = max(e, _EXP_LO)
    n = np.floor(e * _LOG2E + _HALF32)
    r = e - n * _LN2_HI
    r = r - n * _LN2_LO
    z = r * r
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * z + r + _ONE32
    return p * _f32_from_bits((np.int64(np.int32(n)) + 127) << 23)


# --------------------------------------------------------------------------- binning
@numba.njit(parallel=True, **_JIT)
def _prepare(means, conics, height, width, boxes):
    """Pixel box [x0, x1] x [y0, y1] of each Gaussian, clipped to the image
    (x0 > x1 when empty)."""
    n = means.shape[0]
    for i in prange(n):
        ca = np.float64(conics[i, 0])
        cb = np.float64(conics[i, 1])
        cc = np.float64(conics[i, 2])
        mx = np.float64(means[i, 0])
        my = np.float64(means[i, 1])
        det = ca * cc - cb * cb
        boxes[i, 0] = 0
        boxes[i, 1] = -1
        boxes[i, 2] = 0
        boxes[i, 3] = -1
        ok = ca > 0.0 and cc > 0.0 and det > 0.0
        ok = ok and math.isfinite(det) and math.isfinite(mx) and math.isfinite(my)
        if not ok:
            continue
        # extreme |dx|, |dy| of the ellipse q = Q_MAX (Sigma = A^-1), as bbox_radius
        rx = math.sqrt(_QBOX * cc / det) + _MARGIN
        ry = math.sqrt(_QBOX * ca / det) + _MARGIN
        # pixel x is inside when mx - rx <= x + .5 <= mx + rx
        fx0 = max(math.ceil(mx - rx - 0.5), 0.0)
        fx1 = min(math.floor(mx + rx - 0.5), width - 1.0)
        fy0 = max(math.ceil(my - ry - 0.5), 0.0)
        fy1 = min(math.floor(my + ry - 0.5), height - 1.0)
        if fx0 > fx1 or fy0 > fy1:
            continue
        boxes[i, 0] = np.int32(fx0)
        boxes[i, 1] = np.int32(fx1)
        boxes[i, 2] = np.int32(fy0)
        boxes[i, 3] = np.int32(fy1)


@numba.njit(**_JIT)
def _bin(boxes, tiles_x, tiles_y):
    """Per-tile lists of Gaussian ids in ascending order: (offsets [T + 1], ids)."""
    n = boxes.shape[0]
    nt = tiles_x * tiles_y
    offsets = np.zeros(nt + 1, dtype=np.int64)
    for i in range(n):
        x0 = boxes[i, 0]
        x1 = boxes[i, 1]
        y0 = boxes[i, 2]
        y1 = boxes[i, 3]
        if x0 > x1 or y0 > y1:
            continue
        for ty in range(y0 // TILE, y1 // TILE + 1):
            for tx in range(x0 // TILE, x1 // TILE + 1):
                offsets[ty * tiles_x + tx + 1] += 1
    for t in range(nt):
        offsets[t + 1] += offsets[t]
    ids = np.empty(offsets[nt], dtype=np.int32)
    fill = offsets[:nt].copy()
    for i in range(n):
        x0 = boxes[i, 0]
        x1 = boxes[i, 1]
        y0 = boxes[i, 2]
        y1 = boxes[i, 3]
        if x0 > x1 or y0 > y1:
            continue
        for ty in range(y0 // TILE, y1 // TILE + 1):
            for tx in range(x0 // TILE, x1 // TILE + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = i
                fill[t] += 1
    return offsets, ids


# --------------------------------------------------------------------------- forward
@numba.njit(parallel=True, **_JIT)
def _forward(means, conics, colors, boxes, offsets, ids, tiles_x, out):
    """out[H, W, 3] = sum over each tile's Gaussians, in ascending id order."""
    height = out.shape[0]
    width = out.shape[1]
    nt = offsets.shape[0] - 1
    for t in prange(nt):
        _forward_tile(means, conics, colors, boxes, offsets, ids, tiles_x, t, height, width, out)


@numba.njit(inline="always", **_JIT)
def _forward_tile(means, conics, colors, boxes, offsets, ids, tiles_x, t, height, width, out):
    ty = t // tiles_x
    tx = t - ty * tiles_x
    ty0 = ty * TILE
    tx0 = tx * TILE
    ty1 = min(ty0 + TILE, height) - 1
    tx1 = min(tx0 + TILE, width) - 1
    acc = np.zeros((3, TILE, TILE), dtype=np.float32)
    ftx0 = np.float32(tx0)
    for k in range(offsets[t], offsets[t + 1]):
        i = ids[k]
        mx = means[i, 0]
        my = means[i, 1]
        ca = conics[i, 0]
        cb2 = _TWO32 * conics[i, 1]
        cc = conics[i, 2]
        r = colors[i, 0]
        g = colors[i, 1]
        b = colors[i, 2]
        # columns outside the box are masked (mathematically q > Q_MAX there anyway), so
        # that forward and backward visit exactly the same pixels
        bx0 = np.float32(boxes[i, 0])
        bx1 = np.float32(boxes[i, 1])
        # rows of the box inside the tile; ly >= 0 is visible to LLVM (no wraparound)
        ly0 = max(boxes[i, 2] - ty0, 0)
        ly1 = min(boxes[i, 3], ty1) - ty0
        for ly in range(ly0, ly1 + 1):
            # q = ca*dx*dx + 2*cb*dx*dy + cc*dy*dy, in the reference's float32 order
            dy = (np.float32(ty0 + ly) + _HALF32) - my
            qc = cc * dy * dy
            for lx in range(TILE):
                px = ftx0 + np.float32(lx)
                dx = (px + _HALF32) - mx
                q = (ca * dx * dx + cb2 * dx * dy) + qc
                w = _exp(_MHALF32 * q)
                w = w if (q <= _Q32) & (px >= bx0) & (px <= bx1) else _ZERO32
                acc[0, ly, lx] += w * r
                acc[1, ly, lx] += w * g
                acc[2, ly, lx] += w * b
    for y in range(ty0, ty1 + 1):
        for x in range(tx0, tx1 + 1):
            out[y, x, 0] = acc[0, y - ty0, x - tx0]
            out[y, x, 1] = acc[1, y - ty0, x - tx0]
            out[y, x, 2] = acc[2, y - ty0, x - tx0]


# --------------------------------------------------------------------------- backward
@numba.njit(parallel=True, **_JIT)
def _planar_grad(grad_out, gp):
    """[H, W, 3] -> [3, H, W + LANES], zero-padded on the right."""
    height = grad_out.shape[0]
    width = grad_out.shape[1]
    for y in prange(height):
        for x in range(width):
            gp[0, y, x] = grad_out[y, x, 0]
            gp[1, y, x] = grad_out[y, x, 1]
            gp[2, y, x] = grad_out[y, x, 2]
        for x in range(width, gp.shape[2]):
            gp[0, y, x] = 0.0
            gp[1, y, x] = 0.0
            gp[2, y, x] = 0.0


@numba.njit(parallel=True, **_JIT)
def _backward(means, conics, colors, boxes, gp, g_means, g_conics, g_colors):
    """Gradients of sum(out * grad) w.r.t. means, conics and colors, per Gaussian."""
    n = means.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        s = np.empty((8, LANES), dtype=np.float32)
        tot = np.empty(8, dtype=np.float64)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            _backward_one(means, conics, colors, boxes, gp, i, s, tot)
            ca = np.float64(conics[i, 0])
            cb = np.float64(conics[i, 1])
            cc = np.float64(conics[i, 2])
            # dq/dmean = -2 A (dx, dy);  dq/dca = dx^2, dq/dcb = 2 dx dy, dq/dcc = dy^2
            g_means[i, 0] = -2.0 * (ca * tot[3] + cb * tot[4])
            g_means[i, 1] = -2.0 * (cb * tot[3] + cc * tot[4])
            g_conics[i, 0] = tot[5]
            g_conics[i, 1] = 2.0 * tot[6]
            g_conics[i, 2] = tot[7]
            g_colors[i, 0] = tot[0]
            g_colors[i, 1] = tot[1]
            g_colors[i, 2] = tot[2]


@numba.njit(inline="always", **_JIT)
def _backward_one(means, conics, colors, boxes, gp, i, s, tot):
    """tot <- sums over Gaussian i's pixels of (w g_r, w g_g, w g_b, dq dx, dq dy,
    dq dx^2, dq dx dy, dq dy^2) with dq = dL/dq = -w/2 * sum_k c_k g_k."""
    mx = means[i, 0]
    my = means[i, 1]
    ca = conics[i, 0]
    cb2 = _TWO32 * conics[i, 1]
    cc = conics[i, 2]
    r = colors[i, 0]
    g = colors[i, 1]
    b = colors[i, 2]
    tot[:] = 0.0
    y0 = max(boxes[i, 2], 0)
    y1 = boxes[i, 3]
    bx1 = np.float32(boxes[i, 1])  # lanes past the box are masked, as in the forward
    for x0 in range(max(boxes[i, 0], 0), boxes[i, 1] + 1, LANES):
        fx0 = np.float32(x0)
        for ya in range(y0, y1 + 1, _ROWS_PER_FOLD):
            s[:, :] = 0.0
            for y in range(ya, min(ya + _ROWS_PER_FOLD, y1 + 1)):
                dy = (np.float32(y) + _HALF32) - my
                qc = cc * dy * dy
                # row views: unit stride and a lane index LLVM knows is >= 0 -> SIMD
                gr0 = gp[0, y, x0 : x0 + LANES]
                gr1 = gp[1, y, x0 : x0 + LANES]
                gr2 = gp[2, y, x0 : x0 + LANES]
                for lx in range(LANES):
                    px = fx0 + np.float32(lx)
                    dx = (px + _HALF32) - mx
                    q = (ca * dx * dx + cb2 * dx * dy) + qc
                    w = _exp(_MHALF32 * q)
                    w = w if (q <= _Q32) & (px <= bx1) else _ZERO32
                    g0 = gr0[lx]
                    g1 = gr1[lx]
                    g2 = gr2[lx]
                    s[0, lx] += w * g0
                    s[1, lx] += w * g1
                    s[2, lx] += w * g2
                    dq = _MHALF32 * w * (r * g0 + g * g1 + b * g2)
                    qx = dq * dx
                    qy = dq * dy
                    s[3, lx] += qx
                    s[4, lx] += qy
                    s[5, lx] += qx * dx
                    s[6, lx] += qx * dy
                    s[7, lx] += qy * dy
            for j in range(8):
                for lx in range(LANES):
                    tot[j] += s[j, lx]


# --------------------------------------------------------------------------- numpy entry points
def _dynamic(kernel, *args):
    """Run a parallel kernel handing out _CHUNK iterations at a time (load balance;
    results do not depend on the schedule). Set from Python: numba cannot cache a
    function that sets the chunk size itself."""
    old = numba.set_parallel_chunksize(_CHUNK)
    try:
        kernel(*args)
    finally:
        numba.set_parallel_chunksize(old)



def pixel_boxes(means: np.ndarray, conics: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, 4] int32 pixel box (x0, x1, y0, y1) of each Gaussian, clipped to the image
    (x0 > x1 when it draws nothing). means [N, 2], conics [N, 3]: float32, C order."""
    boxes = np.empty((means.shape[0], 4), dtype=np.int32)
    if means.shape[0]:
        _prepare(means, conics, height, width, boxes)
    return boxes


def box_work(boxes: np.ndarray) -> int:
    """Pixel-Gaussian pairs the forward evaluates: the summed area of the boxes."""
    w = np.maximum(boxes[:, 1].astype(np.int64) - boxes[:, 0] + 1, 0)
    h = np.maximum(boxes[:, 3].astype(np.int64) - boxes[:, 2] + 1, 0)
    return int(np.dot(w, h))


def forward_sum(
    means: np.ndarray,  # [N, 2] float32
    conics: np.ndarray,  # [N, 3] float32
    colors: np.ndarray,  # [N, 3] float32
    height: int,
    width: int,
    boxes: np.ndarray | None = None,  # [N, 4] from pixel_boxes, when already computed
) -> np.ndarray:  # [H, W, 3] float32, not clamped
    """The additive sum over a height x width image (module docstring)."""
    if boxes is None:
        boxes = pixel_boxes(means, conics, height, width)
    out = np.empty((height, width, 3), dtype=np.float32)
    if out.size:
        tiles_x = -(-width // TILE)
        tiles_y = -(-height // TILE)
        offsets, ids = _bin(boxes, tiles_x, tiles_y)
        _dynamic(_forward, means, conics, colors, boxes, offsets, ids, tiles_x, out)
    return out


def backward_sum(
    means: np.ndarray, conics: np.ndarray, colors: np.ndarray, boxes: np.ndarray,
    grad_out: np.ndarray,  # [H, W, 3] float32
) -> list[np.ndarray]:  # float64 gradients [N, 2], [N, 3], [N, 3]
    """Gradients of sum(grad_out * forward) w.r.t. means, conics and colors."""
    n = means.shape[0]
    height, width = grad_out.shape[0], grad_out.shape[1]
    grads = [np.zeros((n, k), dtype=np.float64) for k in (2, 3, 3)]
    if n and grad_out.size:
        gp = np.empty((3, height, width + LANES), dtype=np.float32)
        _planar_grad(grad_out, gp)
        _dynamic(_backward, means, conics, colors, boxes, gp, *grads)
    return grads


__all__ = ["LANES", "TILE", "backward_sum", "box_work", "forward_sum", "pixel_boxes"]
