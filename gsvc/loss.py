"""Training loss: mean squared error of the clamped render, fused on the CPU.

``clamped_mse(pred, target) == mean((clamp(pred, 0, 1) - target) ** 2)``, with the
gradient torch's clamp gives (zero where pred leaves [0, 1]). On the CPU it is one
numba pass forward and one backward instead of eight tensor operations over the image,
and the sum is taken in float64 in a fixed order (deterministic).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor


@numba.njit(parallel=True, cache=True)
def _sse_rows(pred, target):  # [R, C] float32 each -> [R] float64 partial sums
    rows, cols = pred.shape
    out = np.zeros(rows, dtype=np.float64)
    for r in prange(rows):
        acc = 0.0
        for c in range(cols):
            v = min(max(pred[r, c], np.float32(0.0)), np.float32(1.0)) - target[r, c]
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
