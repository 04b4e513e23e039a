"""Rate targets per layer (JPEG 2000's quality layers): ``--bpp 0.25,0.5,1.0``.

A target is the stream's size after each layer, cumulative (header included), as
bits per pixel or bytes. The encoder meets it in three steps:

1. **Over-provision.** Each layer starts with more Gaussians than its budget buys at
   a prior cost per Gaussian (``RateSettings.prior_bits``, ``overshoot``), and the
   picture is fitted as usual.
2. **Prune to the budget.** Gaussians are ranked by what removing one costs the full
   reconstruction (``removal_cost``: the change of the squared error, first order in
   the residual plus the Gaussian's own energy). Each layer keeps the most important
   ones whose coded bytes fit its budget: the real encoder measures the bytes
   (bisection on the count), never a formula.
3. **Fine-tune and trim.** The pruned layers train on for a short quantization-aware
   phase, then a last trim makes every cumulative size fit its target.

Sizes only shrink in step 3, so a cumulative size lands at most its target and, since
the trim removes the least important Gaussians one bisection step at a time, within a
few per cent below it (``benchmarks/rd.py --bpp`` reports the achieved figures).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bitstream.layout import Header, LayerChunk

from .errors import GsvcError
from .layer_codec import encode_intra
from .model import GaussianLayer, LayeredImage, concat
from .quantize import quantize_ints
from .render import render

#: bytes a chunk's framing adds to its payload (length, type, CRC) and a layer chunk's prefix
CHUNK_FRAMING = 12
LAYER_PREFIX = LayerChunk.PREFIX
#: the signature and version before the header chunk
SIGNATURE_BYTES = 10


@dataclass(frozen=True)
class RateSettings:
    """How an encode meets per-layer size targets."""

    #: prior cost of one Gaussian (bits) used to size the layers before fitting; coder 2
    #: with the default steps spends 45-56 on Kodak
    prior_bits: float = 48.0
    #: Gaussians fitted per Gaussian the budget is expected to buy (the surplus is pruned)
    overshoot: float = 1.25
    #: share of the preset's iterations spent fine-tuning after the pruning
    finetune_share: float = 0.15
    #: prune to this fraction of each budget before the fine-tune (it may grow a little)
    prune_margin: float = 0.98


def byte_targets(width: int, height: int, bpp: tuple[float, ...] | None = None,
                 nbytes: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """Cumulative byte targets after each layer, from bits per pixel or bytes."""
    if (bpp is None) == (nbytes is None):
        raise ValueError("give exactly one of bpp and nbytes")
    targets = tuple(int(b * width * height / 8) for b in bpp) if bpp is not None else tuple(int(b) for b in nbytes)
    return targets


def header_bytes(width: int, height: int, layers: int, steps: tuple[float, ...], coder: int) -> int:
    """Bytes of the signature and header chunk of an image stream."""
    payload = Header(width, height, (1,) * layers, steps, coder=coder).pack()
    return SIGNATURE_BYTES + CHUNK_FRAMING + len(payload)


def layer_budgets(targets: tuple[int, ...], head: int) -> tuple[int, ...]:
    """Payload-and-framing bytes each layer may take so the cumulative sizes meet ``targets``."""
    budgets = [targets[0] - head] + [b - a for a, b in zip(targets, targets[1:])]
    least = CHUNK_FRAMING + LAYER_PREFIX + 64  # a layer of a few Gaussians
    if budgets[0] < least:
        raise GsvcError(f"a target of {targets[0]} bytes for layer 1 leaves no room: the stream's header "
                        f"alone takes {head} bytes; ask for at least {head + least}")
    for l, b in enumerate(budgets[1:], start=2):
        if b < least:
            raise GsvcError(f"layer {l}'s target leaves it {b} bytes; give it at least {least} more than layer {l - 1}")
    return tuple(budgets)


def initial_counts(budgets: tuple[int, ...], settings: RateSettings) -> tuple[int, ...]:
    """Gaussians to fit per layer: the budget at the prior cost, times the overshoot."""
    return tuple(max(4, round(8 * b / settings.prior_bits * settings.overshoot)) for b in budgets)


def removal_cost(model: LayeredImage, target: torch.Tensor, backend: str) -> list[np.ndarray]:
    """Per layer, the first-order growth of the full reconstruction's squared error if
    each Gaussian were removed: 2 e . c_i G_i + |c_i|^2 sum G_i^2, with e the residual
    (target - render). The first term is minus c_i . dSSE/dc_i (one backward pass); the
    second is the Gaussian's energy, |c|^2 pi sqrt(det Sigma) = |c|^2 pi exp(a + b)."""
    layers = [l.detached() for l in model.layers]
    colours = [l.colors.requires_grad_(True) for l in layers]
    g = concat(layers)
    out = render(g.means, g.chol, g.colors, model.height, model.width, backend=backend)
    sse = ((out - target) ** 2).sum()
    grads = torch.autograd.grad(sse, colours)
    costs = []
    for layer, grad in zip(layers, grads):
        with torch.no_grad():
            energy = (layer.colors**2).sum(1) * math.pi * torch.exp(layer.chol[:, 0] + layer.chol[:, 1])
            costs.append((-(layer.colors * grad).sum(1) + energy).cpu().numpy().astype(np.float64))
    return costs


def layer_bytes(layer: GaussianLayer, steps: tuple[float, ...], coder: int) -> int:
    """Bytes of a layer chunk (framing included), as the encoder writes it."""
    payload, _ = encode_intra(quantize_ints(layer, steps), coder=coder)
    return CHUNK_FRAMING + LAYER_PREFIX + len(payload)


def fit_to_budget(layer: GaussianLayer, cost: np.ndarray, budget: int, steps: tuple[float, ...],
                  coder: int) -> GaussianLayer:
    """The most important Gaussians of ``layer`` whose chunk fits in ``budget`` bytes
    (bisection on the count; the real encoder measures every candidate)."""
    order = np.argsort(-cost, kind="stable")  # most important first

    def keep(n: int) -> GaussianLayer:
        return layer.select(torch.from_numpy(np.sort(order[:n])))

    if layer_bytes(layer, steps, coder) <= budget:
        return layer
    lo, hi = 1, len(layer)  # keep(lo) fits (checked below), keep(hi) does not
    if layer_bytes(keep(lo), steps, coder) > budget:
        raise GsvcError(f"a layer budget of {budget} bytes cannot hold a single Gaussian")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if layer_bytes(keep(mid), steps, coder) <= budget:
            lo = mid
        else:
            hi = mid
    return keep(lo)


def prune_to_budgets(model: LayeredImage, target: torch.Tensor, budgets: tuple[int, ...],
                     steps: tuple[float, ...], coder: int, backend: str) -> LayeredImage:
    """``model`` with each layer cut to its byte budget, least important Gaussians first."""
    costs = removal_cost(model, target, backend)
    layers = [fit_to_budget(l, c, b, steps, coder) for l, c, b in zip(model.layers, costs, budgets)]
    return LayeredImage(model.width, model.height, layers)
