"""Image quality measures on 8-bit RGB arrays."""
from __future__ import annotations

import math

import numpy as np


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two uint8 images, in units of full scale (255 = 1)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(np.mean(d * d))


def psnr_from_mse(value: float) -> float:
    return 10.0 * math.log10(1.0 / max(value, 1e-12))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of two uint8 images."""
    return psnr_from_mse(mse(a, b))


def hole_fraction(recon: np.ndarray, target: np.ndarray, block: int = 8, threshold: float = 0.15) -> float:
    """Share of block x block tiles whose mean absolute error exceeds ``threshold`` (of 255).

    A base layer with holes (areas no Gaussian covers) shows up as tiles that stay far
    from the target; a complete coarse picture has none.
    """
    assert recon.shape == target.shape, (recon.shape, target.shape)
    h, w = target.shape[:2]
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        return 0.0
    err = np.abs(recon.astype(np.float64) - target.astype(np.float64)).mean(axis=2) / 255.0
    tiles = err[: hb * block, : wb * block].reshape(hb, block, wb, block).mean(axis=(1, 3))
    return float(np.mean(tiles > threshold))
