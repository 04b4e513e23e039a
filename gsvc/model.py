"""Layered Gaussians: the parameters of one image, grouped in quality layers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .render import render


@dataclass
class GaussianLayer:
    """One layer's Gaussians in encoded-resolution pixels."""

    means: Tensor  # [N, 2] (x, y)
    chol: Tensor  # [N, 3] log-Cholesky (a, b, r), see render/geometry.py
    colors: Tensor  # [N, 3] RGB, additive (may leave [0, 1])

    #: columns of each tensor of ``tensors()``, in order (together FORMAT.md's 8 parameters)
    WIDTHS = (2, 3, 3)

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        assert self.means.shape == (n, 2), self.means.shape
        assert self.chol.shape == (n, 3), self.chol.shape
        assert self.colors.shape == (n, 3), self.colors.shape

    def __len__(self) -> int:
        return self.means.shape[0]

    def tensors(self) -> list[Tensor]:
        return [self.means, self.chol, self.colors]

    def detached(self) -> "GaussianLayer":
        return GaussianLayer(*(t.detach().clone() for t in self.tensors()))

    def select(self, index) -> "GaussianLayer":
        """The Gaussians picked by ``index`` (a slice, or a [N] bool mask as numpy or torch)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return GaussianLayer(*(t[index] for t in self.tensors()))

    def to(self, device: torch.device | str) -> "GaussianLayer":
        return GaussianLayer(*(t.to(device) for t in self.tensors()))


def concat(layers: list[GaussianLayer]) -> GaussianLayer:
    return GaussianLayer(*(torch.cat(ts, dim=0) for ts in zip(*(l.tensors() for l in layers))))


@dataclass
class LayeredImage:
    """All layers of one image; layer 1 alone is the complete coarse picture."""

    width: int
    height: int
    layers: list[GaussianLayer]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(l) for l in self.layers)

    def render(
        self, num_layers: int | None = None, backend: str = "torch", scale: float = 1.0
    ) -> Tensor:  # [H', W', 3] clamped to [0, 1]
        k = len(self.layers) if num_layers is None else num_layers
        assert 1 <= k <= len(self.layers), (k, len(self.layers))
        g = concat(self.layers[:k])
        h, w = round(self.height * scale), round(self.width * scale)
        out = render(g.means, g.chol, g.colors, h, w, backend=backend, scale=scale)
        return out.clamp(0.0, 1.0)
