"""Encoding of layered images: fit, quantize and entropy-code into a .gsv stream.

``encode_image(rgb, settings) -> EncodeResult``; sizes and bpp always come from the
bytes written. Video encoding (``video_encoder``) builds on the same pieces.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from bitstream import Header, LayerChunk
from bitstream.layout import write_stream

from .colour_rounding import round_colours
from .device import resolve_device
from .errors import GsvcError
from .layer_codec import DEFAULT_CODER, encode_intra
from .model import LayeredImage
from .quantize import QuantSettings, dequantize, quantize_ints
from .rate_control import (BudgetGains, RateSettings, header_bytes, initial_counts, keep_within, layer_budgets,
                           trim_to_budgets)
from .render import default_backend
from .presets import DEFAULT_PRESET, PRESETS, train_settings  # noqa: F401 (re-exported)
from .train import Progress, TrainSettings, fit

#: Gaussians per layer for a 768x512 image (the P-GSVC Kodak setting); scaled by area.
REFERENCE_COUNTS = (5000, 2000, 2000)
REFERENCE_AREA = 768 * 512



def default_counts(width: int, height: int, layers: int = 3) -> tuple[int, ...]:
    """Gaussians per layer scaled with image area: 5000,2000,2000 at 768x512.

    For other layer counts the base keeps 5/9 of the total and the rest is split evenly.
    """
    total = sum(REFERENCE_COUNTS) * width * height / REFERENCE_AREA
    if layers == 3:
        shares = [c / sum(REFERENCE_COUNTS) for c in REFERENCE_COUNTS]
    elif layers == 1:
        shares = [1.0]
    else:
        shares = [5 / 9] + [4 / 9 / (layers - 1)] * (layers - 1)
    rest = [max(4, round(total * s)) for s in shares[1:]]
    return (max(8, round(total) - sum(rest)),) + tuple(rest)


@dataclass
class EncodeSettings:
    """Everything ``encode_image`` needs beyond the picture."""

    #: Gaussians per layer, kept as given; None: ``default_counts`` for ``layers`` layers,
    #: a ceiling (the colour rounding drops Gaussians whose bits are worth more than what
    #: they draw)
    gaussians: tuple[int, ...] | None = None
    #: layers when ``gaussians`` is None
    layers: int = 3
    train: TrainSettings = field(default_factory=TrainSettings)
    #: a picture's quantizer steps (a video's are ``CodingStructure.quant``)
    quant: QuantSettings = field(default_factory=QuantSettings)
    #: "auto", "cpu" or "cuda"
    device: str = "auto"
    #: render backend; None picks the fastest for the device
    backend: str | None = None
    #: entropy coder id written into the header (FORMAT.md section 4); 1 only to make
    #: streams for readers that predate coder 2
    coder: int = DEFAULT_CODER
    #: cumulative stream bytes after each layer (header included), or None; when given,
    #: the encoder chooses the Gaussian counts to meet them (rate_control) and
    #: ``gaussians`` must be None
    targets: tuple[int, ...] | None = None
    rate: RateSettings = field(default_factory=RateSettings)

    def counts_for(self, width: int, height: int) -> tuple[int, ...]:
        counts = tuple(self.gaussians) if self.gaussians else default_counts(width, height, self.layers)
        if not counts or min(counts) < 1:
            raise GsvcError("every layer needs at least one Gaussian")
        if len(counts) > 255:
            raise GsvcError("at most 255 layers")
        return counts

    def device_and_backend(self) -> tuple[torch.device, str]:
        device = resolve_device(self.device)
        return device, self.backend or default_backend(device)


@dataclass
class EncodeResult:
    data: bytes  # the complete .gsv stream
    model: LayeredImage  # the trained model: geometry unquantized, colours on their steps
    sizes: list[int]  # [header bytes, layer 1 bytes, ...]


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:  # [H, W, 3] float32
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (rgb.shape, rgb.dtype)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).to(device)


def fit_image(rgb: np.ndarray, settings: EncodeSettings, progress: Progress | None = None) -> LayeredImage:
    """Fit layered Gaussians to ``rgb`` ([H, W, 3] uint8): geometry unquantized, colours on their steps."""
    if settings.targets is not None:
        return fit_to_targets(rgb, settings, progress)
    h, w = rgb.shape[:2]
    counts = settings.counts_for(w, h)
    device, backend = settings.device_and_backend()
    train, rate = settings.train, settings.rate
    if rate.price_counts and train.resolution_scales is None:
        train = _priced(train, rate, None)  # every layer pays for its bits
    torch.manual_seed(train.seed)
    target = to_tensor(rgb, device)
    model = fit(target, counts, train, settings.quant.steps(), backend, progress, coder=settings.coder)
    # counts the user gave are kept; the default ones are a ceiling (Gaussians whose bits
    # are worth more than what they draw go)
    return rounded(model, target, train, settings.quant.steps(), settings.coder, prune=settings.gaussians is None)


def _priced(train: TrainSettings, rate: RateSettings, layers: int | None) -> TrainSettings:
    """``train`` with the rate term at ``rate.slope`` on its first ``layers`` layers
    (None: every layer), unless it sets a rate term of its own or the slope is 0."""
    if train.rate_slope == 0 and rate.slope > 0:
        return replace(train, rate_slope=rate.slope, rate_layers=layers)
    return train


def rounded(model: LayeredImage, target: torch.Tensor, train: TrainSettings, steps: tuple[float, ...], coder: int,
            budgets: tuple[int, ...] | None = None, prune: bool = True) -> LayeredImage:
    """``model`` with its colours on their steps, chosen jointly for distortion and rate
    (``colour_rounding``; within ``budgets``, each layer's chunk bytes, when given;
    ``prune``: Gaussians may go, as ``ColourRounding.prune`` says). Resolution layers
    keep the nearest steps: their objective is not the full-size one."""
    if train.resolution_scales is not None:
        return model
    settings = train.colour_rounding if prune else replace(train.colour_rounding, prune=False)
    layers = round_colours(model.layers, target, steps, train.intermediate_weight, coder, settings, budgets)
    return LayeredImage(model.width, model.height, layers)


def fit_to_targets(rgb: np.ndarray, settings: EncodeSettings, progress: Progress | None = None) -> LayeredImage:
    """Fit layered Gaussians whose coded layers meet ``settings.targets`` (cumulative
    bytes): over-provision, resize early to the budgets (each a few per cent over, for
    the rounding), price every layer in the loss (``rate_term``, weights held to the
    budgets by ``BudgetGains``; all but the last without ``RateSettings.price_last``),
    trim at the end (rate_control), round the colours for distortion and rate within
    the budgets (``colour_rounding``)."""
    if settings.gaussians is not None:
        raise GsvcError("size targets choose the Gaussian counts: give targets or counts, not both")
    h, w = rgb.shape[:2]
    steps, coder, rate = settings.quant.steps(), settings.coder, settings.rate
    budgets = layer_budgets(settings.targets, header_bytes(w, h, len(settings.targets), steps, coder))
    device, backend = settings.device_and_backend()
    train = settings.train
    rounding = train.colour_rounding.passes > 0 and train.resolution_scales is None
    # every layer priced (``RateSettings.price_last``, when the colour rounding's margin
    # is there to keep the last one filled), or all but the last
    train = _priced(train, rate, None if rate.price_last and rounding else len(budgets) - 1)
    resize_at = tuple(round(train.iterations * share) for share in rate.resize_shares)
    # the fit's budgets: the colour rounding at the end saves a few per cent
    aims = budgets
    if rounding:
        n_priced = (len(budgets) if train.rate_layers is None else train.rate_layers) if train.rate_slope > 0 else 0
        # the priced layers below the last at the first margin; the last (priced or not)
        # and unpriced ones at the second
        first_margin = min(n_priced, len(budgets) - 1)
        aims = tuple(int(b * rate.rounding_margins[0 if l < first_margin else 1]) for l, b in enumerate(budgets))
    # the first counts from the budgets themselves (from the aims, kodim03 came out 0.14-0.16 dB
    # lower at every layer: a different start)
    counts = initial_counts(budgets, rate, w * h)
    cut = tuple(int(b * rate.resize_margin) for b in aims)
    gains = BudgetGains(aims, steps, coder, rate)

    def resize(layers):
        gains.start()
        return [keep_within(l, b, steps, coder) for l, b in zip(layers, cut)]

    torch.manual_seed(train.seed)
    target = to_tensor(rgb, device)
    model = fit(target, counts, train, steps, backend, progress, resize=resize, resize_at=resize_at,
                coder=coder, rate_gain=gains)
    # (without the rounding the aims are the budgets: the trim meets them)
    return rounded(trim_to_budgets(model, aims, steps, coder), target, train, steps, coder, budgets)


def encode_image(rgb: np.ndarray, settings: EncodeSettings, progress: Progress | None = None) -> EncodeResult:
    """Fit, quantize and entropy-code ``rgb`` ([H, W, 3] uint8) into a .gsv stream."""
    model = fit_image(rgb, settings, progress)
    data, sizes = encode_model(model, settings.quant.steps(), settings.coder)
    return EncodeResult(data, model, sizes)


def code_intra_layers(
    model: LayeredImage, steps: tuple[float, ...], coder: int = DEFAULT_CODER, geometric: bool = False
) -> tuple[list[LayerChunk], list[np.ndarray]]:
    """Each layer as an intra chunk, and the decoder's integers of each ([N_l, 8])."""
    chunks, decoded = [], []
    for index, layer in enumerate(model.layers, start=1):
        payload, q = encode_intra(quantize_ints(layer, steps), coder=coder, geometric=geometric)
        chunks.append(LayerChunk(layer=index, count=len(layer), data=payload))
        decoded.append(q)
    return chunks, decoded


def encode_model(
    model: LayeredImage, steps: tuple[float, ...], coder: int = DEFAULT_CODER
) -> tuple[bytes, list[int]]:
    """Quantize and entropy-code a model; returns the stream and [header, layer...] bytes."""
    header = Header(width=model.width, height=model.height, counts=model.counts, steps=steps, coder=coder)
    chunks, _ = code_intra_layers(model, steps, coder)
    out = io.BytesIO()
    sizes = write_stream(out, header, chunks)
    return out.getvalue(), sizes


def decoded_model(q_layers: list[np.ndarray], steps: tuple[float, ...], width: int, height: int) -> LayeredImage:
    """The decoder's model from integer layers."""
    return LayeredImage(width, height, [dequantize(q, steps) for q in q_layers])
