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

Two draws of the same sum: the decoder's (``forward_sum``; numpy_forward.py draws it
bit for bit with float32 ufuncs, which round every multiply and add) and training's
(``fused=True``), whose exp rounds each of its multiply-adds once (llvm.fma: the same
value on every machine; on a trained 768x512 picture the forward ~25 % faster, the
backward ~12 %). They keep the same pixels (the same q and cut) and differ in the last
bits of w. The backward differentiates training's draw, which the colour solve and the
autograd nodes use; a picture drawn for anyone else is the decoder's.

Binning: each Gaussian's pixel box (geometry.bbox_radius, widened by a hair so it is
conservative) is binned into the TILE x TILE tiles it meets (count, prefix sum, fill in
ascending Gaussian order), leaving out a tile where the Gaussian keeps no pixel of its
box: a rigorous float64 bound (_misses, as numpy_forward's cells: the exact minimum of
q over the part of the box in the tile, less a bound on the float32 rounding of q, is
above the cut-off). Such a pair would only add w = +0 times finite values to sums that
start at +0.0, so leaving it out changes no bit of the output nor of the gradients (with
finite colours and incoming gradients). Elongated, rotated Gaussians ("needles") have
large boxes that their ellipse mostly misses: in a trained 768x512 picture of 9000
Gaussians culling drops a third of the (tile, Gaussian) pairs and a quarter of the
pixel-Gaussian pairs. Each row of a box's tiles is tested from both ends inwards up to
the first tile kept (the tiles between are kept untested; so are boxes one tile tall or
wide, whose tiles the ellipse crosses); binning stays deterministic. Each kept pair also
gets its rows: those of the box in the tile, narrowed (for the tested boxes) to where the
ellipse, widened by the same float32 rounding bound, meets the box's columns in the tile
(an interval, from the roots of the ellipse's boundary on the strip's edges; in a
trained Kodak model it drops ~12 % of the rows the kernels evaluate).
bin_boxes culls when given the boxes' means and conics (forward_sum and backward_sum do,
when they bin for themselves); without them it lists every tile of each box with all
its box rows.

Forward: tiles are rendered in parallel; a Gaussian visits its pair's rows, all TILE
columns at once (one SIMD register of float32), and each pixel sums its Gaussians in
ascending index order: the output is bit-for-bit the same from run to run and for any
thread count.

