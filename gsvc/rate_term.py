"""The rate of an intra layer as a differentiable training term (issue 11).

``loss = distortion + lambda * rate``: the rate of a layer is the code length of its
shape and colour streams (a, b, r, then the colours as ``layer_codec`` streams them:
green, red - green, blue - green under coder 2) under coder 2's own peaked model (a
mode and a geometric tail on each side), fitted to the layer's current quantized
values. Two forms:

* ``_Table``: the exact code length of each integer (``peaked_code_lengths``),
  interpolated linearly in between (a soft-rounding relaxation);
* ``_Tails`` (what training uses, ``TrainSettings.rate_tails``): the slopes of the two
  tails only (``peaked_tail_slopes``), so each quantizer step away from the mode costs
  what the model charges for it in its tail: a Laplace proxy without the jump at the
  mode.

The models are refitted every ``RateTerm.refit`` calls from the quantized values, with
no gradient through the fit, as the coder refits them when it writes the stream.
Positions are left out: sorted by row, their cost is that of the point set (about
log2 of the cells per Gaussian) and barely depends on where each one lies.

The weight follows the distortion: ``lambda = slope * ln(10) / 10 * MSE / pixels``
per bit is the exchange rate of a codec whose PSNR grows by ``slope`` dB per bit per
pixel at the current MSE (the Kodak curves: ~10 dB/bpp at 0.25 bpp, ~5 at 1 bpp), so
one setting serves every rate without knowing the target. Each layer trades against
the MSE of the reconstruction it completes (``LevelMSE``), and ``LayerPricing`` puts
it together for ``fit``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from bitstream.entropy import peaked_code_lengths, peaked_tail_slopes

from .layer_codec import colour_streams
from .model import GaussianLayer
from .quantize import quantize_ints
from .tail_bits import tail_bits


def _value_streams(cols: np.ndarray, coder: int) -> list[np.ndarray]:  # [N, 8] -> 6 x [N]
    """The priced streams of a layer (``layer_codec``'s: a, b, r, then its colours)."""
    return [cols[:, 2], cols[:, 3], cols[:, 4]] + colour_streams(cols, coder)


class _Tails:
    """A layer's code length away from each stream's mode, up to a constant: the tail
    slopes of coder 2's peaked model on each side (a Laplace proxy without the jump at
    the mode), all streams at once."""

    def __init__(self, streams: np.ndarray, device: torch.device):  # [N, S] integers
        fits = [peaked_tail_slopes(streams[:, j]) for j in range(streams.shape[1])]
        self.arrays = tuple(np.asarray(v, dtype=np.float32) for v in zip(*fits))  # mode, left, right: [S] each
        self.mode, self.left, self.right = (torch.from_numpy(v).to(device) for v in self.arrays)

    def __call__(self, u: Tensor) -> Tensor:  # [N, S] values in steps -> scalar bits (relative)
        d = u - self.mode
        return (d.clamp_min(0.0) @ self.right - d.clamp_max(0.0) @ self.left).sum()


class _TailBits(torch.autograd.Function):
    """``_Tails`` of one layer on the CPU as one node (``gsvc.tail_bits``), value and
    gradient, in place of the torch form's dozen small operations a layer (three layers
    of 400 / 160 / 160 Gaussians, 2400 iterations: 0.51 s against 1.31 s)."""

    @staticmethod
    def forward(ctx, chol, colors, columns, arrays):  # columns: RateTerm._columns, arrays: _Tails.arrays
        value, ctx.g_chol, ctx.g_colors = tail_bits(chol.detach().numpy(), colors.detach().numpy(), *columns,
                                                    *arrays)
        return torch.tensor(value, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        g = np.float32(grad)
        out = torch.from_numpy(ctx.g_chol * g), torch.from_numpy(ctx.g_colors * g)
        ctx.g_chol = ctx.g_colors = None
        return out + (None, None)


class _Table:
    """A layer's code length: per stream, the bits of the integers lo .. lo + n - 1,
    interpolated linearly in between."""

    def __init__(self, streams: np.ndarray, device: torch.device):  # [N, S] integers
        self.tables = []
        for j in range(streams.shape[1]):
            lo, bits = peaked_code_lengths(streams[:, j])
            self.tables.append((lo, torch.as_tensor(bits, dtype=torch.float32, device=device)))  # [n]

    def __call__(self, u: Tensor) -> Tensor:  # [N, S] values in steps -> scalar bits
        total = u.new_zeros(())
        for j, (lo, bits) in enumerate(self.tables):
            n = bits.shape[0]
            if n == 1:
                continue
            rel = u[:, j] - lo
            i0 = rel.detach().floor().clamp(0, n - 2).long()
            f = rel - i0  # outside the alphabet: the end segment's slope goes on
            low = bits[i0]
            total = total + (low + f * (bits[i0 + 1] - low)).clamp_min(0.0).sum()
        return total


class RateTerm:
    """Code length (bits) of layers' shape and colour streams, the models refitted every
    ``refit`` calls. ``tails``: the Laplace proxy (``_Tails``) instead of the exact
    code length (``_Table``)."""

    def __init__(self, steps: tuple[float, ...], coder: int, refit: int = 50, tails: bool = False):
        self.coder = coder
        self.steps = steps
        self.refit = refit
        self._kind = _Tails if tails else _Table
        # each priced stream is a parameter, or the difference of two (in steps): read
        # which from layer_codec's own transform of the identity
        transform = np.stack(_value_streams(np.eye(8, dtype=np.int64), coder), axis=1)  # [8, S]
        assert np.all(np.isin(transform, (-1, 0, 1))) and np.all((transform == 1).sum(0) == 1), transform
        self._plus = torch.tensor(np.argmax(transform == 1, axis=0))  # [S]
        self._minus = torch.tensor(np.argmax(transform == -1, axis=0))  # [S]
        self._has_minus = torch.tensor((transform == -1).any(axis=0), dtype=torch.float32)  # [S]
        self._inv_steps = torch.tensor(1.0 / np.asarray(steps), dtype=torch.float32)  # [8]
        # the same for ``tail_bits``: plus, minus (int64), has_minus (bool), inverse steps (float32)
        self._columns = (self._plus.numpy().astype(np.int64), self._minus.numpy().astype(np.int64),
                         self._has_minus.numpy() > 0, self._inv_steps.numpy())
        self._models: list | None = None
        self._calls = 0

    def _streams(self, layer: GaussianLayer) -> Tensor:  # [N, S] in quantizer steps
        cols = torch.cat(layer.tensors(), dim=1) * self._inv_steps.to(layer.means.device)  # [N, 8]
        # elementwise (a small matrix product costs more than this on a busy CPU)
        return cols[:, self._plus] - cols[:, self._minus] * self._has_minus.to(cols.device)

    def bits(self, layers: list[GaussianLayer], which: list[int] | None = None) -> list[Tensor]:
        """Bits of the layers ``which`` (default: all), one scalar each. Every call counts
        towards the refit of all layers' models, priced or not."""
        if self._models is None or len(self._models) != len(layers) or self._calls % self.refit == 0:
            self._models = []
            for layer in layers:
                q = quantize_ints(layer, self.steps)  # [N, 8], as the encoder quantizes
                self._models.append(self._kind(np.stack(_value_streams(q, self.coder), axis=1), layer.means.device))
        self._calls += 1
        which = range(len(layers)) if which is None else which
        return [self._bits(layers[l], self._models[l]) for l in which]

    def _bits(self, layer: GaussianLayer, model) -> Tensor:
        if isinstance(model, _Tails) and layer.means.device.type == "cpu":
            return _TailBits.apply(layer.chol, layer.colors, self._columns, model.arrays)
        return model(self._streams(layer))


def rate_weight(mse: float, pixels: int, slope_db_per_bpp: float) -> float:
    """MSE units per bit at an RD slope of ``slope_db_per_bpp`` and the current ``mse``."""
    return slope_db_per_bpp * math.log(10.0) / 10.0 * mse / pixels


class LevelMSE:
    """Running mean (over ``window`` iterations) of the MSE of layers 1..k, per k: the
    distortion the rate of layer k trades against (its own reconstruction)."""

    def __init__(self, window: int = 50):
        self.decay = 1.0 - 1.0 / window
        self.values: dict[int, float] = {}

    def _update(self, k: int, mse: Tensor) -> None:
        v = float(mse.detach())
        old = self.values.get(k)
        self.values[k] = v if old is None else self.decay * old + (1.0 - self.decay) * v

    def track(self, layers: int, full_mse: Tensor, part: tuple[int, Tensor] | None) -> None:
        self._update(layers, full_mse)
        if part is not None:
            self._update(*part)

    def __getitem__(self, k: int) -> float:
        """The running MSE of layers 1..k; of the nearest tracked k above it until seen."""
        if k in self.values:
            return self.values[k]
        above = [j for j in self.values if j > k]
        return self.values[min(above)] if above else max(self.values.values())


#: a multiplier of each layer's rate weight, given the layers (size targets: more where a
#: layer is over its budget, less where under)
RateGain = Callable[[list[GaussianLayer]], list[float]]


class LayerPricing:
    """The rate part of ``fit``'s loss: sum over layers l of gain_l * lambda_l * bits_l.

    ``lambda_l`` follows the running MSE of layers 1..l (``rate_weight``); a layer is
    priced once it has trained ``start`` iterations (a newborn layer's small colours
    would be priced to zero before they grow); ``gain`` (optional) rescales each layer's
    weight every ``gain_every`` iterations."""

    def __init__(self, term: RateTerm, slope: float, start: int, pixels: int, gain: RateGain | None = None,
                 gain_every: int = 100, layers: int | None = None):
        self.term, self.slope, self.start, self.pixels, self.gain = term, slope, start, pixels, gain
        self.gain_every = gain_every  # iterations between calls of ``gain`` (it encodes the layers)
        self.layers = layers  # price only the first this many layers (None: all)
        self.level_mse = LevelMSE()
        self.born: list[int] = []  # the iteration each layer joined the fit
        self.gains: list[float] = []
        self._priced = 0  # calls that priced something

    def priced(self, num_layers: int) -> int:
        """How many of ``num_layers`` layers (the first ones) the rate term prices."""
        return num_layers if self.layers is None else min(self.layers, num_layers)

    def add_layer(self, done: int) -> None:
        self.born.append(done)
        self.gains.append(1.0)

    def __call__(self, layers: list[GaussianLayer], done: int, full_mse: Tensor,
                 part: tuple[int, Tensor] | None) -> Tensor | float:
        self.level_mse.track(len(layers), full_mse, part)
        count = self.priced(len(layers))
        priced = [l for l in range(count) if done - self.born[l] >= self.start]
        if not priced:
            return 0.0
        if self.gain is not None and self._priced % self.gain_every == 0:
            self.gains = list(self.gain(layers))
        self._priced += 1
        bits = self.term.bits(layers, priced)
        return sum(self.gains[l] * rate_weight(self.level_mse[l + 1], self.pixels, self.slope) * b
                   for l, b in zip(priced, bits))
