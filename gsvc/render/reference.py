"""Plain PyTorch reference rasterizer: autograd, any device, bounded memory.

The image is cut into square tiles; each tile evaluates only the Gaussians whose
bounding box touches it, as a dense [pixels, gaussians] block. This is the ground
truth that every fast backend is tested against (outputs and gradients).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import Q_MAX, bbox_radius

TILE = 32


def rasterize_sum(
    means: Tensor,  # [N, 2] pixel coordinates (x, y)
    conics: Tensor,  # [N, 3] inverse covariance (ca, cb, cc)
    colors: Tensor,  # [N, 3]
    height: int,
    width: int,
    tile: int = TILE,
) -> Tensor:  # [H, W, 3], not clamped
    n = means.shape[0]
    assert means.shape == (n, 2), means.shape
    assert conics.shape == (n, 3), conics.shape
    assert colors.shape == (n, 3), colors.shape
    device, dtype = means.device, means.dtype
    with torch.no_grad():
        rad = bbox_radius(conics)
        lo = means - rad  # [N, 2]
        hi = means + rad
    rows = []
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        row = []
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            # pixel centres of this tile span [x0 + .5, x1 - .5] x [y0 + .5, y1 - .5]
            hit = (
                (hi[:, 0] >= x0 + 0.5)
                & (lo[:, 0] <= x1 - 0.5)
                & (hi[:, 1] >= y0 + 0.5)
                & (lo[:, 1] <= y1 - 0.5)
            )
            # an empty tile still goes through the (empty) product, so the result
            # always depends on the inputs and backward() works on any scene
            idx = hit.nonzero(as_tuple=True)[0]
            ys = torch.arange(y0, y1, device=device, dtype=dtype) + 0.5
            xs = torch.arange(x0, x1, device=device, dtype=dtype) + 0.5
            py, px = torch.meshgrid(ys, xs, indexing="ij")
            dx = px.reshape(-1, 1) - means[idx, 0].unsqueeze(0)  # [P, n]
            dy = py.reshape(-1, 1) - means[idx, 1].unsqueeze(0)
            c = conics[idx]
            q = c[:, 0] * dx * dx + 2.0 * c[:, 1] * dx * dy + c[:, 2] * dy * dy
            w = torch.where(q <= Q_MAX, torch.exp(-0.5 * q), torch.zeros_like(q))
            out = w @ colors[idx]  # [P, 3]
            row.append(out.reshape(y1 - y0, x1 - x0, 3))
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)