Backward: mirrors the forward, reusing its binning. Tiles are processed in parallel;
the tile's incoming gradient is copied from the [H, W, 3] image (one contiguous run a
row) to a planar TILE x TILE block, and each of its Gaussians visits exactly the
forward's pixels (same rows, same column mask, same q cut) two rows per pass (pairs of
rows counted from the first of the box, whatever rows binning left out, so that the
float32 sums are those of the whole box), with per-column float32 partial sums of w*g (3), d, d*dy and
d*dy^2 (d = w * <color, g> = -2 dL/dq; the dx moments are taken from the column sums,
dx being constant down a column). These are folded over the TILE lanes in a fixed
pairwise order (SIMD shuffles) into the (tile, Gaussian) pair's own float32 row of a
pair buffer, laid out Gaussian-major with each Gaussian's kept tiles in row-major order
(the binning records each list entry's row); a second parallel pass sums each
Gaussian's rows in that order. Every pair is written once by one thread, so the
backward is race-free and its gradients are bit-for-bit the same from run to run and
for any thread count.

Conics that are not positive definite (or not finite), and non-finite means, draw
nothing and get zero gradients; from geometry.conics_from_chol they always are valid.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from .kernel_floats import (  # noqa: F401 (box_work: re-exported)
    BOX_MARGIN, CULL_ABS, CULL_REL, EXP_LO, EXP_P, LN2_HI, LN2_LO, LOG2E, Q32, QBOX, box_work,
)

TILE = 16  # tile side in pixels: a tile row is one 16-lane float32 vector
LANES = TILE  # float32 lanes evaluated side by side (one tile row), forward and backward
# backward: sums per (tile, Gaussian) pair, in this order (d = w * <color, g>)
_NSUM = 8  # w g_r, w g_g, w g_b, d dx, d dy, d dy^2, d dx dy, d dx^2
_CHUNK = 4  # prange work items handed out at a time (dynamic scheduling)
_BIN_CHUNK = 64  # the same for the binning's Gaussians (cheap items)

# The GIL is kept (no nogil): concurrent calls from several Python threads then queue
# up instead of nesting parallel regions, which numba's workqueue layer cannot do.
_JIT = dict(cache=True, fastmath=False, error_model="numpy")

_F = np.float32
_Q32 = Q32  # the reference compares float32 q with Q_MAX rounded to float32
_Q32_64 = float(_Q32)  # the same cut-off, for the float64 tile culling
_ZERO32 = _F(0.0)
_ONE32 = _F(1.0)
_HALF32 = _F(0.5)
_MHALF32 = _F(-0.5)
_TWO32 = _F(2.0)
# box cut-off and margin, Cephes expf (kernel_floats.py, shared with numpy_forward.py)
_QBOX = QBOX
_MARGIN = BOX_MARGIN
_EXP_LO = EXP_LO
_LOG2E = LOG2E
_LN2_HI = LN2_HI
_LN2_LO = LN2_LO
_P0, _P1, _P2, _P3, _P4, _P5 = EXP_P


# --------------------------------------------------------------------------- exp
@intrinsic
def _f32_from_bits(typingctx, bits):
    """float32 whose IEEE bits are the low 32 bits of an int64 (an LLVM bitcast)."""
    sig = types.float32(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return sig, codegen


@intrinsic
def _pair_sums(typingctx, s, sums, p):
    """sums[p, :] <- the _NSUM sums of one (tile, Gaussian) pair, from the backward's
    scratch s [9, TILE] float32 (rows 0-5: per-column sums over the rows, in _NSUM
    order; row 6: per-column dx): w g_r, w g_g, w g_b, dx * d, d dy, d dy^2,
    dx * (d dy), dx * (dx * d), each summed over the TILE lanes in float32 in a fixed
    pairwise order (lanes l and l + n/2, n = TILE, TILE/2, ...: SIMD shuffles and adds)
    (float32 sums, stored as they are: the fold widens them to float64 exactly).
    Both arrays C-contiguous."""
    ok = isinstance(s, types.Array) and s.dtype == types.float32 and s.ndim == 2
    ok = ok and isinstance(sums, types.Array) and sums.dtype == types.float32
    ok = ok and s.layout == "C" and sums.layout == "C" and sums.ndim == 2
    if not (ok and isinstance(p, types.Integer)):
        return None
    sig = types.none(s, sums, p)

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.args[1])(context, builder, args[1])
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        vty = ir.VectorType(ir.FloatType(), TILE)

        def row(j):
            ptr = builder.gep(src.data, [ir.Constant(i64, j * TILE)])
            return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4)

        def lanes(n, start):
            return ir.Constant(ir.VectorType(i32, n), list(range(start, start + n)))

        dx = row(6)
        dxd = builder.fmul(dx, row(3))
        vals = [row(0), row(1), row(2), dxd, row(4), row(5),
                builder.fmul(dx, row(4)), builder.fmul(dx, dxd)]
        base = builder.mul(context.cast(builder, args[2], signature.args[2], types.int64),
                           ir.Constant(i64, _NSUM))
        for j, v in enumerate(vals):
            n = TILE
            while n > 1:
                n //= 2
                v = builder.fadd(builder.shuffle_vector(v, v, lanes(n, 0)),
                                 builder.shuffle_vector(v, v, lanes(n, n)))
            x = builder.extract_element(v, ir.Constant(i32, 0))
            builder.store(x, builder.gep(dst.data, [builder.add(base, ir.Constant(i64, j))]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c in float32 rounded once (llvm.fma: the same value on every machine; one
    instruction on CPUs with FMA, x86-64 since Haswell and Piledriver and every arm64; a
    slower library call elsewhere)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@numba.njit(inline="always", **_JIT)
def _mul_add(a, b, c, fused):
    """a * b + c: rounded once (fused) or twice; ``fused`` is a constant where the
    kernels call this, so LLVM keeps one of the two."""
    return _fma(a, b, c) if fused else a * b + c


@numba.njit(inline="always", **_JIT)
def _exp(e, fused):
    """exp(e) for float32 e <= ~0, clamped below at exp(-80). Cephes expf: within
    1 ulp of torch.exp on [-Q_MAX/2, 0]; unlike the libm call, LLVM vectorizes it.
    ``fused``: its eight multiply-adds rounded once each (training's draws and the
    backward: the forward ~25 % faster); otherwise rounded twice, as numpy_forward's
    float32 ufuncs do (the decoder's picture)."""
    e = max(e, _EXP_LO)
    n = np.floor(_mul_add(e, _LOG2E, _HALF32, fused))
    r = _mul_add(-n, _LN2_HI, e, fused)  # e - n ln2_hi (negation is exact)
    r = _mul_add(-n, _LN2_LO, r, fused)
    z = r * r
    p = _mul_add(_P0, r, _P1, fused)
    p = _mul_add(p, r, _P2, fused)
    p = _mul_add(p, r, _P3, fused)
    p = _mul_add(p, r, _P4, fused)
    p = _mul_add(p, r, _P5, fused)
    p = _mul_add(p, z, r, fused) + _ONE32
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


@numba.njit(inline="always", **_JIT)
def _q_rounding(ca, cb, cc, ax, ay):
    """A bound on how far the float32 evaluation of q may fall below its exact value at
    any point with |dx| <= ax, |dy| <= ay (float64): a few ulps of the magnitudes of q's
    terms, ``size`` (culling's CULL_REL, CULL_ABS)."""
    size = ca * ax * ax + 2.0 * abs(cb) * ax * ay + cc * ay * ay  # bounds |each term| of q
    return CULL_REL * size + CULL_ABS


@numba.njit(inline="always", **_JIT)
def _misses(ca, cb, cc, kx, ky, mx, my, x_lo, x_hi, y_lo, y_hi):
    """Whether no pixel centre of columns x_lo..x_hi, rows y_lo..y_hi passes the float32
    cut q <= Q_MAX: numpy_forward._misses for one valid Gaussian (float64 parameters,
    kx = -cb / cc, ky = -cb / ca).

    Rigorous: the exact minimum of q over the rectangle of pixel centres, less a bound on
    the float32 evaluation's rounding (a few ulps of the terms' magnitudes, ``size``), is
    above the cut-off. Needs terms far from float32 overflow (_bin_tiles checks that)."""
    x0 = x_lo + 0.5 - mx  # the rectangle, relative to the mean
    x1 = x_hi + 0.5 - mx
    y0 = y_lo + 0.5 - my
    y1 = y_hi + 0.5 - my
    if x0 <= 0.0 and x1 >= 0.0 and y0 <= 0.0 and y1 >= 0.0:
        return False  # the mean is inside: q = 0 there
    # q is convex: outside the rectangle its minimum lies on an edge (at the edge's own
    # minimum, clipped to the edge); an edge point at or under the cut-off settles it
    v = min(max(kx * x0, y0), y1)
    qmin = ca * x0 * x0 + 2.0 * cb * x0 * v + cc * v * v
    if qmin <= _Q32_64:
        return False
    v = min(max(kx * x1, y0), y1)
    qmin = min(qmin, ca * x1 * x1 + 2.0 * cb * x1 * v + cc * v * v)
    if qmin <= _Q32_64:
        return False
    u = min(max(ky * y0, x0), x1)
    qmin = min(qmin, ca * u * u + 2.0 * cb * u * y0 + cc * y0 * y0)
    if qmin <= _Q32_64:
        return False
    u = min(max(ky * y1, x0), x1)
    qmin = min(qmin, ca * u * u + 2.0 * cb * u * y1 + cc * y1 * y1)
    ax = max(abs(x0), abs(x1))
    ay = max(abs(y0), abs(y1))
    return qmin - _q_rounding(ca, cb, cc, ax, ay) > _Q32_64


@numba.njit(inline="always", **_JIT)
def _row_span(cb, det, cq, icc, xtop, xmax, lo_off, hi_off, mx, x_lo, x_hi, ty0, y_lo, y_hi, spans, j):
    """spans[j] <- the rows (relative to the tile's first, ty0) of y_lo..y_hi where a pixel
    of columns x_lo..x_hi may pass the cut: those whose centre y + 0.5 lies within the
    ellipse q = qr's extent over the strip of those columns' centres, widened by a margin
    (an interval: the ellipse is convex). (0, -1) when none can.

    Relative to the mean, the ellipse's boundary is y = (-cb x +- sqrt(cq - det x^2)) / cc
    for x within +-xmax: the upper part concave with its top at x = xtop, the lower one
    convex with its bottom at -xtop (cq = cc * qr, icc = 1 / cc; lo_off, hi_off =
    my - 0.5 -+ the margin). The first row keeps the parity of y_lo: the backward sums
    rows in pairs from its first, so its pairs (and their float32 sums) stay those of the
    whole box."""
    x0 = x_lo + 0.5 - mx
    x1 = x_hi + 0.5 - mx
    if x1 < -xmax or x0 > xmax:  # the strip misses the ellipse
        spans[j, 0] = 0
        spans[j, 1] = -1
        return
    # the strip's top: the upper boundary at the strip's point nearest to xtop; its bottom
    # the lower boundary at the point nearest to -xtop
    xu = min(max(xtop, x0), x1)
    xl = min(max(-xtop, x0), x1)
    hi = (math.sqrt(max(cq - det * xu * xu, 0.0)) - cb * xu) * icc
    lo = (-math.sqrt(max(cq - det * xl * xl, 0.0)) - cb * xl) * icc
    v = max(np.int64(math.ceil(lo + lo_off)) - y_lo, 0)
    first = y_lo + v - (v & 1)
    last = min(np.int64(math.floor(hi + hi_off)), y_hi)
    if first > last:
        spans[j, 0] = 0
        spans[j, 1] = -1
    else:
        spans[j, 0] = first - ty0
        spans[j, 1] = last - ty0


@numba.njit(parallel=True, **_JIT)
def _bin_tiles(means, conics, boxes, box_starts, cull, tiles_x, tiles, spans, counts):
    """Gaussian i's tiles, row-major: tiles[box_starts[i]:][:counts[i]] (tile ids), all
    the tiles its box meets, or with ``cull`` those where it may keep a pixel of its box;
    spans[j] the rows of tile tiles[j] (0..TILE-1, first and last) that its box meets, or
    with ``cull`` those of them where it may keep a pixel of its box.

    Culling tests (_misses) each row of tiles from both ends inwards up to the first tile
    kept: the ellipse meets a convex set of each row, so the tiles between are kept
    (untested: keeping a pair is always safe). Rows are narrowed (_row_span) to where
    the ellipse, widened to cover the float32 rounding of q as _misses does, meets the
    columns of the box in the tile (leaving out a row only drops w = +0 terms)."""
    n = boxes.shape[0]
    for i in prange(n):
        x0 = boxes[i, 0]
        x1 = boxes[i, 1]
        y0 = boxes[i, 2]
        y1 = boxes[i, 3]
        counts[i] = 0
        if x0 > x1 or y0 > y1:
            continue  # (also: invalid conic or mean)
        ca = np.float64(conics[i, 0])
        cb = np.float64(conics[i, 1])
        cc = np.float64(conics[i, 2])
        mx = np.float64(means[i, 0])
        my = np.float64(means[i, 1])
        # a box one tile tall or wide is not tested: the ellipse spans the box, so it
        # crosses (nearly) all of its tiles. The others are tested where float32 q and
        # all its intermediates stay below 1e31 on the box (no overflow, where _misses'
        # rounding bound would fail)
        bx = max(abs(x0 + 0.5 - mx), abs(x1 + 0.5 - mx))
        by = max(abs(y0 + 0.5 - my), abs(y1 + 0.5 - my))
        test = cull and x0 // TILE < x1 // TILE and y0 // TILE < y1 // TILE
        test = test and max(ca, abs(cb), cc) * (1.0 + bx + by) ** 2 <= 1e30
        kx = -cb / cc if test else 0.0
        ky = -cb / ca if test else 0.0
        # row spans (tested boxes only): the ellipse q = qr, qr the cut-off widened by
        # the bound on the float32 rounding of q over the whole box (_q_rounding); its top is at
        # (xtop, ymax) and its bottom at (-xtop, -ymax), relative to the mean
        det = ca * cc - cb * cb
        qr = _Q32_64 + _q_rounding(ca, cb, cc, bx, by)
        ymax = math.sqrt(qr * ca / det) if test else 0.0
        xmax = math.sqrt(qr * cc / det) if test else 0.0
        xtop = -cb / ca * ymax
        margin = 1e-3 + 1e-6 * ymax  # float64 rounding of the roots, with room to spare
        cq = cc * qr
        icc = 1.0 / cc
        j = box_starts[i]
        for ty in range(y0 // TILE, y1 // TILE + 1):
            ylo = max(ty * TILE, y0)
            yhi = min(ty * TILE + TILE - 1, y1)
            a = x0 // TILE
            b = x1 // TILE
            if test:
                while a <= b and _misses(ca, cb, cc, kx, ky, mx, my, max(a * TILE, x0),
                                         min(a * TILE + TILE - 1, x1), ylo, yhi):
                    a += 1
                while b > a and _misses(ca, cb, cc, kx, ky, mx, my, max(b * TILE, x0),
                                        min(b * TILE + TILE - 1, x1), ylo, yhi):
                    b -= 1
            for tx in range(a, b + 1):
                tiles[j] = ty * tiles_x + tx
                if test:
                    _row_span(cb, det, cq, icc, xtop, xmax, my - 0.5 - margin, my - 0.5 + margin, mx,
                              max(tx * TILE, x0), min(tx * TILE + TILE - 1, x1), ty * TILE, ylo, yhi, spans, j)
                else:
                    spans[j, 0] = np.int8(ylo - ty * TILE)
                    spans[j, 1] = np.int8(yhi - ty * TILE)
                j += 1
        counts[i] = j - box_starts[i]


@numba.njit(**_JIT)
def _box_starts(boxes):
    """[N + 1] start of each Gaussian's run in a buffer of all the tiles of the boxes."""
    n = boxes.shape[0]
    starts = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        x0 = boxes[i, 0]
        x1 = boxes[i, 1]
        y0 = boxes[i, 2]
        y1 = boxes[i, 3]
        cnt = 0
        if x0 <= x1 and y0 <= y1:
            cnt = (x1 // TILE - x0 // TILE + 1) * (y1 // TILE - y0 // TILE + 1)
        starts[i + 1] = starts[i] + cnt
    return starts


@numba.njit(**_JIT)
def _bin(box_starts, tiles, spans, counts, ntiles):
    """Per-tile lists of the (tile, Gaussian) pairs of _bin_tiles: (offsets [T + 1], ids,
    slots, starts, rows). Tile t lists ids[offsets[t]:offsets[t + 1]], ascending; the
    backward's pair buffer is Gaussian-major (Gaussian i's kept tiles in row-major order
    are its pairs starts[i]..starts[i + 1] - 1), slots[k] is the pair of list entry k and
    rows[k] its rows in the tile (first, last; _bin_tiles' spans)."""
    n = counts.shape[0]
    starts = np.zeros(n + 1, dtype=np.int64)
    offsets = np.zeros(ntiles + 1, dtype=np.int64)
    for i in range(n):
        starts[i + 1] = starts[i] + counts[i]
        for j in range(box_starts[i], box_starts[i] + counts[i]):
            offsets[tiles[j] + 1] += 1
    for t in range(ntiles):
        offsets[t + 1] += offsets[t]
    ids = np.empty(offsets[ntiles], dtype=np.int32)
    slots = np.empty(offsets[ntiles], dtype=np.int64)
    rows = np.empty((offsets[ntiles], 2), dtype=np.int8)
    fill = offsets[:ntiles].copy()
    for i in range(n):
        p = starts[i]
        for j in range(box_starts[i], box_starts[i] + counts[i]):
            t = tiles[j]
            k = fill[t]
            ids[k] = i
            slots[k] = p
            rows[k, 0] = spans[j, 0]
            rows[k, 1] = spans[j, 1]
            fill[t] += 1
            p += 1
    return offsets, ids, slots, starts, rows


# --------------------------------------------------------------------------- forward
@numba.njit(parallel=True, **_JIT)
def _forward(means, conics, colors, boxes, offsets, ids, rows, tiles_x, out):
    """out[H, W, 3] = sum over each tile's Gaussians, in ascending id order (the
    decoder's picture: numpy_forward's, bit for bit)."""
    height = out.shape[0]
    width = out.shape[1]
    nt = offsets.shape[0] - 1
    for t in prange(nt):
        _forward_tile(means, conics, colors, boxes, offsets, ids, rows, tiles_x, t, height, width, out, False)


@numba.njit(parallel=True, **_JIT)
def _forward_fused(means, conics, colors, boxes, offsets, ids, rows, tiles_x, out):
    """_forward with exp's multiply-adds fused (training's picture, which the backward
    differentiates): the same pixels and order, the last bits of w differ."""
    height = out.shape[0]
    width = out.shape[1]
    nt = offsets.shape[0] - 1
    for t in prange(nt):
        _forward_tile(means, conics, colors, boxes, offsets, ids, rows, tiles_x, t, height, width, out, True)


@numba.njit(inline="always", **_JIT)
def _forward_tile(means, conics, colors, boxes, offsets, ids, rows, tiles_x, t, height, width, out, fused):
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
        # the pair's rows (of the box inside the tile, where the ellipse may keep a
        # pixel: _bin_tiles); ly >= 0 is visible to LLVM (no wraparound)
        ly0 = max(np.int64(rows[k, 0]), 0)
        ly1 = np.int64(rows[k, 1])
        for ly in range(ly0, ly1 + 1):
            # q = ca*dx*dx + 2*cb*dx*dy + cc*dy*dy, in the reference's float32 order
            dy = (np.float32(ty0 + ly) + _HALF32) - my
            qc = cc * dy * dy
            for lx in range(TILE):
                px = ftx0 + np.float32(lx)
                dx = (px + _HALF32) - mx
                q = (ca * dx * dx + cb2 * dx * dy) + qc
                w = _exp(_MHALF32 * q, fused)
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
def _backward_tiles(means, conics, colors, boxes, offsets, ids, slots, rows, tiles_x, grad_rows, sums):
    """sums[pair] <- the _NSUM sums of one Gaussian over one tile (every pair once);
    grad_rows: the incoming gradient [H, W * 3]."""
    nt = offsets.shape[0] - 1
    for t in prange(nt):
        if offsets[t] < offsets[t + 1]:
            _backward_tile(means, conics, colors, boxes, offsets, ids, slots, rows, tiles_x, t, grad_rows, sums,
                           False)


@numba.njit(parallel=True, **_JIT)
def _backward_tiles_colours(means, conics, colors, boxes, offsets, ids, slots, rows, tiles_x, grad_rows, sums):
    """_backward_tiles' colour sums (the same bits), the others zero: the colour solve's
    transpose, which needs no more (about a third less work a pixel)."""
    nt = offsets.shape[0] - 1
    for t in prange(nt):
        if offsets[t] < offsets[t + 1]:
            _backward_tile(means, conics, colors, boxes, offsets, ids, slots, rows, tiles_x, t, grad_rows, sums,
                           True)


@numba.njit(inline="always", **_JIT)
def _backward_tile(means, conics, colors, boxes, offsets, ids, slots, rows, tiles_x, t, grad_rows, sums,
                   colours_only):
    height = grad_rows.shape[0]
    width = grad_rows.shape[1] // 3
    ty = t // tiles_x
    tx = t - ty * tiles_x
    ty0 = ty * TILE
    tx0 = tx * TILE
    ty1 = min(ty0 + TILE, height) - 1
    tx1 = min(tx0 + TILE, width) - 1
    # the tile's incoming gradient, planar (zero off the image), plus a zero row for the
    # missing second row of a pass; each image row is read as one contiguous run
    gt = np.zeros((3, TILE + 1, TILE), dtype=np.float32)
    for y in range(ty0, ty1 + 1):
        a = grad_rows[y, 3 * tx0:3 * tx1 + 3]
        for x in range(tx1 - tx0 + 1):
            gt[0, y - ty0, x] = a[3 * x]
            gt[1, y - ty0, x] = a[3 * x + 1]
            gt[2, y - ty0, x] = a[3 * x + 2]
    # per pair scratch, one array (so LLVM sees that its rows cannot alias): rows 0-5
    # per-column sums over the rows (_NSUM order), 6-8 per column dx, ca dx dx, 2 cb dx
    s = np.empty((9, TILE), dtype=np.float32)
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
        bx0 = np.float32(boxes[i, 0])
        bx1 = np.float32(boxes[i, 1])
        # column terms of q, in the forward's float32 order ((ca dx) dx, (2 cb dx) dy);
        # columns outside the box get q = inf: masked exactly where the forward masks
        for lx in range(TILE):
            px = ftx0 + np.float32(lx)
            dx = (px + _HALF32) - mx
            s[6, lx] = dx
            inside = (px >= bx0) & (px <= bx1)
            s[7, lx] = ca * dx * dx if inside else np.float32(np.inf)
            s[8, lx] = cb2 * dx
            s[0, lx] = 0.0
            s[1, lx] = 0.0
            s[2, lx] = 0.0
            s[3, lx] = 0.0
            s[4, lx] = 0.0
            s[5, lx] = 0.0
        ly0 = max(np.int64(rows[k, 0]), 0)  # the forward's rows
        ly1 = np.int64(rows[k, 1])
        # two rows per pass (half the scratch loads and stores); a missing second row
        # gets q = inf (masked)
        for ly in range(ly0, ly1 + 1, 2):
            dy = (np.float32(ty0 + ly) + _HALF32) - my
            qc = cc * dy * dy
            ey = (np.float32(ty0 + ly + 1) + _HALF32) - my
            ec = cc * ey * ey if ly < ly1 else np.float32(np.inf)
            for lx in range(TILE):
                qa = s[7, lx]
                qb = s[8, lx]
                q = (qa + qb * dy) + qc
                w = _exp(_MHALF32 * q, True)
                w = w if q <= _Q32 else _ZERO32
                e = (qa + qb * ey) + ec
                v = _exp(_MHALF32 * e, True)
                v = v if e <= _Q32 else _ZERO32
                wr = w * gt[0, ly, lx]
                wg = w * gt[1, ly, lx]
                wb = w * gt[2, ly, lx]
                vr = v * gt[0, ly + 1, lx]
                vg = v * gt[1, ly + 1, lx]
                vb = v * gt[2, ly + 1, lx]
                s[0, lx] += wr + vr
                s[1, lx] += wg + vg
                s[2, lx] += wb + vb
                if colours_only:  # (a constant: LLVM keeps one branch)
                    continue
                # d = w * <color, g> = -2 dL/dq; its dx moments come from the column
                # sums (dx is constant down a column), its dy moments are summed here
                d = (r * wr + g * wg) + b * wb
                f = (r * vr + g * vg) + b * vb
                dyd = d * dy
                fye = f * ey
                s[3, lx] += d + f
                s[4, lx] += dyd + fye
                s[5, lx] += dyd * dy + fye * ey
        _pair_sums(s, sums, slots[k])


@numba.njit(parallel=True, **_JIT)
def _backward_fold(conics, boxes, starts, sums, g_means, g_conics, g_colors):
    """Fold each Gaussian's pair sums in ascending tile order into its gradients
    (g_* zero on entry)."""
    n = conics.shape[0]
    for i in prange(n):
        if boxes[i, 0] > boxes[i, 1] or boxes[i, 2] > boxes[i, 3]:
            continue  # no pixel (also: invalid conic or mean): zero gradients
        # a box whose every tile was culled folds no pair: sums +0.0, as the pairs would
        # have given (so g_conics are -0.0, as without culling)
        t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
        for p in range(starts[i], starts[i + 1]):
            t0 += sums[p, 0]
            t1 += sums[p, 1]
            t2 += sums[p, 2]
            t3 += sums[p, 3]
            t4 += sums[p, 4]
            t5 += sums[p, 5]
            t6 += sums[p, 6]
            t7 += sums[p, 7]
        ca = np.float64(conics[i, 0])
        cb = np.float64(conics[i, 1])
        cc = np.float64(conics[i, 2])
        # dL/dq = -d/2;  dq/dmean = -2 A (dx, dy);  dq/dca = dx^2, dq/dcb = 2 dx dy,
        # dq/dcc = dy^2
        g_means[i, 0] = ca * t3 + cb * t4
        g_means[i, 1] = cb * t3 + cc * t4
        g_conics[i, 0] = -0.5 * t7
        g_conics[i, 1] = -t6
        g_conics[i, 2] = -0.5 * t5
        g_colors[i, 0] = t0
        g_colors[i, 1] = t1
        g_colors[i, 2] = t2


# --------------------------------------------------------------------------- numpy entry points
def _dynamic(kernel, *args, chunk=_CHUNK):
    """Run a parallel kernel handing out ``chunk`` iterations at a time (load balance;
    results do not depend on the schedule). Set from Python: numba cannot cache a
    function that sets the chunk size itself."""
    old = numba.set_parallel_chunksize(chunk)
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


class Bins(NamedTuple):
    """Per-tile lists of (tile, Gaussian) pairs, shared by forward and backward (_bin)."""

    offsets: np.ndarray  # [T + 1] int64: tile t lists entries offsets[t]..offsets[t + 1] - 1
    ids: np.ndarray  # [P] int32: each entry's Gaussian, ascending within a tile
    slots: np.ndarray  # [P] int64: each entry's row of the backward's Gaussian-major pair buffer
    starts: np.ndarray  # [N + 1] int64: Gaussian i's pairs are starts[i]..starts[i + 1] - 1
    rows: np.ndarray  # [P, 2] int8: each entry's first and last row in its tile (0..TILE-1)


def bin_boxes(
    boxes: np.ndarray, height: int, width: int,
    means: np.ndarray | None = None, conics: np.ndarray | None = None,  # the boxes' own
) -> Bins:
    """Per-tile lists of the Gaussians whose box meets the tile, ascending, tiles in
    row-major order, with the rows each visits. Given the means and conics the boxes were
    made from, a Gaussian is left out of a tile where its ellipse keeps no pixel of its
    box, and visits only the rows where it may keep one (elsewhere it would add only +0);
    without them every box tile is listed with all its box rows (no culling: the same
    pictures and gradients, more work)."""
    box_starts = _box_starts(boxes)
    tiles_x = -(-width // TILE)
    tiles = np.empty(box_starts[-1], dtype=np.int32)
    spans = np.empty((box_starts[-1], 2), dtype=np.int8)
    counts = np.empty(boxes.shape[0], dtype=np.int64)
    cull = means is not None and conics is not None
    if boxes.shape[0]:
        if not cull:
            means = np.zeros((boxes.shape[0], 2), dtype=np.float32)
            conics = np.zeros((boxes.shape[0], 3), dtype=np.float32)
        _dynamic(_bin_tiles, means, conics, boxes, box_starts, cull, tiles_x, tiles, spans, counts,
                 chunk=_BIN_CHUNK)
    return Bins(*_bin(box_starts, tiles, spans, counts, tiles_x * -(-height // TILE)))


def forward_sum(
    means: np.ndarray,  # [N, 2] float32
    conics: np.ndarray,  # [N, 3] float32
    colors: np.ndarray,  # [N, 3] float32
    height: int,
    width: int,
    boxes: np.ndarray | None = None,  # [N, 4] from pixel_boxes, when already computed
    bins: Bins | None = None,  # bin_boxes(boxes, ..., means, conics), likewise
    out: np.ndarray | None = None,  # [H, W, 3] float32 C order to draw into (every pixel is written)
    fused: bool = False,  # training's draw (_forward_fused), which backward_sum differentiates
) -> np.ndarray:  # [H, W, 3] float32, not clamped
    """The additive sum over a height x width image (module docstring)."""
    if boxes is None:
        boxes = pixel_boxes(means, conics, height, width)
    if out is None:
        out = np.empty((height, width, 3), dtype=np.float32)
    assert out.shape == (height, width, 3) and out.dtype == np.float32 and out.flags.c_contiguous, out.shape
    if out.size:
        if bins is None:
            bins = bin_boxes(boxes, height, width, means, conics)
        _dynamic(_forward_fused if fused else _forward, means, conics, colors, boxes, bins.offsets, bins.ids,
                 bins.rows, -(-width // TILE), out)
    return out


def pair_sums_size(bins: Bins) -> int:
    """float32 entries the backward's pair sums take (``backward_sum``'s scratch)."""
    return int(bins.ids.shape[0]) * _NSUM


def backward_sum(
    means: np.ndarray, conics: np.ndarray, colors: np.ndarray, boxes: np.ndarray,
    grad_out: np.ndarray,  # [H, W, 3] float32
    bins: Bins | None = None,  # the forward's bin_boxes(boxes, ...)
    scratch: np.ndarray | None = None,  # [>= pair_sums_size(bins)] float32: room for the pair sums
    colours_only: bool = False,  # only the colours' gradients (the others come back zero)
) -> list[np.ndarray]:  # float64 gradients [N, 2], [N, 3], [N, 3]
    """Gradients of sum(grad_out * forward_sum(..., fused=True)) w.r.t. means, conics
    and colors. ``scratch``: a buffer the caller keeps from call to call for the pair
    sums (every pair is written before it is read); at 12 MP they take ~95 MB, which a
    fresh allocation maps and faults in again each call."""
    n = means.shape[0]
    height, width = grad_out.shape[0], grad_out.shape[1]
    grads = [np.zeros((n, k), dtype=np.float64) for k in (2, 3, 3)]
    if n and grad_out.size:
        if bins is None:
            bins = bin_boxes(boxes, height, width, means, conics)
        size = pair_sums_size(bins)
        if scratch is not None and scratch.size >= size:
            assert scratch.dtype == np.float32 and scratch.ndim == 1 and scratch.flags.c_contiguous
            sums = scratch[:size].reshape(-1, _NSUM)
        else:
            sums = np.empty((bins.ids.shape[0], _NSUM), dtype=np.float32)
        _dynamic(_backward_tiles_colours if colours_only else _backward_tiles, means, conics, colors, boxes,
                 bins.offsets, bins.ids, bins.slots, bins.rows, -(-width // TILE), grad_out.reshape(height, width * 3),
                 sums)
        _backward_fold(conics, boxes, bins.starts, sums, *grads)
    return grads


class Binned:
    """Gaussians boxed (pixel_boxes) and binned with culling (bin_boxes) once, for any
    number of forward draws and backward passes on that geometry: what a render and its
    backward share (the autograd nodes of numba_cpu and loss, the colour solve).
    ``fused``: draw training's picture (forward_sum's ``fused``), the one ``backward``
    differentiates; otherwise the decoder's."""

    def __init__(self, means: np.ndarray, conics: np.ndarray, height: int, width: int,  # float32 C order
                 fused: bool = False):
        self.means, self.conics = means, conics
        self.fused = fused
        self.height, self.width = int(height), int(width)
        self.boxes = pixel_boxes(means, conics, self.height, self.width)
        self.bins = bin_boxes(self.boxes, self.height, self.width, means, conics)

    def forward(self, colors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:  # [N, 3] -> [H, W, 3] float32
        return forward_sum(self.means, self.conics, colors, self.height, self.width, self.boxes, self.bins, out,
                           self.fused)

    @property
    def scratch_size(self) -> int:
        """float32 entries ``backward``'s scratch needs (pair_sums_size)."""
        return pair_sums_size(self.bins)

    def backward(self, colors: np.ndarray, grad_out: np.ndarray,  # [H, W, 3] ->
                 scratch: np.ndarray | None = None) -> list[np.ndarray]:
        """float64 gradients [N, 2], [N, 3], [N, 3] of sum(grad_out * forward(colors))
        (training's draw); ``scratch``: backward_sum's."""
        return backward_sum(self.means, self.conics, colors, self.boxes, grad_out, self.bins, scratch)

    def transpose(self, grad_out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:  # [H, W, 3] ->
        """float64 [N, 3]: the colour gradient of sum(grad_out * forward(colours)), the
        same for any colours (``backward``'s, bit for bit)."""
        zero = np.zeros((self.means.shape[0], 3), dtype=np.float32)
        return backward_sum(self.means, self.conics, zero, self.boxes, grad_out, self.bins, scratch, True)[2]


__all__ = ["Binned", "Bins", "LANES", "TILE", "backward_sum", "bin_boxes", "box_work", "forward_sum", "pair_sums_size",
           "pixel_boxes"]
