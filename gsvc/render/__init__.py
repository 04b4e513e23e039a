"""Render backends for the additive Gaussian splatting equation (see geometry.py).

A backend is a function ``rasterize_sum(means, conics, colors, height, width)``
returning the unclamped [H, W, 3] sum, differentiable w.r.t. its three tensor inputs.
``render_array`` draws numpy arrays with the numba kernels without importing torch
(the decoder's path). Importing this package imports neither torch nor numba.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from .geometry import EPS, Q_MAX, bbox_radius, conics_from_chol, covariance

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Rasterizer = Callable[["Tensor", "Tensor", "Tensor", int, int], "Tensor"]

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


def default_backend(device: "torch.device") -> str:
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


def render_array(
    means: np.ndarray,  # [N, 2]
    chol: np.ndarray,  # [N, 3] log-Cholesky (a, b, r)
    colors: np.ndarray,  # [N, 3]
    height: int,
    width: int,
    scale: float = 1.0,
    max_work: int | None = None,
) -> np.ndarray:  # [H, W, 3] float32 unclamped
    """``render`` with the numba backend on numpy arrays (float32 throughout).

    ``max_work``: refuse (RenderTooLarge) a scene whose Gaussians would evaluate more
    pixel-Gaussian pairs than this; the boxes are measured before any pixel is drawn.
    """
    from .numba_kernels import box_work, forward_sum, pixel_boxes

    f32 = np.float32
    m = np.ascontiguousarray(means, dtype=f32) * f32(scale)
    c = np.ascontiguousarray(conics_from_chol(np.asarray(chol, dtype=f32), scale), dtype=f32)
    col = np.ascontiguousarray(colors, dtype=f32)
    boxes = pixel_boxes(m, c, height, width)
    if max_work is not None:
        work = box_work(boxes)
        if work > max_work:
            raise RenderTooLarge(work, max_work)
    return forward_sum(m, c, col, height, width, boxes)


class RenderTooLarge(ValueError):
    """A scene whose rendering would exceed a work bound (pixel-Gaussian pairs)."""

    def __init__(self, work: int, limit: int):
        super().__init__(f"rendering needs {work:,} pixel-Gaussian evaluations, above the limit of {limit:,}")
        self.work, self.limit = work, limit


__all__ = [
    "RenderTooLarge",
    "render_array",
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
