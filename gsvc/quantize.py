"""Scalar quantization of Gaussian parameters and their mapping to symbol streams.

Parameters are quantized as integers q = round(v / step) with one step per parameter
(order of FORMAT.md: x, y, a, b, r, red, green, blue). Within a layer the Gaussians
are sorted by (q_y, q_x); y is then coded as differences from the previous Gaussian.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .model import GaussianLayer

PARAMS = ("x", "y", "a", "b", "r", "red", "green", "blue")


@dataclass(frozen=True)
class QuantSettings:
    """Quantizer steps; they are written into the stream header."""

    #: position step in pixels of the encoded image
    position_step: float = 1.0 / 16
    #: step of the log-diagonal Cholesky entries a, b (relative size precision ~ step)
    log_scale_step: float = 1.0 / 32
    #: step of the Cholesky shear r = L21 / L22
    shear_step: float = 1.0 / 32
    #: step of the additive RGB colours
    color_step: float = 1.0 / 128

    def steps(self) -> tuple[float, ...]:
        p, s, r, c = self.position_step, self.log_scale_step, self.shear_step, self.color_step
        # round-trip through float32: the header stores float32 and both sides must agree
        return tuple(float(np.float32(v)) for v in (p, p, s, s, r, c, c, c))


def _as_columns(layer: GaussianLayer) -> Tensor:  # [N, 8]
    return torch.cat(layer.tensors(), dim=1)


def _from_columns(cols: Tensor) -> GaussianLayer:  # [N, 8]
    return GaussianLayer(cols[:, 0:2], cols[:, 2:5], cols[:, 5:8])


def fake_quantize(layer: GaussianLayer, steps: tuple[float, ...]) -> GaussianLayer:
    """Quantize-dequantize with a straight-through gradient (quantization-aware training)."""
    cols = _as_columns(layer)
    step = torch.tensor(steps, dtype=cols.dtype, device=cols.device)
    q = torch.round(cols / step) * step
    return _from_columns(cols + (q - cols).detach())


def quantize(layer: GaussianLayer, steps: tuple[float, ...]) -> np.ndarray:
    """Integer parameters [N, 8] (int64), sorted by (q_y, q_x)."""
    cols = _as_columns(layer).detach().to("cpu", torch.float64).numpy()
    q = np.rint(cols / np.asarray(steps, dtype=np.float64)).astype(np.int64)
    order = np.lexsort((q[:, 0], q[:, 1]))  # primary key y, then x
    return q[order]


def dequantize(q: np.ndarray, steps: tuple[float, ...]) -> GaussianLayer:
    cols = torch.from_numpy(q.astype(np.float64) * np.asarray(steps, dtype=np.float64))
    return _from_columns(cols.to(torch.float32))


def to_streams(q: np.ndarray) -> list[np.ndarray]:
    """Symbol streams of a sorted [N, 8] integer array: dy, x, a, b, r, red, green, blue."""
    dy = np.diff(q[:, 1], prepend=0)
    return [dy, q[:, 0]] + [q[:, j] for j in range(2, 8)]


def from_streams(streams: list[np.ndarray]) -> np.ndarray:
    dy, x, *rest = streams
    return np.stack([x, np.cumsum(dy)] + rest, axis=1)
