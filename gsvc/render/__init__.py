"""Render backends for the additive Gaussian splatting equation (see geometry.py).

A backend is a function ``rasterize_sum(means, conics, colors, height, width)``
returning the unclamped [H, W, 3] sum, differentiable w.r.t. its three tensor inputs.
``render_array`` draws numpy arrays without importing torch (the decoder's path): with
numpy alone (numpy_forward.py) while the work is small, with the numba kernels beyond;
both draw the same float32 picture bit for bit. Importing this package imports neither
torch nor numba.
"""
from __future__ import annotations

import sys
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


#: Most pixel-Gaussian pairs (box work) that render_array draws with numpy in one
#: process, all its pictures together; beyond, numba's kernels draw. numba costs ~0.7 s
#: on 2 cores to import and load its cached kernels, then draws several times faster
#: than numpy (numpy_forward.py); measured in fresh processes on 2 cores, the two break
#: even at ~4.5e7 pairs. A 768x512 picture of 9000 Gaussians is 2.1-2.4e7 pairs. Both
#: draw the same picture bit for bit, so the choice never changes an output.
NUMPY_MAX_WORK = 40_000_000
_numpy_work = 0  # pairs drawn with numpy so far in this process


def _numba_loaded() -> bool:
    return "gsvc.render.numba_kernels" in sys.modules


def _use_numpy(work: int, colors: np.ndarray) -> bool:
    """Draw this picture with numpy? Only while numba is not loaded yet, the process has
    drawn little, and the colors are finite (numpy_forward's condition)."""
    global _numpy_work
    if _numba_loaded() or _numpy_work + work > NUMPY_MAX_WORK:
        return False
    if not np.isfinite(colors).all():
        return False
    _numpy_work += work
    return True


def render_array(
    means: np.ndarray,  # [N, 2]
    chol: np.ndarray,  # [N, 3] log-Cholesky (a, b, r)
    colors: np.ndarray,  # [N, 3]
    height: int,
    width: int,
    scale: Scale = 1.0,
    max_work: int | None = None,
    engine: str | None = None,
) -> np.ndarray:  # [H, W, 3] float32 unclamped
    """``render`` on numpy arrays, float32 throughout, without torch.

    ``max_work``: refuse (RenderTooLarge) a scene whose Gaussians would evaluate more
    pixel-Gaussian pairs than this; the boxes are measured before any pixel is drawn.
    ``engine``: "numpy" or "numba" forces one (tests); by default numpy draws while the
    work is small (NUMPY_MAX_WORK), numba beyond. The picture is the same either way.
    """
    from .numpy_forward import box_work, pixel_boxes

    f32 = np.float32
    chol = np.asarray(chol, dtype=f32)
    col = np.ascontiguousarray(colors, dtype=f32)

    def draw(h: int, w: int, s: Scale) -> np.ndarray:
        m = np.ascontiguousarray(np.asarray(means, dtype=f32) * np.asarray(scale_xy(s), dtype=f32))
        c = np.ascontiguousarray(conics_from_chol(chol, s), dtype=f32)
        boxes = pixel_boxes(m, c, h, w)  # the same boxes as numba's
        work = box_work(boxes)
        if max_work is not None and work > max_work:
            raise RenderTooLarge(work, max_work)
        if engine == "numpy" or (engine is None and _use_numpy(work, col)):
            from .numpy_forward import forward_sum
        elif engine in (None, "numba"):
            from .numba_kernels import forward_sum
        else:
            raise ValueError(f"unknown engine {engine!r}")
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
