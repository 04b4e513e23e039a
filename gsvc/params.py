"""The eight coded parameters of a Gaussian and their dequantization (no torch)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Column order of a layer's [N, 8] parameters (FORMAT.md).
PARAMS = ("x", "y", "a", "b", "r", "red", "green", "blue")


def dequantize_array(q: np.ndarray, steps: tuple[float, ...]) -> np.ndarray:  # [N, 8] int -> [N, 8] float32
    """Parameter values q * step (computed in float64, stored as float32)."""
    import numpy as np  # here: `gsvc info` reads PARAMS without loading numpy

    return (np.asarray(q, dtype=np.float64) * np.asarray(steps, dtype=np.float64)).astype(np.float32)
