"""Content-adaptive initialization of a layer's Gaussians.

Positions are drawn from an importance map (image gradients for the base layer,
the remaining error for enhancement layers) mixed with a uniform floor, so the base
layer covers the whole picture and later layers go where detail is missing. Each
Gaussian's size follows the local sampling density (about one Gaussian per sigma^2),
and its colour is the target divided by the layer's coverage at its centre, the
one-step least-squares answer for the additive sum.

The base layer also starts with a **background Gaussian**: one Gaussian centred on the
picture, ``spread`` times its longer side wide, holding the picture's mean colour, so
the others start from (and draw) the picture minus its mean, signed, instead of each
building up the mean level where it sits. A sum of pixel-sized Gaussians draws a flat
area only as a ripple of overlapping bumps; one Gaussian much wider than the picture
draws it flat (at 4x the longer side its weight falls by at most 1.6 % at the
corners, which the fit takes up). It is an ordinary Gaussian of the stream: any
decoder draws it. Measured in docs/results.md, "A background Gaussian".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import GaussianLayer
from .render import render


def blur(x: Tensor, radius: int) -> Tensor:
    """Box blur of an [H, W] map (separable, edge-replicated)."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    y = F.pad(x[None, None], (radius, radius, radius, radius), mode="replicate")
    y = F.avg_pool2d(y, kernel_size=k, stride=1)
    return y[0, 0]


def gradient_map(target: Tensor) -> Tensor:  # [H, W, 3] -> [H, W]
    """Magnitude of the luminance gradient (central differences)."""
    lum = target @ torch.tensor([0.299, 0.587, 0.114], dtype=target.dtype, device=target.device)
    p = F.pad(lum[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 0.5
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 0.5
    return torch.sqrt(gx * gx + gy * gy)


def importance(detail: Tensor, uniform_share: float, smooth: int) -> Tensor:
    """Normalized sampling density [H, W]: uniform_share spread evenly, the rest by detail."""
    d = blur(detail.clamp_min(0), smooth)
    total = d.sum()
    n = d.numel()
    if total <= 0:
        return torch.full_like(d, 1.0 / n)
    return uniform_share / n + (1.0 - uniform_share) * d / total


#: side in pixels of the cells whose Morton order the Gaussians of a new layer follow
ORDER_CELL = 16


def _spread_bits(v: Tensor) -> Tensor:  # int64 < 2^16 -> its bits at the even positions
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    return (v | (v << 1)) & 0x55555555


def spatial_order(xs: Tensor, ys: Tensor) -> Tensor:  # [N] int64 pixel columns, rows -> [N] permutation
    """Gaussians in the Morton (Z) order of the ORDER_CELL cells holding them (stable):
    neighbours on the picture are neighbours in memory, so a tile's list of Gaussians
    reads a few runs of the parameter arrays instead of gathering from all of them. At
    12 MP (270 000 Gaussians, 13 MB of parameters) the kernels and the binning took
    ~25 % less time than in the sampling's random order; at 768x512 everything fits in
    cache and it changes little."""
    cx = (xs // ORDER_CELL).clamp(0, 0xFFFF)
    cy = (ys // ORDER_CELL).clamp(0, 0xFFFF)
    return torch.argsort(_spread_bits(cx) | (_spread_bits(cy) << 1), stable=True)


def sample_layer(
    density: Tensor,  # [H, W], sums to 1
    count: int,
    residual: Tensor,  # [H, W, 3] what this layer should add
    generator: torch.Generator,
    size_factor: float,
    backend: str,
) -> GaussianLayer:
    h, w = density.shape
    flat = density.reshape(-1).to(torch.float64)
    idx = torch.multinomial(flat, count, replacement=True, generator=generator)
    jitter = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    ys = torch.div(idx, w, rounding_mode="floor")
    xs = idx - ys * w
    means = torch.stack([xs + jitter[:, 0], ys + jitter[:, 1]], dim=1).to(torch.float32)
    # about one Gaussian per (spacing)^2 pixels: spacing = 1 / sqrt(count * density)
    local = flat[idx].to(torch.float32)
    spacing = 1.0 / torch.sqrt(count * local)
    sigma = (size_factor * spacing).clamp(0.6, max(2.0, min(h, w) / 3))
    log_sigma = torch.log(sigma)
    chol = torch.stack([log_sigma, log_sigma, torch.zeros_like(log_sigma)], dim=1)
    ones = torch.ones(count, 3)
    with torch.no_grad():
        coverage = render(means, chol, ones, h, w, backend=backend)[..., 0]
    cov_at = coverage[ys, xs].clamp_min(0.5)
    colors = residual[ys, xs] / cov_at[:, None]
    order = spatial_order(xs, ys)
    return GaussianLayer(means[order].contiguous(), chol[order].contiguous(),
                         colors[order].to(torch.float32).contiguous())


def background_gaussian(target: Tensor, spread: float, backend: str) -> tuple[GaussianLayer, Tensor]:
    """One Gaussian centred on ``target`` ([H, W, 3]), ``spread`` x its longer side in
    sigma, whose colour draws the picture's mean colour over it; and what it draws
    ([H, W, 3])."""
    h, w = target.shape[:2]
    means = torch.tensor([[w / 2, h / 2]], dtype=torch.float32)
    log_sigma = math.log(spread * max(h, w))
    chol = torch.tensor([[log_sigma, log_sigma, 0.0]], dtype=torch.float32)
    with torch.no_grad():
        footprint = render(means, chol, torch.ones(1, 3), h, w, backend=backend)[..., 0]  # [H, W]
    colour = (target.reshape(-1, 3).mean(0) / footprint.mean()).reshape(1, 3).to(torch.float32)
    return GaussianLayer(means, chol, colour), footprint[..., None] * colour


def init_base_layer(
    target: Tensor, count: int, generator: torch.Generator, backend: str, uniform_share: float = 0.5,
    background: float = 0.0,
) -> GaussianLayer:
    """Base layer: gradient-weighted positions over a uniform floor (no holes);
    ``background`` > 0 (and ``count`` >= 2): the first Gaussian is the background
    Gaussian of that spread (``background_gaussian``) and the others start from the
    picture minus what it draws."""
    h, w = target.shape[:2]
    smooth = max(1, round(math.sqrt(h * w / count) / 2))
    density = importance(gradient_map(target), uniform_share, smooth)
    if background <= 0 or count < 2:
        return sample_layer(density, count, target, generator, size_factor=0.8, backend=backend)
    back, drawn = background_gaussian(target, background, backend)
    rest = sample_layer(density, count - 1, target - drawn, generator, size_factor=0.8, backend=backend)
    return GaussianLayer(*(torch.cat([b, r]) for b, r in zip(back.tensors(), rest.tensors())))


def init_enhancement_layer(
    target: Tensor,  # [H, W, 3]
    current: Tensor,  # [H, W, 3] reconstruction of the layers below
    count: int,
    generator: torch.Generator,
    backend: str,
    uniform_share: float = 0.1,
) -> GaussianLayer:
    """Enhancement layer: positions where the layers below still miss the target."""
    h, w = target.shape[:2]
    residual = target - current
    error = (residual * residual).sum(-1)
    density = importance(error, uniform_share, smooth=1)
    return sample_layer(density, count, residual, generator, size_factor=0.7, backend=backend)
