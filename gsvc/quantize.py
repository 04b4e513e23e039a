"""Scalar quantization of Gaussian parameters and their mapping to symbol streams.

Parameters are quantized as integers q = round(v / step) with one step per parameter
(order of FORMAT.md: x, y, a, b, r, red, green, blue). How the integers of a layer
are ordered and turned into symbol streams is ``layer_codec``'s business.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .layer_codec import _from_intra_streams, _intra_streams, sort_intra
from .model import GaussianLayer
from .params import PARAMS, dequantize_array  # noqa: F401 (PARAMS re-exported)


@dataclass(frozen=True)
class QuantSettings:
    """Quantizer steps; they are written into the stream header. The defaults are the
    pictures'; video streams keep finer ones (``VIDEO_QUANT``)."""

    #: position step in pixels of the encoded image. 1/4 since the geometry is rounded
    #: for the picture (``geometry_rounding``): with the coarser size and shear steps
    #: below, +0.15 to +0.8 dB at the same bytes on five pictures at 384 px wide
    #: (``fast``) and on kodim03 / 08 at full size (``medium``); 1/3 lost at layer 3
    #: (docs/results.md, "Coarser geometry steps"). 1/8 before, 1/16 before coder 2
    position_step: float = 1.0 / 4
    #: step of the log-diagonal Cholesky entries a, b (relative size precision ~ step):
    #: 1/12 (1/16 and 1/8 gave less on kodim03; 1/32 before)
    log_scale_step: float = 1.0 / 12
    #: step of the Cholesky shear r = L21 / L22: 1/8 (1/6 no better; 1/16 before, 1/32
    #: before coder 2)
    shear_step: float = 1.0 / 8
    #: step of the additive RGB colours
    color_step: float = 1.0 / 128

    def steps(self) -> tuple[float, ...]:
        p, s, r, c = self.position_step, self.log_scale_step, self.shear_step, self.color_step
        # round-trip through float32: the header stores float32 and both sides must agree
        return tuple(float(np.float32(v)) for v in (p, p, s, s, r, c, c, c))


#: video streams' steps (``CodingStructure.quant``): a P-frame codes its Gaussians'
#: changes in these steps, and at the pictures' coarser ones Megamind's first 10 frames
#: came out 9-13 % smaller but 0.56-0.60 dB lower, about 0.2 dB below the finer steps'
#: rate-distortion curve (docs/results.md, "Coarser geometry steps")
VIDEO_QUANT = QuantSettings(position_step=1.0 / 8, log_scale_step=1.0 / 32, shear_step=1.0 / 16)


def _as_columns(layer: GaussianLayer) -> Tensor:  # [N, 8]
    return torch.cat(layer.tensors(), dim=1)


def _from_columns(cols: Tensor) -> GaussianLayer:  # [N, 8]
    return GaussianLayer(cols[:, 0:2], cols[:, 2:5], cols[:, 5:8])


def round_to_steps(t: Tensor, step: Tensor) -> Tensor:
    """Quantize-dequantize: the nearest multiple of ``step`` (broadcast over t's columns)."""
    return torch.round(t / step) * step


def fake_quantize(layer: GaussianLayer, steps: tuple[float, ...]) -> GaussianLayer:
    """Quantize-dequantize with a straight-through gradient (quantization-aware training)."""
    cols = _as_columns(layer)
    step = torch.tensor(steps, dtype=cols.dtype, device=cols.device)
    q = round_to_steps(cols, step)
    return _from_columns(cols + (q - cols).detach())


def quantize_ints(layer: GaussianLayer, steps: tuple[float, ...]) -> np.ndarray:  # [N, 8] int64
    """Integer parameters in the layer's own order."""
    cols = _as_columns(layer).detach().to("cpu", torch.float64).numpy()
    return np.rint(cols / np.asarray(steps, dtype=np.float64)).astype(np.int64)


def quantize(layer: GaussianLayer, steps: tuple[float, ...]) -> np.ndarray:
    """Integer parameters [N, 8] (int64), sorted by (q_y, q_x) as an intra layer is coded."""
    return sort_intra(quantize_ints(layer, steps))


def _deadzone_round(d, deadzone: float, lib):
    """Round to the nearest integer, except that |d| < 0.5 + deadzone goes to 0 (numpy or
    torch; 0 <= deadzone < 0.5). Larger |d| round down by ``deadzone`` (to the zero side)."""
    return lib.sign(d) * lib.floor(lib.abs(d) + (0.5 - deadzone))


def quantize_residual(layer: GaussianLayer, base: np.ndarray, steps: tuple[float, ...], deadzone: float) -> np.ndarray:
    """Integers [N, 8] for a predicted layer: base + deadzone-rounded (value / step - base).

    ``base`` [N, 8] are the reference's integers of the same Gaussians; differences
    smaller than 0.5 + ``deadzone`` steps are coded as "unchanged" (zero).
    """
    cols = _as_columns(layer).detach().to("cpu", torch.float64).numpy()
    d = cols / np.asarray(steps, dtype=np.float64) - base
    return base + _deadzone_round(d, deadzone, np).astype(np.int64)


def fake_quantize_predicted(
    layer: GaussianLayer, base: Tensor, steps: tuple[float, ...], deadzone: float
) -> GaussianLayer:
    """``fake_quantize`` for a P-frame layer: the first len(base) Gaussians are coded as
    deadzone-rounded differences to ``base`` ([K, 8] integers as floats), the rest as
    plain integers; straight-through gradient."""
    cols = _as_columns(layer)
    step = torch.tensor(steps, dtype=cols.dtype, device=cols.device)
    scaled = cols / step
    k = base.shape[0]
    kept = base + _deadzone_round(scaled[:k] - base, deadzone, torch)
    q = torch.cat([kept, torch.round(scaled[k:])], dim=0) * step
    return _from_columns(cols + (q - cols).detach())


def dequantize(q: np.ndarray, steps: tuple[float, ...]) -> GaussianLayer:
    return _from_columns(torch.from_numpy(dequantize_array(q, steps)))


#: symbol streams of a sorted [N, 8] integer array (dy, x, a, b, r, red, green, blue) and back
to_streams = _intra_streams
from_streams = _from_intra_streams
