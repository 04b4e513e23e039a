"""Render backends for the additive Gaussian splatting equation (see geometry.py).

A backend is a function ``rasterize_sum(means, conics, colors, height, width)``
returning the unclamped [H, W, 3] sum, differentiable w.r.t. its three tensor inputs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .geometry import EPS, Q_MAX, bbox_radius, conics_from_chol, covariance

Rasterizer = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]

BACKENDS = ("torch", "numba")


def get_backend(name: str) -> Rasterizer:
    """The rasterizer called ``name`` (one of BACKENDS)."""
    if name == "torch":
        from .reference import rasterize_sum

        return rasterize_sum
    if name == "numba":
        from .numba_cpu import rasterize_sum

        return rasterize_sum
    raise ValueError(f"unknown render backend {name!r} (choose from {', '.join(BACKENDS)})")


def default_backend(device: torch.device) -> str:
    """The fastest backend for ``device``: the numba kernel on CPU, torch on CUDA."""
    return "numba" if device.type == "cpu" else "torch"


def render(
    means: Tensor,  # [N, 2]
    chol: Tensor,  # [N, 3] log-Cholesky (a, b, r)
    colors: Tensor,  # [N, 3]
    height: int,
    width: int,
    backend: str = "torch",
    scale: float = 1.0,
) -> Tensor:  # [H, W, 3] unclamped
    """Render Gaussians given in encoded-resolution pixels at ``scale`` x that size."""
    conics = conics_from_chol(chol, scale)
    return get_backend(backend)(means * scale, conics, colors, height, width)


__all__ = [
    "BACKENDS",
    "EPS",
    "Q_MAX",
    "bbox_radius",
    "conics_from_chol",
    "covariance",
    "default_backend",
    "get_backend",
    "render",
]
