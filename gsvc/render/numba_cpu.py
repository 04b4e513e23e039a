"""Fast CPU backend: torch autograd glue around the numba kernels (numba_kernels.py).

Draws the same picture as :func:`gsvc.render.reference.rasterize_sum` (the equation:
geometry.py); outputs and gradients match the reference to float32 rounding, and are
bit-for-bit the same from run to run and for any thread count (numba_kernels.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .numba_kernels import LANES, TILE, Binned  # noqa: F401 (LANES, TILE: re-exported)


def _as_f32(t: Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


class _RasterizeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, colors, height, width):
        col = _as_f32(colors)
        binned = Binned(_as_f32(means), _as_f32(conics), height, width, fused=True)
        out = binned.forward(col)
        if any(ctx.needs_input_grad[:3]):
            ctx.arrays = (binned, col)  # the backward needs no re-binning
            ctx.meta = [(t.dtype, t.device) for t in (means, conics, colors)]
        return torch.from_numpy(out).to(means.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        binned, col = ctx.arrays
        ctx.arrays = None  # once differentiable: the bins need not outlive this call
        grads = binned.backward(col, _as_f32(grad_out))
        out = [
            torch.from_numpy(g).to(device=dev, dtype=dt) if need else None
            for g, (dt, dev), need in zip(grads, ctx.meta, ctx.needs_input_grad)
        ]
        return out[0], out[1], out[2], None, None


class FixedGeometry:
    """One set of Gaussians' positions and shapes, boxed and binned once, drawn many times
    with different colours (R c) and its transpose (R^T Y: the colour gradient of
    <picture, Y>, which needs no forward pass). The colour solve's linear operator: the
    same numbers as rasterize_sum (training's draw) and its backward, bit for bit,
    without re-binning or a forward per transpose."""

    def __init__(self, means: Tensor, conics: Tensor, height: int, width: int):  # [N, 2], [N, 3]
        self.binned = Binned(_as_f32(means), _as_f32(conics), height, width, fused=True)
        self.scratch = np.empty(self.binned.scratch_size, dtype=np.float32)  # the transposes' pair sums, reused
        self.device = means.device

    def draw(self, colors: Tensor) -> Tensor:  # [N, 3] -> [H, W, 3] float32
        return torch.from_numpy(self.binned.forward(_as_f32(colors))).to(self.device)

    def transpose(self, image: Tensor) -> Tensor:  # [H, W, 3] -> [N, 3] float64
        """d <draw(c), image> / d c (independent of c; drawn at zero colours, as autograd
        of a zero-colour draw would)."""
        return torch.from_numpy(self.binned.transpose(_as_f32(image), self.scratch)).to(self.device)


def rasterize_sum(
    means: Tensor,  # [N, 2] pixel coordinates (x, y)
    conics: Tensor,  # [N, 3] inverse covariance (ca, cb, cc)
    colors: Tensor,  # [N, 3]
    height: int,
    width: int,
) -> Tensor:  # [H, W, 3] float32, not clamped
    """Sum of the Gaussians over a height x width image (see the module docstring).

    Differentiable w.r.t. means, conics and colors (hand-written numba backward). It
    draws training's picture (numba_kernels: exp's multiply-adds fused), the one the
    backward differentiates; the decoder draws with ``render.render_array``;
    inputs of any float dtype are cast to float32, gradients come back in the inputs'
    dtypes. Runs on the CPU (other devices are copied there and back).
    """
    n = means.shape[0]
    assert means.shape == (n, 2), means.shape
    assert conics.shape == (n, 3), conics.shape
    assert colors.shape == (n, 3), colors.shape
    height, width = int(height), int(width)
    assert height >= 0 and width >= 0, (height, width)
    return _RasterizeSum.apply(means, conics, colors, height, width)


__all__ = ["FixedGeometry", "LANES", "TILE", "rasterize_sum"]
