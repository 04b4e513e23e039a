"""Shared geometry of the additive Gaussian renderer.

Every backend draws the same picture; the equation is fixed by the format
(bitstream/FORMAT.md, "Render equation") and lives here once. At scale
S = diag(sx, sy) of the encoded size (sx = sy = s for --scale):

    L_i     = [[exp(a_i), 0], [r_i * exp(b_i), exp(b_i)]]    (Cholesky factor)
    Sigma_i = S (L_i L_i^T + EPS * I) S
    A_i     = Sigma_i^-1 = [[ca, cb], [cb, cc]]              ("conic")
    q_i(p)  = ca*dx^2 + 2*cb*dx*dy + cc*dy^2,  (dx, dy) = p - S mu_i
    w_i(p)  = exp(-q_i(p) / 2)  if q_i(p) <= Q_MAX  else 0
    I(p)    = clamp(sum_i w_i(p) * c_i, 0, 1)

At scale 1 this is the picture the encoder fitted. Scaled, each Gaussian is the fitted
one stretched with the picture, footprint included, so it keeps its share of the
picture's energy at every size (an enlargement is a smooth upscale). An axis that
shrinks (s < 1) is drawn at the encoded size instead, clamped, and area-resampled to
the output (render/resample.py): the box filter of the output pixel, which point
samples of Gaussians narrower than an output pixel would alias. A reduced decode is
thus the fitted picture, shrunk.

Pixel (row y, column x) has its centre at p = (x + 0.5, y + 0.5); means are in
pixels of the encoded resolution. The functions below take numpy arrays (the decoder,
which never imports torch) or torch tensors, and do the same float operations on both.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

#: numpy arrays (the decoder) or torch tensors (training): the same operations
Array = Union[np.ndarray, "Tensor"]

#: Isotropic footprint (pixels^2 of the output grid) added to every covariance, so that
#: a Gaussian narrower than a pixel still covers a pixel centre (as in 3DGS / gsplat).
EPS = 0.3
#: Cut-off of the Mahalanobis distance: a Gaussian contributes only where its weight
#: exp(-q/2) is at least 1/255.
Q_MAX = 2.0 * math.log(255.0)


def _lib(x: Array):
    """numpy for an ndarray, torch for a tensor."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


Scale = Union[float, tuple[float, float]]


def scale_xy(scale: Scale) -> tuple[float, float]:
    """(sx, sy) of a uniform scale or of a pair."""
    if isinstance(scale, tuple):
        return float(scale[0]), float(scale[1])
    return float(scale), float(scale)


def covariance(chol: Array, scale: Scale = 1.0) -> Array:
    """Covariance entries (s11, s12, s22) at ``scale`` from log-Cholesky parameters:
    S (L L^T + EPS I) S.

    chol: [N, 3] holding (a, b, r): L = [[e^a, 0], [r e^b, e^b]].
    returns [N, 3].
    """
    assert chol.ndim == 2 and chol.shape[1] == 3, chol.shape
    sx, sy = scale_xy(scale)
    lib = _lib(chol)
    l1 = lib.exp(chol[:, 0])
    l3 = lib.exp(chol[:, 1])
    l2 = chol[:, 2] * l3
    s11 = l1 * l1 + EPS
    s12 = l1 * l2
    s22 = l2 * l2 + l3 * l3 + EPS
    if (sx, sy) != (1.0, 1.0):
        s11, s12, s22 = s11 * (sx * sx), s12 * (sx * sy), s22 * (sy * sy)
    return lib.stack([s11, s12, s22], -1)


def conics_from_chol(chol: Array, scale: Scale = 1.0) -> Array:
    """Inverse covariance (ca, cb, cc) of each Gaussian: [N, 3] -> [N, 3]."""
    cov = covariance(chol, scale)
    s11, s12, s22 = cov[:, 0], cov[:, 1], cov[:, 2]
    det = s11 * s22 - s12 * s12
    return _lib(chol).stack([s22 / det, -s12 / det, s11 / det], -1)


def bbox_radius(conics: Array) -> Array:
    """Half-extent in x and y of the region where q <= Q_MAX: [N, 3] -> [N, 2].

    For the ellipse q(d) = Q_MAX the extreme |dx| is sqrt(Q_MAX * Sigma_11) and the
    extreme |dy| is sqrt(Q_MAX * Sigma_22), with Sigma = A^-1.
    """
    ca, cb, cc = conics[:, 0], conics[:, 1], conics[:, 2]
    det = ca * cc - cb * cb
    sxx = cc / det
    syy = ca / det
    lib = _lib(conics)
    return lib.stack([lib.sqrt(Q_MAX * sxx), lib.sqrt(Q_MAX * syy)], -1)
