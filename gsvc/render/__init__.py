"""Render backends for the additive Gaussian splatting equation (see geometry.py).

A backend is a function ``rasterize_sum(means, conics, colors, height, width)``
returning the unclamped [H, W, 3] sum, differentiable w.r.t. its three tensor inputs.
``render_array`` draws numpy arrays with the numba kernels without importing torch
(the decoder's path). Importing this package imports neither torch nor numba.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from .geometry import (
    EPS,
    Q_MAX,
    Scale,
    bbox_radius,
    conics_from_chol,
    covariance,
    scale_xy,
)

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
    scale: Scale = 1.0,
) -> Tensor:  # [H, W, 3] unclamped
    """Render Gaussians given in encoded-resolution pixels at ``scale`` x that size
    (a number, or (sx, sy)); shrinking axes are area-resampled from the encoded size (geometry.py)."""
    rasterize = get_backend(backend)

    def draw(h: int, w: int, s: Scale) -> Tensor:
        sx, sy = scale_xy(s)
        m = means if (sx, sy) == (1.0, 1.0) else means * means.new_tensor([sx, sy])
        return rasterize(m, conics_from_chol(chol, s), colors, h, w)

    return _box_filtered(draw, height, width, scale)


def render_array(
    means: np.ndarray,  # [N, 2]
    chol: np.ndarray,  # [N, 3] log-Cholesky (a, b, r)
    colors: np.ndarray,  # [N, 3]
    height: int,
    width: int,
    scale: Scale = 1.0,
    max_work: int | None = None,
) -> np.ndarray:  # [H, W, 3] float32 unclamped
    """``render`` with the numba backend on numpy arrays (float32 throughout).

    ``max_work``: refuse (RenderTooLarge) a scene whose Gaussians would evaluate more
    pixel-Gaussian pairs than this; the boxes are measured before any pixel is drawn.
    """
    from .numba_kernels import box_work, forward_sum, pixel_boxes

    f32 = np.float32
    chol = np.asarray(chol, dtype=f32)
    col = np.ascontiguousarray(colors, dtype=f32)
    def draw(h: int, w: int, s: Scale) -> np.ndarray:
        m = np.ascontiguousarray(np.asarray(means, dtype=f32) * np.asarray(scale_xy(s), dtype=f32))
        c = np.ascontiguousarray(conics_from_chol(chol, s), dtype=f32)
        boxes = pixel_boxes(m, c, h, w)
        if max_work is not None:
            work = box_work(boxes)
            if work > max_work:
                raise RenderTooLarge(work, max_work)
        return forward_sum(m, c, col, h, w, boxes)

    return _box_filtered(draw, height, width, scale)


def _box_filtered(draw: Callable, height: int, width: int, scale: Scale):
    """``draw(height, width, scale)``; where an axis shrinks (s < 1) it is drawn at the
    encoded size instead (the picture the encoder fitted, clamped as its pixels are) and
    area-resampled to the output: the box filter of the output pixel (geometry.py)."""
    sx, sy = scale_xy(scale)
    if sx >= 1.0 and sy >= 1.0:
        return draw(height, width, scale)
    from .resample import area_shrink

    fine_w = round(width / sx) if sx < 1.0 else width
    fine_h = round(height / sy) if sy < 1.0 else height
    fine = draw(fine_h, fine_w, (max(sx, 1.0), max(sy, 1.0)))
    return area_shrink(fine.clip(0.0, 1.0), height, width)


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
    "Scale",
    "bbox_radius",
    "conics_from_chol",
    "covariance",
    "default_backend",
    "get_backend",
    "render",
    "scale_xy",
]
