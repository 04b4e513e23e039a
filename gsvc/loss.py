"""Training loss: mean squared error of the clamped render, fused on the CPU.

``clamped_mse(pred, target) == mean((clamp(pred, 0, 1) - target) ** 2)``, with the
gradient torch's clamp gives (zero where pred leaves [0, 1]). On the CPU it is one
numba pass forward and one backward instead of eight tensor operations over the image,
and the sum is taken in float64 in a fixed order (deterministic).

``split_mse`` gives the joint loss's terms (the MSE of all layers and of layers 1..k,
and the anti-needle term ``aspect_excess``) from the Gaussians themselves; with the
numba backend one autograd node does the two renders, both losses, the anti-needle term
and the backward down to the Cholesky factors (``split_mse_reference`` is the same as
plain tensor operations, the tests' oracle).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

from .render.geometry import EPS, conics_from_chol


#: float64 partial sums a row of the squared errors: lane j sums the columns c = j mod
#: _LANES of the row's whole blocks of _LANES, the lanes are then added in order, then
#: the columns past the last whole block (one serial float64 sum would bound the pass by
#: the latency of its additions: 1.0 against 0.3 ms a 768x512 split pass)
_LANES = 16


@numba.njit(inline="always")
def _clamped_error(p, t):  # float32 each -> float64 (clamp(p, 0, 1) - t)
    c = np.float32(0.0) if p < np.float32(0.0) else (np.float32(1.0) if p > np.float32(1.0) else p)
    return np.float64(c - t)


@numba.njit(parallel=True, cache=True)
def _sse_rows(pred, target):  # [R, C] float32 each -> [R] float64 partial sums
    rows, cols = pred.shape
    whole = cols - cols % _LANES
    out = np.zeros(rows, dtype=np.float64)
    for r in prange(rows):
        lanes = np.zeros(_LANES, dtype=np.float64)
        c0 = 0
        while c0 < whole:  # (a stepped range loop here runs ~15x slower: not vectorized)
            for j in range(_LANES):
                v = _clamped_error(pred[r, c0 + j], target[r, c0 + j])
                lanes[j] += v * v
            c0 += _LANES
        acc = 0.0
        for j in range(_LANES):
            acc += lanes[j]
        for c in range(whole, cols):
            v = _clamped_error(pred[r, c], target[r, c])
            acc += v * v
        out[r] = acc
    return out


@numba.njit(parallel=True, cache=True)
def _grad(pred, target, scale, out):  # scale = upstream * 2 / n
    rows, cols = pred.shape
    for r in prange(rows):
        for c in range(cols):
            p = pred[r, c]
            if p < np.float32(0.0) or p > np.float32(1.0):
                out[r, c] = np.float32(0.0)
            else:
                out[r, c] = scale * (p - target[r, c])


def _rows(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().reshape(x.shape[0], -1).numpy()


class _ClampedMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(pred, target)
        sse = _sse_rows(_rows(pred), _rows(target)).sum()
        return torch.tensor(sse / pred.numel(), dtype=pred.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pred, target = ctx.saved_tensors
        out = torch.empty_like(pred, memory_format=torch.contiguous_format)
        scale = np.float32(2.0 * float(grad) / pred.numel())
        _grad(_rows(pred), _rows(target), scale, out.reshape(pred.shape[0], -1).numpy())
        return out, None


def clamped_mse(pred: Tensor, target: Tensor) -> Tensor:  # [H, W, 3] each -> scalar
    assert pred.shape == target.shape, (pred.shape, target.shape)
    if pred.device.type == "cpu" and pred.dtype == torch.float32 and target.dtype == torch.float32:
        return _ClampedMSE.apply(pred, target)
    return torch.mean((pred.clamp(0.0, 1.0) - target) ** 2)


# --------------------------------------------------------------------------- the joint loss's terms
@numba.njit(cache=True)
def _chol_grad(chol, g_conics, extra, scale, out):
    """out <- float32 of the gradient w.r.t. the conics (ca, cb, cc), chained back to the
    log-Cholesky (a, b, r) of ``render.geometry.conics_from_chol`` at scale 1 in float64,
    plus ``scale`` x ``extra`` (another term's gradient w.r.t. (a, b, r); None: none).
    chol [N, 3] float32, g_conics [N, 3] float64, extra [N, 3] float64 -> out [N, 3]
    float32. One serial pass (a few thousand Gaussians: less than a parallel launch)."""
    for i in range(chol.shape[0]):
        l1 = np.exp(np.float64(chol[i, 0]))
        l3 = np.exp(np.float64(chol[i, 1]))
        l2 = np.float64(chol[i, 2]) * l3
        s11 = l1 * l1 + EPS
        s12 = l1 * l2
        s22 = l2 * l2 + l3 * l3 + EPS
        inv = 1.0 / (s11 * s22 - s12 * s12)
        inv2 = inv * inv
        ga = g_conics[i, 0]
        gb = g_conics[i, 1]
        gc = g_conics[i, 2]
        # conic = (s22, -s12, s11) / det, det = s11 s22 - s12^2
        g11 = -ga * s22 * s22 * inv2 + gb * s12 * s22 * inv2 + gc * (inv - s11 * s22 * inv2)
        g22 = ga * (inv - s11 * s22 * inv2) + gb * s12 * s11 * inv2 - gc * s11 * s11 * inv2
        g12 = 2.0 * ga * s12 * s22 * inv2 - gb * (inv + 2.0 * s12 * s12 * inv2) + 2.0 * gc * s11 * s12 * inv2
        # s11 = l1^2 + EPS, s12 = l1 l2, s22 = l2^2 + l3^2 + EPS; l1 = e^a, l3 = e^b, l2 = r l3
        da = 2.0 * g11 * l1 * l1 + g12 * l1 * l2
        db = g12 * l1 * l2 + g22 * 2.0 * (l2 * l2 + l3 * l3)
        dr = g12 * l1 * l3 + g22 * 2.0 * l2 * l3
        if extra is not None:
            da += scale * extra[i, 0]
            db += scale * extra[i, 1]
            dr += scale * extra[i, 2]
        out[i, 0] = np.float32(da)
        out[i, 1] = np.float32(db)
        out[i, 2] = np.float32(dr)


def _image_rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


@numba.njit(parallel=True, cache=True)
def _split_sse_rows(low, high, target):  # [R, C] float32 each -> [R, 2] float64
    """high <- low + high (the full picture, in place); per row, the squared errors of
    the clamped full and low pictures (``_sse_rows`` of each, in its order)."""
    rows, cols = low.shape
    whole = cols - cols % _LANES
    out = np.zeros((rows, 2), dtype=np.float64)
    for r in prange(rows):
        lanes_full = np.zeros(_LANES, dtype=np.float64)
        lanes_low = np.zeros(_LANES, dtype=np.float64)
        c0 = 0
        while c0 < whole:  # (as in _sse_rows)
            for j in range(_LANES):
                lo = low[r, c0 + j]
                full = lo + high[r, c0 + j]
                high[r, c0 + j] = full
                v = _clamped_error(full, target[r, c0 + j])
                lanes_full[j] += v * v
                u = _clamped_error(lo, target[r, c0 + j])
                lanes_low[j] += u * u
            c0 += _LANES
        acc_full = 0.0
        acc_low = 0.0
        for j in range(_LANES):
            acc_full += lanes_full[j]
            acc_low += lanes_low[j]
        for c in range(whole, cols):
            lo = low[r, c]
            full = lo + high[r, c]
            high[r, c] = full
            v = _clamped_error(full, target[r, c])
            acc_full += v * v
            u = _clamped_error(lo, target[r, c])
            acc_low += u * u
        out[r, 0] = acc_full
        out[r, 1] = acc_low
    return out


@numba.njit(parallel=True, cache=True)
def _split_grad(low, full, target, scale_full, scale_low):
    """The clamped MSEs' gradients (``_grad``), in place: full <- the full picture's term's,
    low <- both terms' for the low picture (it is part of the full one)."""
    rows, cols = low.shape
    for r in prange(rows):
        for c in range(cols):
            p = full[r, c]
            gf = np.float32(0.0) if p < np.float32(0.0) or p > np.float32(1.0) else scale_full * (p - target[r, c])
            q = low[r, c]
            gl = np.float32(0.0) if q < np.float32(0.0) or q > np.float32(1.0) else scale_low * (q - target[r, c])
            full[r, c] = gf
            low[r, c] = gl + gf


class Pictures:
    """Picture buffers a training loop reuses from one iteration to the next: the fused
    loss draws its two pictures into them and turns them into its gradients in place. A
    fresh 12 MP picture is 144 MB of new pages for the kernel to fault in and zero, each
    time (measured: 0.34 s a gradient pass at 4000x3000, about a third of an iteration).
    Buffers of another size are not reused: ``take`` then allocates. It also keeps the
    backward's pair sums (``scratch``: ~95 MB at 12 MP)."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._scratch = np.empty(0, dtype=np.float32)

    def scratch(self, size: int) -> np.ndarray:  # [>= size] float32, contents undefined
        """A float32 buffer of at least ``size`` entries, kept (grown by a quarter when short)."""
        if self._scratch.size < size:
            self._scratch = np.empty(size + size // 4, dtype=np.float32)
        return self._scratch

    def take(self, height: int, width: int) -> np.ndarray:  # [H, W, 3] float32, contents undefined
        for i, a in enumerate(self._free):
            if a.shape == (height, width, 3):
                return self._free.pop(i)
        return np.empty((height, width, 3), dtype=np.float32)

    def give(self, *pictures: np.ndarray) -> None:
        """Hand pictures back (the last two given are kept)."""
        self._free = (self._free + list(pictures))[-2:]


# --------------------------------------------------------------------------- the anti-needle term
@numba.njit(parallel=True, cache=True)
def _aspect_terms(chol, s_max, squares, grads):
    """Per Gaussian, in float64: e = relu(log(s / s_max)), s = exp(a - b) + (r^2 + 1)
    exp(b - a); squares[i] <- e^2, grads[i] <- d(e^2)/d(a, b, r) (zero where e = 0).
    chol [N, 3] float32 -> squares [N], grads [N, 3] float64."""
    for i in prange(chol.shape[0]):
        a = np.float64(chol[i, 0])
        b = np.float64(chol[i, 1])
        r = np.float64(chol[i, 2])
        u = np.exp(a - b)
        t = np.exp(b - a)
        v = (r * r + 1.0) * t
        s = u + v
        e = np.log(s / s_max)
        if e > 0.0:
            k = 2.0 * e / s
            squares[i] = e * e
            grads[i, 0] = k * (u - v)
            grads[i, 1] = k * (v - u)
            grads[i, 2] = k * 2.0 * r * t
        else:
            squares[i] = 0.0
            grads[i, 0] = 0.0
            grads[i, 1] = 0.0
            grads[i, 2] = 0.0


def aspect_excess(chol: Tensor, s_max: float) -> Tensor:  # [N, 3] log-Cholesky -> scalar
    """mean over the Gaussians of relu(log(s / s_max))^2, s = exp(a - b) + (r^2 + 1)
    exp(b - a) (aspect + 1 / aspect of each covariance): the anti-needle term, as tensor
    operations (``split_mse``'s fused node takes it in float64 with ``_aspect_terms``)."""
    a, b, r = chol[:, 0], chol[:, 1], chol[:, 2]
    s = torch.exp(a - b) + (r * r + 1.0) * torch.exp(b - a)
    excess = torch.relu(torch.log(s / s_max))
    return (excess * excess).mean()


class _SplitMSE(torch.autograd.Function):
    """``split_mse`` on the numba kernels: one autograd node for what would otherwise be
    two renders, their conics, a sum, two losses and the anti-needle term (~50 small
    tensor operations and their backward each iteration)."""

    @staticmethod
    def forward(ctx, means, chol, colors, split, target, pictures, s_max):
        from .render.numba_kernels import Binned

        h, w = target.shape[:2]
        m = means.detach().contiguous().numpy()
        ch = chol.detach().contiguous().numpy()
        conics = np.ascontiguousarray(conics_from_chol(ch), dtype=np.float32)
        col = colors.detach().contiguous().numpy()
        tgt = target.detach().contiguous().numpy()
        parts, images = [], []
        for sl in (slice(0, split), slice(split, None)):
            binned = Binned(m[sl], conics[sl], h, w, fused=True)
            images.append(binned.forward(col[sl], None if pictures is None else pictures.take(h, w)))
            parts.append((binned, col[sl]))
        low, full = images  # full: low + high, summed in place by _split_sse_rows
        n = full.size
        sse = _split_sse_rows(_image_rows(low), _image_rows(full), _image_rows(tgt))
        excess, aspect_grads = 0.0, None
        if s_max > 0:
            squares = np.empty(ch.shape[0], dtype=np.float64)
            aspect_grads = np.empty(ch.shape, dtype=np.float64)
            _aspect_terms(ch, float(s_max), squares, aspect_grads)
            excess = squares.sum() / ch.shape[0]
        ctx.saved = (parts, ch, low, full, tgt, pictures, aspect_grads)
        return torch.tensor([sse[:, 0].sum() / n, sse[:, 1].sum() / n, excess], dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        parts, ch, low, full, tgt, pictures, aspect_grads = ctx.saved
        ctx.saved = None  # the graph (and ctx) lives on until the next iteration's loss replaces it
        n = full.size
        # the pictures become their gradients in place (no new 144 MB pictures at 12 MP)
        _split_grad(_image_rows(low), _image_rows(full), _image_rows(tgt), np.float32(2.0 * float(grad[0]) / n),
                    np.float32(2.0 * float(grad[1]) / n))
        g_low, g_full = low, full
        scratch = None if pictures is None else pictures.scratch(max(b.scratch_size for b, _ in parts))
        grads = [parts[0][0].backward(parts[0][1], g_low, scratch), parts[1][0].backward(parts[1][1], g_full, scratch)]
        if pictures is not None:
            pictures.give(g_low, g_full)
        g_means, g_conics, g_colors = (np.concatenate([a, b]) for a, b in zip(*grads))
        g_chol = np.empty(ch.shape, dtype=np.float32)
        _chol_grad(ch, g_conics, aspect_grads, float(grad[2]) / ch.shape[0], g_chol)
        return (torch.from_numpy(g_means.astype(np.float32)), torch.from_numpy(g_chol),
                torch.from_numpy(g_colors.astype(np.float32)), None, None, None, None)


def split_mse_reference(means: Tensor, chol: Tensor, colors: Tensor, split: int, target: Tensor,
                        backend: str = "torch", aspect_bound: float = 0.0) -> Tensor:  # -> [3]
    """``split_mse`` as plain tensor operations on any render backend (the oracle)."""
    from .render import render

    h, w = target.shape[:2]
    low = render(means[:split], chol[:split], colors[:split], h, w, backend=backend)
    full = low + render(means[split:], chol[split:], colors[split:], h, w, backend=backend)
    excess = aspect_excess(chol, aspect_bound) if aspect_bound > 0 else torch.zeros((), dtype=full.dtype)
    return torch.stack([clamped_mse(full, target), clamped_mse(low, target), excess.to(full.device)])


def split_mse(
    means: Tensor,  # [N, 2]
    chol: Tensor,  # [N, 3]
    colors: Tensor,  # [N, 3]
    split: int,
    target: Tensor,  # [H, W, 3]
    backend: str = "torch",
    pictures: Pictures | None = None,
    aspect_bound: float = 0.0,
) -> Tensor:  # [3]
    """The terms of the joint loss at scale 1: MSE of all N Gaussians' clamped picture,
    of the first ``split`` Gaussians' (layers 1..k), against ``target``, and the
    anti-needle term ``aspect_excess(chol, aspect_bound)`` (0 when the bound is 0).
    With the numba backend on float32 CPU tensors, one fused node (``_SplitMSE``: the
    same renders; conic gradients chained to the Cholesky factors in float64, the
    anti-needle term in float64), drawing into ``pictures``' buffers when given (a
    training loop's, reused every iteration)."""
    fused = backend == "numba" and all(t.device.type == "cpu" and t.dtype == torch.float32
                                       for t in (means, chol, colors, target))
    if fused and 0 < split < means.shape[0]:
        return _SplitMSE.apply(means, chol, colors, split, target, pictures, aspect_bound)
    return split_mse_reference(means, chol, colors, split, target, backend, aspect_bound)
