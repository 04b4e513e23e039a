"""Video encoding: layered Gaussian frames in I/P groups (P-GSVC layers, GSVC's temporal coding).

* **I-frames** are fitted from scratch, exactly as an image (``encoder.fit_image``);
  Gaussians that draw nothing are left out (a black frame codes in a few bytes).
* **P-frames** start from the previous frame's *decoded* Gaussians, layer by layer,
  train jointly (the same P-GSVC objective) for at most ``CodingStructure.p_share`` of
  the I-frame iterations (fewer once the PSNR stops improving: ``plateau_window``),
  with a rate term: a proxy of the differences' bits to the reference in the loss
  (logarithmic in each change, steep near zero: ``CodingStructure.log_rate``),
  each layer's bits priced at the exchange rate of the GOP's
  I-frame (``CodingStructure.rate_slope`` dB per bpp at the MSE of its layers 1..l: a
  picture the Gaussians draw coarsely pays more distortion per bit than one drawn
  finely), and its proximal form after every step (each parameter is
  soft-thresholded towards its reference value, ``shrink``), so parameters whose
  change does not pay for itself stay exactly unchanged. Each layer
  codes the deadzone-quantized differences to the reference
  (``layer_codec.code_predicted``); unchanged values cost next to nothing under the
  zero-inflated geometric entropy model, and each stream may take that model from
  the same stream of the previous frame instead of writing it (coder 4,
  ``inherit_models``). When the camera pans, zooms or rolls, the
  reference is first moved by the frame's global motion
  (``motion.estimate_global_motion``, measured between the source frames; a moved
  layer, FORMAT.md section 7.4), so
  Gaussians that merely follow the camera cost nothing either. A layer whose
  differences cost more than coding its Gaussians afresh is coded afresh. Gaussians
  that draw nothing (colour quantized to zero, or wholly off the picture) are dropped;
  optionally (``refresh_share``) as many new ones are placed where the reference misses.
* **Drift-free layers:** layer l of a P-frame is predicted only from layer l of the
  previous decoded frame, so a k-layer decoder needs layers 1..k of every frame and
  sees exactly what the encoder saw for k layers.
* **Scene cuts:** a frame whose reference renders it below ``cut_psnr`` dB (moved by
  the global motion, when one pays, as well as unmoved), or whose P-frame falls more
  than ``cut_drop_db`` below the GOP's I-frame, is coded as an I-frame instead (no
  smeared P-frame survives).

* **Closed GOPs on a fixed grid:** frames ``[u*gop, (u+1)*gop)`` form unit ``u``,
  coded by a fresh encoder state (``GopUnit``, ``encode_gop``) that starts with an
  I-frame and shares nothing with other units, so units can be coded in parallel
  (``scale_out``) and any schedule writes the same bytes.

Frames stream in and out: the serial encoder holds the current frame and the previous
frame's integer layers, never the whole video; the parallel one holds at most a few
GOPs (``scale_out.Schedule.window``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from bitstream import CODER_RANGE_V3, CODER_RANGE_V4, Header, LayerChunk
from bitstream.layout import KIND_VIDEO, REF_MOVED, REF_PREVIOUS
from bitstream.video import FRAME_I, FRAME_P, VideoHeader, VideoWriter

from .colour_rounding import round_predicted
from .colour_solve import objective_weights
from .decoder import render_layers
from .encoder import EncodeSettings, code_intra_layers, fit_image, to_tensor
from .errors import GsvcError
from .geometry_rounding import round_predicted_geometry
from .init import init_enhancement_layer
from .layer_codec import GlobalMotion, PredictedCode, code_predicted
from .metrics import mse, psnr, psnr_from_mse
from .motion import estimate_global_motion, to_global_motion
from .model import GaussianLayer, concat
from .quantize import VIDEO_QUANT, QuantSettings, dequantize, fake_quantize_predicted, quantize_ints, quantize_residual
from .rate_term import rate_weight
from .render import render
from .step_l1 import distance_grads, log_distance, shrink_towards, step_distance
from .train import refine


@dataclass
class CodingStructure:
    """How frames are coded in time (after Cool-chic's ``CodingStructure``).

    GOPs are closed and lie on a fixed grid: frame ``t`` belongs to unit ``t // gop``,
    every unit starts with an I-frame and is coded from a fresh encoder state (its
    random generator seeded from the seed and the unit index, ``unit_seed``), with no
    state carried over from the unit before. Scene cuts may add I-frames inside a unit;
    they do not move the grid (the next unit still starts at the next multiple of
    ``gop``). So units are independent pieces of work, and a serial encode and a
    parallel one (``encode_video(..., schedule=)``) write the same bytes.
    """

    #: closed GOPs of ``gop`` frames, each starting with an I-frame (1: all I-frames)
    gop: int = 30
    #: P-frame training iterations as a share of the I-frame iterations (0.15 before the
    #: geometry rounding, ``geometry_passes``, which takes the time of the difference)
    p_share: float = 0.13
    #: P-frame learning rates as a share of the I-frame ones (tuned when those were half
    #: today's: the P-frames' rates are unchanged)
    p_lr_scale: float = 0.5
    #: P-frame learning rates decay to this fraction by their last step
    p_lr_final_ratio: float = 0.2
    #: share of a P-frame's iterations trained through its quantizer (the deadzone
    #: rounding of the differences, ``fake_quantize_predicted``); pictures train without
    #: one (``TrainSettings.qat_share``), P-frames need it: a P-frame's PSNR falls by
    #: about 1 dB when its differences start being quantized (docs/results.md)
    p_qat_share: float = 0.15
    #: ... and of an I-frame's: pictures train without one (``TrainSettings.qat_share``),
    #: but a GOP's P-frames start from its I-frame, and without it the streams came out no
    #: better (Megamind 360x264: the I-frame +0.25 dB, the stream -0.14 / -0.05 / -0.09
    #: dB at 1.3 % more bytes; tree.avi the same within 0.01 dB; a pan over kodim07: a
    #: second I-frame, as the P-frames fell 3 dB below a better first one, 14 % more
    #: bytes for +0.08 dB; docs/results.md)
    i_qat_share: float = 0.15
    #: rate term of P-frames: dB per bit per pixel, the RD slope its exchange rate assumes
    #: (``rate_term.rate_weight``, as an image's size-target fit prices bits: each
    #: layer's bits at the MSE of the GOP's I-frame drawn from layers 1..l). Its
    #: gradient (the proxy's, ``log_rate``; an L1 one before) keeps Adam from
    #: wandering where the picture does not ask for change; ``shrink`` then snaps such
    #: parameters to exactly unchanged. Against a constant weight (before: 1e-4 per bit
    #: per pixel, tuned on Megamind), 3 closed the gap to x264 on tree.avi from 5.3 to
    #: 3.7 dB and stayed within 0.2 dB of it on Megamind and a pan over a photo; 6 was
    #: better still on tree.avi, 0.3-0.5 dB worse on the others (docs/results.md).
    #: 4.5 since the P-frames round their geometry for the bits too
    #: (``geometry_passes``): the gap to x264 at the same bytes, layers 1 / 1-2 / 1-3,
    #: against 3: tree.avi +0.42 / +0.33 / +0.28 dB, a pan over kodim07 +0.34 / +0.31 /
    #: +0.22, Megamind -0.01 / -0.04 / -0.13; 6: +0.67 / +0.52 / +0.47, +0.66 / +0.53 /
    #: +0.44, but Megamind +0.07 / -0.20 / -0.27 (docs/results.md, "P-frames round
    #: their geometry for the bits"); with the log proxy 3.5 lost on tree.avi and at
    #: Megamind's layer 1
    rate_slope: float = 4.5
    #: the rate proxy's shape in the first ``log_rate_layers`` layers: (c, knee), c x
    #: log2(1 + |d| / knee) bits for a change of |d| quantizer steps in place of 2 |d|.
    #: A difference's code length grows with log |d| and its first step costs the most
    #: (a zero costs a fraction of a bit under the peaked models, +-1 several): so the
    #: proxy is steep near zero (c / (knee ln 2) bits a step) and flat for a real move.
    #: Against the L1 proxy, the gap to x264 at the same bytes, layers 1 / 1-2 / 1-3:
    #: Megamind +0.34 / +0.07 / +0.01 dB, tree.avi +0.14 / +0.08 / +0.04, a pan over
    #: kodim07 +0.30 / +0.17 / +0.12; (3.5, 0.25) as good on the mean, worse on
    #: Megamind; a knee of 1 or a flatter start spent bytes for little (docs/results.md,
    #: "P-frames price a change by its logarithm"). ``log_rate_layers`` 0: L1 everywhere
    log_rate: tuple[float, float] = (3.0, 0.25)
    log_rate_layers: int = 3
    #: P-frame early stopping (``refine``'s ``plateau_window``): iterations per window;
    #: the full-size iterations end once a window's mean PSNR beats the one before by
    #: less than the preset's tolerance (a still shot has nothing to learn). 0: off.
    #: At 30 (of 360 iterations at ``medium``): P-frames of tree.avi ran 167-245
    #: iterations for -0.02 dB and 2 % fewer bytes, of a still shot with sensor noise
    #: 223-270 at the same PSNR; Megamind's never stopped (the same bytes)
    plateau_window: int = 30
    #: proximal rate step: after every optimizer step each kept parameter moves this many
    #: quantizer steps (times the learning-rate decay) back towards its reference value,
    #: reaching it exactly (soft-thresholding, the proximal map of an L1 rate term)
    shrink: float = 0.2
    #: differences below 0.5 + deadzone quantizer steps code as "unchanged"
    deadzone: float = 0.2
    #: P-frames move their reference by the frame's global motion (camera pan, zoom, roll)
    #: before predicting from it, when that motion removes at least ``motion_gain`` of
    #: the luma MSE between the previous source frame and the new one. On a pan over a
    #: photo: 31 % fewer bytes at +0.5 dB; Megamind +0.1-0.3 dB at 1.4 % fewer bytes;
    #: tree.avi (a still camera) never moves (docs/results.md)
    global_motion: bool = True
    #: the share of that MSE a motion must remove to be used (tree.avi's camera: 0-4 %)
    motion_gain: float = 0.1
    #: each P-frame layer may be coded as no change at all (every Gaussian kept, every
    #: difference zero) where that lowers the frame's objective, distortion plus bits at
    #: ``rate_slope`` (``_Encoder._modes``): a still shot's P-frames spent 340-560 B each
    #: on changes that drew it no better (docs/results.md)
    skip_unchanged: bool = True
    #: a reference rendering the new frame below this PSNR (dB) marks a scene cut
    cut_psnr: float = 18.0
    #: a P-frame this far (dB) below its GOP's I-frame is re-coded as an I-frame
    cut_drop_db: float = 3.0
    #: passes of the colour rounding of P-frame layers (``colour_rounding.round_predicted``,
    #: at ``rate_slope``); 0: the deadzone rounding alone. On five Megamind P-frames
    #: (360x264): 39.65 dB / 23733 B without, 40.08 dB / 23433 B at 2 passes, 40.11 dB
    #: / 23205 B at 4 (~0.05 s a pass)
    rounding_passes: int = 2
    #: passes of the geometry rounding of P-frame layers
    #: (``geometry_rounding.round_predicted_geometry``: positions and shapes chosen for
    #: the picture and the differences' bits at ``rate_slope``); 0: the deadzone rounding
    #: alone. Ten P-frames after an I-frame (rate slope 3; ``p_share`` 0.13 against 0.15 without
    #: it, about the same time): Megamind 360x264 BD-rate -9.5 % (+0.00 / +0.07 / +0.11
    #: dB in 8.5-8.8 % fewer bytes), tree.avi 320x240 22 % fewer bytes at -0.01..-0.03
    #: dB, a pan over kodim11 18 % fewer at +0.00 dB (docs/results.md)
    geometry_passes: int = 2
    #: new Gaussians per P-frame layer, as a share of the layer, replacing dropped ones
    #: (0 by default: on Megamind 360x264, 2% cost 0.17 dB and 1% more bytes)
    refresh_share: float = 0.0
    #: the stream's quantizer steps: a video's own (finer than a picture's), in place of
    #: ``EncodeSettings.quant``
    quant: QuantSettings = VIDEO_QUANT
    #: a P-frame's streams may take their model from the same stream of the previous
    #: frame instead of writing one (coder 4, FORMAT.md section 4.4): a coder-3 request
    #: writes coder 4. Off: coder 3 exactly (benchmarks compare the two)
    inherit_models: bool = True

    def coder_for(self, coder: int) -> int:
        """The coder a video stream is written with, for the settings' ``coder``."""
        return CODER_RANGE_V4 if self.inherit_models and coder == CODER_RANGE_V3 else coder

    def __post_init__(self) -> None:
        if self.gop < 1:
            raise GsvcError(f"--gop must be at least 1 (got {self.gop})")
        if not 0.0 <= self.deadzone < 0.5:
            raise GsvcError("the deadzone must lie in [0, 0.5)")
        if self.log_rate_layers and not (self.log_rate[0] > 0 and self.log_rate[1] > 0):
            raise GsvcError(f"the log rate proxy needs c > 0 and knee > 0 (got {self.log_rate})")


@dataclass
class FrameReport:
    """What the encoder did with one frame (for progress output and benchmarks)."""

    index: int
    type: str  # "I" or "P"
    psnr: float  # decoded frame, all layers, against the source
    seconds: float
    bytes: list[int]  # per layer, the FRAM chunk counted in layer 1
    cut: bool = False  # an I-frame forced by a scene cut


@dataclass
class TypeTotals:
    frames: int = 0
    bytes: int = 0
    psnr: float = 0.0  # sum over frames
    seconds: float = 0.0  # sum over frames


@dataclass
class VideoSummary:
    """Totals per frame type (per-frame detail goes to the ``on_frame`` callback, so a
    long video costs no memory here)."""

    frames: int = 0
    by_type: dict[str, TypeTotals] = field(default_factory=lambda: {"I": TypeTotals(), "P": TypeTotals()})

    def add(self, report: FrameReport) -> None:
        t = self.by_type[report.type]
        t.frames += 1
        t.bytes += sum(report.bytes)
        t.psnr += report.psnr
        t.seconds += report.seconds
        self.frames += 1


FrameCallback = Callable[[FrameReport], None]


class _RateProxy(torch.autograd.Function):
    """``_rate_bits``' expression on the CPU as one node (gsvc.step_l1), value and gradient:
    2 x sum |v / steps - base| over the first K Gaussians' parameters (FORMAT.md order),
    or with ``log`` = (c, knee) c x sum log2(1 + |v / steps - base| / knee)."""

    @staticmethod
    def forward(ctx, means, chol, colors, base, steps, log):  # base [K, 8], steps [8]: float32 numpy
        params = tuple(t.detach().numpy() for t in (means, chol, colors))
        if log is None:
            value, ctx.slope = step_distance(*params, base, steps)
        else:
            value, ctx.slope = log_distance(*params, base, steps, *log)
        ctx.count = means.shape[0]
        return torch.tensor(value, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads = distance_grads(ctx.slope, np.float32(grad), ctx.count, GaussianLayer.WIDTHS)
        ctx.slope = None
        return tuple(torch.from_numpy(g) for g in grads) + (None, None, None)


def _rate_bits(base: Tensor, steps: Tensor,
               log: tuple[float, float] | None = None) -> Callable[[GaussianLayer], Tensor]:
    """Rate proxy of a predicted layer's kept Gaussians: ~2 bits per step of change, or
    with ``log`` = (c, knee) c x log2(1 + |d| / knee) bits for a change of |d| steps."""
    if base.device.type == "cpu":
        base_np, steps_np = base.numpy(), steps.numpy()
        return lambda layer: _RateProxy.apply(*layer.tensors(), base_np, steps_np, log)
    return _rate_bits_expression(base, steps, log)


def _rate_bits_expression(base: Tensor, steps: Tensor,
                          log: tuple[float, float] | None = None) -> Callable[[GaussianLayer], Tensor]:
    """``_rate_bits`` as tensor operations (other devices; the CPU node's reference)."""

    def bits(layer: GaussianLayer) -> Tensor:
        cols = torch.cat(layer.tensors(), dim=1)[: base.shape[0]]
        if log is None:
            return 2.0 * (cols / steps - base).abs().sum()
        return log[0] * torch.log2(1.0 + (cols / steps - base).abs() / log[1]).sum()

    return bits


def _shrink_towards(base: Tensor, steps: Tensor, amount: float) -> Callable[[GaussianLayer, float], None]:
    """Soft-threshold the kept Gaussians' differences to ``base`` by ``amount * decay`` steps
    (in place; on the CPU with ``step_l1.shrink_towards`` on the parameters' own memory)."""
    if base.device.type == "cpu":
        base_np, steps_np = base.numpy(), steps.numpy()

        def shrink_cpu(layer: GaussianLayer, decay: float) -> None:  # the parameters' own memory
            shrink_towards(*(t.detach().numpy() for t in layer.tensors()), base_np, steps_np, amount * decay)

        return shrink_cpu
    k = base.shape[0]
    parts, col = [], 0  # per parameter tensor: its columns of base and steps, sliced once
    for width in GaussianLayer.WIDTHS:
        parts.append((base[:, col : col + width], steps[col : col + width]))
        col += width

    def shrink(layer: GaussianLayer, decay: float) -> None:
        tau = amount * decay
        for t, (b, st) in zip(layer.tensors(), parts):
            t[:k] = (b + torch.nn.functional.softshrink(t[:k] / st - b, tau)) * st

    return shrink


def _draws_something(layer: GaussianLayer, width: int, height: int, color_step: float) -> np.ndarray:  # [N] bool
    """False for Gaussians that draw nothing: every colour quantizes to zero, or the
    whole Gaussian (3.5 sigma) lies outside the picture; but a layer holds at least one
    Gaussian (FORMAT.md: a layer chunk's count is >= 1), so where none draws anything (a
    black frame) the one of the largest colour stays."""
    peak = layer.colors.abs().amax(dim=1).numpy()
    a, b, r = (layer.chol[:, j].numpy() for j in range(3))
    radius = 3.5 * np.maximum(np.exp(a), np.exp(b) * np.sqrt(1.0 + r * r)) + 1.0
    x, y = layer.means[:, 0].numpy(), layer.means[:, 1].numpy()
    outside = (x < -radius) | (y < -radius) | (x > width + radius) | (y > height + radius)
    keep = ~(outside | (peak < 0.5 * color_step))
    if not keep.any() and keep.size:
        keep[int(peak.argmax())] = True
    return keep


def unit_seed(seed: int, unit: int) -> int:
    """The seed of GOP unit ``unit``'s random generator: a fixed mix of both (SplitMix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + unit + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1  # below 2^63: torch's seed range


class _Encoder:
    """The coding state of one GOP unit: a fresh one per unit (``unit`` picks its seed)."""

    def __init__(self, settings: EncodeSettings, structure: CodingStructure, width: int, height: int,
                 unit: int = 0):
        self.settings = replace(settings, quant=structure.quant)  # (I-frames fit with these steps too)
        self.structure = structure
        self.width, self.height = width, height
        self.steps = structure.quant.steps()
        self.counts = settings.counts_for(width, height)
        self.device, self.backend = settings.device_and_backend()
        self.generator = torch.Generator().manual_seed(unit_seed(settings.train.seed, unit))
        self.reference: list[np.ndarray] | None = None  # decoder's integer layers of the last frame
        #: per layer, the last P-frame's streams (coder 4's inherited models); None after an I-frame
        self.history: list = []
        self.gop_psnr = 0.0  # the current GOP's I-frame PSNR
        #: per layer l, the MSE of the GOP's I-frame decoded from layers 1..l: the distortion
        #: P-frames price their bits against (None: not yet known, see ``_anchor``)
        self.rate_mse: list[float] | None = None
        self.since_i = 0
        #: the last source frame: the camera's motion is measured between source frames
        #: (a coarse decoded frame against a sharp one fits the coding error, not the camera)
        self.previous_source: np.ndarray | None = None

    def _render(self, q_layers: list[np.ndarray]) -> np.ndarray:
        layers = [dequantize(q, self.steps) for q in q_layers]
        return render_layers(layers, self.width, self.height, 1.0, self.device, self.backend)

    def _level_mse(self, decoded: list[np.ndarray], rgb: np.ndarray) -> list[float]:
        """Per l, the MSE of layers 1..l of ``decoded`` against ``rgb`` (the last: all layers)."""
        return [mse(self._render(decoded[:l]), rgb) for l in range(1, len(decoded) + 1)]

    def _anchor(self, levels: list[float]) -> list[float] | None:
        """The distortion P-frames price their bits against (``_level_mse`` of the GOP's
        I-frame); None for a frame drawn (nearly) perfectly, a black or flat one, whose
        zero MSE would make every bit of the P-frames after it free: those take the
        running MSE, and the first of them anchors the GOP."""
        return None if psnr_from_mse(levels[-1]) >= self.settings.train.plateau_psnr_db else levels

    def intra(self, rgb: np.ndarray) -> tuple[list[LayerChunk], list[np.ndarray]]:
        # the colour rounding keeps the I-frame's Gaussians: the GOP's P-frames inherit
        # them, and a pruned last layer gains less over the GOP (Megamind: +0.36 dB from
        # layer 2 to 3 against +0.49)
        # It trains with the rate term as a picture at its counts does
        # (``RateSettings.price_counts``): the first 12 frames of Megamind (360x264) came
        # out +0.20 / +0.32 / +0.43 dB at the same bytes (the I-frame 8 % smaller,
        # the P-frames +0.49 dB for 1.5 % more bytes; docs/results.md)
        train = self.settings.train
        model = fit_image(rgb, replace(self.settings, train=replace(
            train, colour_rounding=replace(train.colour_rounding, prune=False),
            qat_share=self.structure.i_qat_share)))
        # Gaussians that draw nothing cost bits for nothing (a black frame has only such)
        pruned = []
        for layer in model.layers:
            pruned.append(layer.select(_draws_something(layer, self.width, self.height, self.steps[5])))
        model.layers = pruned
        return code_intra_layers(model, self.steps, self.settings.coder, geometric=True)

    def _motion(self, rgb: np.ndarray) -> tuple[GlobalMotion | None, float]:
        """The global motion P-frame layers are moved by (None: none pays), measured from
        the previous source frame to ``rgb``, and the luma PSNR of the previous source
        frame moved by it (-inf without one)."""
        if not self.structure.global_motion or self.previous_source is None:
            return None, -math.inf
        estimate = estimate_global_motion(self.previous_source, rgb)
        if estimate.gain >= self.structure.motion_gain:
            motion = to_global_motion(estimate, self.width, self.height, self.steps)
            if not motion.identity:
                return motion, psnr_from_mse(estimate.mse)
        return None, -math.inf

    def predicted(self, rgb: np.ndarray, motion: GlobalMotion | None = None
                  ) -> tuple[list[LayerChunk], list[np.ndarray], list]:  # chunks, decoded layers, their streams
        s = self.structure
        assert self.reference is not None
        target = to_tensor(rgb, self.device)
        cpu_target = target.to("cpu")
        # the reference as the decoder moves it: what the differences are taken to
        moved = [motion.apply(q) for q in self.reference] if motion else self.reference
        ref_layers = [dequantize(q, self.steps) for q in moved]
        starts, keeps, bases = [], [], []
        for l, (q, layer) in enumerate(zip(moved, ref_layers)):
            keep = _draws_something(layer, self.width, self.height, self.steps[5])
            kept = layer.select(keep)  # (a black frame after a black one keeps its one Gaussian)
            # as many new Gaussians as were dropped (at most refresh_share of the layer),
            # placed where the layers so far miss the new frame
            n_new = min(int((~keep).sum()), int(s.refresh_share * len(layer)))
            parts = [kept]
            if n_new:
                below = concat(starts + [kept])
                with torch.no_grad():
                    current = render(below.means, below.chol, below.colors, self.height, self.width,
                                     backend=self.backend).clamp(0, 1).to("cpu")
                init_backend = self.backend if self.device.type == "cpu" else "torch"
                parts.append(init_enhancement_layer(cpu_target, current, n_new, self.generator, init_backend))
            starts.append(concat(parts))
            keeps.append(keep)
            bases.append(torch.from_numpy(q[keep].astype(np.float32)).to(self.device))
        step_t = torch.tensor(self.steps, dtype=torch.float32, device=self.device)
        rates = [_rate_bits(b, step_t, s.log_rate if l < s.log_rate_layers else None) for l, b in enumerate(bases)]
        shrinks = [_shrink_towards(b, step_t, s.shrink) for b in bases]
        iterations = max(1, round(self.settings.train.iterations * s.p_share))
        trained = refine(
            target,
            [l.to(self.device) for l in starts],
            replace(self.settings.train, qat_share=s.p_qat_share),
            iterations,
            lr_scale=s.p_lr_scale,
            lr_final_ratio=s.p_lr_final_ratio,
            quantizer=lambda l, layer: fake_quantize_predicted(layer, bases[l], self.steps, s.deadzone),
            rate=lambda l, layer: rates[l](layer),
            rate_slope=s.rate_slope,
            rate_mse=self.rate_mse,
            after_step=(lambda l, layer, decay: shrinks[l](layer, decay)) if s.shrink > 0 else None,
            backend=self.backend,
            plateau_window=s.plateau_window,
        )
        coder = self.settings.coder
        ints = []  # per layer [N, 8]: the kept Gaussians (deadzone-rounded differences), then the new
        colours = []  # per layer [N, 3]: the fit's float colours
        for layer, keep, q_moved in zip(trained, keeps, moved):
            layer = layer.to("cpu")
            k = int(keep.sum())
            head, tail = layer.select(slice(None, k)), layer.select(slice(k, None))
            ints.append(np.concatenate([quantize_residual(head, q_moved[keep], self.steps, s.deadzone),
                                        quantize_ints(tail, self.steps)]))
            colours.append(layer.colors.detach().numpy())
        if self.settings.train.resolution_scales is None:
            bases = [q[keep] for q, keep in zip(moved, keeps)]  # per layer [K, 8]: the kept ones' reference
            # the kept Gaussians' geometry chosen for the picture and the differences' bits
            ints = round_predicted_geometry(
                ints, bases, colours, cpu_target, self.steps, self.settings.train.intermediate_weight, s.rate_slope,
                replace(self.settings.train.geometry_rounding, passes=s.geometry_passes))
            # then the colours' integers chosen jointly, the kept ones priced as differences
            rounding = replace(self.settings.train.colour_rounding, passes=s.rounding_passes, slope=s.rate_slope)
            ints = round_predicted(ints, [b[:, 5:8] for b in bases], cpu_target, self.steps,
                                   self.settings.train.intermediate_weight, coder, rounding)
        trained, unchanged = [], []  # per layer: (code, reference) of the fit, and of no change at all
        known = self.history or [None] * len(self.reference)  # (none before a first frame)
        for q_all, keep, q_ref, q_moved, h in zip(ints, keeps, self.reference, moved, known):
            k = int(keep.sum())
            code = code_predicted(q_ref, keep, q_all[:k], q_all[k:], coder, motion, h)
            reference = REF_MOVED if motion else REF_PREVIOUS
            # where motion is wild, coding every Gaussian afresh (keep none) can be cheaper
            fresh = code_predicted(q_ref, np.zeros(len(q_ref), bool), np.zeros((0, 8), np.int64), q_all, coder,
                                   history=h)
            if len(fresh.payload) < len(code.payload):
                code, reference = fresh, REF_PREVIOUS
            trained.append((code, reference))
            if s.skip_unchanged:
                every = np.ones(len(q_ref), bool)
                unchanged.append((code_predicted(q_ref, every, q_moved, np.zeros((0, 8), np.int64), coder, motion, h),
                                  REF_MOVED if motion else REF_PREVIOUS))
        chosen = self._modes(trained, unchanged, rgb) if s.skip_unchanged else trained
        chunks = [LayerChunk(layer=l, count=code.q.shape[0], data=code.payload, reference=reference)
                  for l, (code, reference) in enumerate(chosen, start=1)]
        return chunks, [code.q for code, _ in chosen], [code.streams for code, _ in chosen]

    def _modes(self, trained: list[tuple[PredictedCode, int]], unchanged: list[tuple[PredictedCode, int]],
               rgb: np.ndarray) -> list[tuple[PredictedCode, int]]:  # per layer (code, reference)
        """Per layer, the fit's code or the reference left as it is (every Gaussian kept,
        every difference zero), whichever lowers the P-frame's objective: the joint
        loss's distortion (the whole picture's MSE plus each prefix 1..k's at its
        ``objective_weights`` share, as the training averages it over its cycle) plus each
        layer's bits at its exchange rate (``rate_term.rate_weight`` at ``rate_slope``
        and the GOP's anchor, ``rate_mse``). A still shot's P-frame otherwise spends bits
        on changes that draw it no better (the rounded fit of a picture already drawn as
        well as the Gaussians can); layers are decided in order, each given the
        choices below it and the fit above it."""
        s = self.structure
        n = len(trained)
        pixels = self.width * self.height
        weights = objective_weights(n, self.settings.train.intermediate_weight)

        def cost(option: list[tuple[PredictedCode, int]]) -> float:
            levels = self._level_mse([code.q for code, _ in option], rgb)
            anchor = self.rate_mse or levels
            bits = [8.0 * len(code.payload) for code, _ in option]
            return (sum(w * m for w, m in zip(weights, levels))
                    + sum(rate_weight(a, pixels, s.rate_slope) * b for a, b in zip(anchor, bits)))

        chosen = list(trained)
        best = None  # cost(chosen), computed when first needed
        for l in range(n):
            if np.array_equal(trained[l][0].q, unchanged[l][0].q):  # the same layer: the shorter code
                if len(unchanged[l][0].payload) < len(trained[l][0].payload):
                    chosen[l], best = unchanged[l], None
                continue
            if best is None:
                best = cost(chosen)
            option = chosen[:l] + [unchanged[l]] + chosen[l + 1:]
            value = cost(option)
            if value < best:
                chosen, best = option, value
        return chosen

    def frame(self, index: int, rgb: np.ndarray) -> tuple[int, list[LayerChunk], FrameReport]:
        start = time.perf_counter()
        s = self.structure
        cut = False
        chunks = decoded = history = None
        ftype = FRAME_I
        if self.reference is not None and self.since_i < s.gop:
            motion, moved_psnr = self._motion(rgb)
            # a cut: the previous frame draws the new one badly, moved or not (a fast pan
            # is no cut)
            if psnr(self._render(self.reference), rgb) < s.cut_psnr and moved_psnr < s.cut_psnr:
                cut = True
            else:
                chunks, decoded, history = self.predicted(rgb, motion)
                value = psnr(self._render(decoded), rgb)
                if value < self.gop_psnr - s.cut_drop_db:
                    cut, chunks, decoded = True, None, None
                else:
                    ftype = FRAME_P
                    if self.rate_mse is None:
                        self.rate_mse = self._anchor(self._level_mse(decoded, rgb))
        if chunks is None:
            chunks, decoded = self.intra(rgb)
            history = [None] * len(decoded)  # an I-frame's layers hand on no streams
            self.since_i = 0
            levels = self._level_mse(decoded, rgb)  # its last is the whole frame's: one render fewer
            value = self.gop_psnr = psnr_from_mse(levels[-1])
            self.rate_mse = self._anchor(levels)
        self.since_i += 1
        self.reference, self.history, self.previous_source = decoded, history, rgb
        chunks = [LayerChunk(c.layer, c.count, c.data, frame=index, reference=c.reference) for c in chunks]
        report = FrameReport(index, "I" if ftype == FRAME_I else "P", value, time.perf_counter() - start, [], cut)
        return ftype, chunks, report


@dataclass
class CodedFrame:
    """One coded frame: what ``VideoWriter.write_frame`` takes, and its report."""

    type: int  # FRAME_I or FRAME_P
    chunks: list[LayerChunk]
    report: FrameReport


@dataclass
class GopUnit:
    """A closed GOP as a unit of work: frames ``first .. first + len(frames) - 1``."""

    index: int  # the unit's place on the grid: first == index * structure.gop
    first: int
    frames: np.ndarray  # [n, H, W, 3] uint8, n <= structure.gop
    settings: EncodeSettings
    structure: CodingStructure

    def __str__(self) -> str:
        last = self.first + len(self.frames) - 1
        return f"GOP {self.index} (frames {self.first}-{last})"


def encode_gop(unit: GopUnit) -> list[CodedFrame]:
    """Code one GOP unit from a fresh encoder state (runs in a worker, or in-process)."""
    _, height, width, _ = unit.frames.shape
    encoder = _Encoder(unit.settings, unit.structure, width, height, unit.index)
    return [CodedFrame(*encoder.frame(unit.first + i, rgb)) for i, rgb in enumerate(unit.frames)]


def _checked(frames: Iterable[np.ndarray], width: int, height: int) -> Iterator[np.ndarray]:
    for index, rgb in enumerate(frames):
        if rgb.shape != (height, width, 3):
            raise GsvcError(f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
        yield rgb


def gop_units(frames: Iterable[np.ndarray], settings: EncodeSettings, structure: CodingStructure) -> Iterator[GopUnit]:
    """Group frames into GOP units on the fixed grid (read lazily, one GOP at a time)."""
    batch: list[np.ndarray] = []
    index = 0
    for rgb in frames:
        batch.append(rgb)
        if len(batch) == structure.gop:
            yield GopUnit(index, index * structure.gop, np.stack(batch), settings, structure)
            batch, index = [], index + 1
    if batch:
        yield GopUnit(index, index * structure.gop, np.stack(batch), settings, structure)


def _serial(frames: Iterable[np.ndarray], settings: EncodeSettings, structure: CodingStructure,
            width: int, height: int) -> Iterator[tuple[CodedFrame, int]]:
    """Frame by frame in this process, a fresh encoder state at every unit boundary: the
    same coding as ``encode_gop`` (the same bytes) without reading a GOP ahead. Yields
    each frame and the number of units finished with it. Not retried: the frames of a
    streamed GOP are gone, and a failure in this process would repeat (retries are for
    workers that die)."""
    encoder = None
    gop = structure.gop
    for index, rgb in enumerate(frames):
        unit = index // gop
        if index % gop == 0:
            encoder = _Encoder(settings, structure, width, height, unit)
        try:
            coded = CodedFrame(*encoder.frame(index, rgb))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # one line naming the unit, as scale_out says it for workers
            from .scale_out import UnitFailed, describe_error

            raise UnitFailed(f"GOP {unit} (from frame {unit * gop}), frame {index}: {describe_error(e)}") from e
        yield coded, (index + 1) // gop


def _parallel(frames: Iterable[np.ndarray], settings: EncodeSettings, structure: CodingStructure,
              schedule) -> Iterator[tuple[CodedFrame, int]]:
    """GOP units through ``scale_out.run_units``, in stream order."""
    from .scale_out import run_units

    for done in run_units(encode_gop, gop_units(frames, settings, structure), schedule):
        for coded in done.result:
            yield coded, done.done - (coded is not done.result[-1])


@dataclass
class VideoProgress:
    """The whole job so far, after each frame written (``on_progress``)."""

    frames: int  # frames written
    units: int  # GOP units finished
    seconds: float  # since the encode started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def encode_video(
    frames: Iterable[np.ndarray],  # each [H, W, 3] uint8, all of one size
    out: BinaryIO,  # seekable: the frame count is patched at the end
    width: int,
    height: int,
    fps: Fraction,
    settings: EncodeSettings,
    structure: CodingStructure | None = None,
    on_frame: FrameCallback | None = None,
    schedule=None,  # scale_out.Schedule; None: frame by frame in this process
    on_progress: Callable[[VideoProgress], None] | None = None,
) -> VideoSummary:
    """Encode frames into ``out`` as a video stream (FORMAT.md, section 7).

    GOP units (``CodingStructure``) are coded in this process one frame at a time, or
    in parallel as ``schedule`` says; the bytes are the same either way. Frames are
    written in order as they are coded; ``on_frame`` and ``on_progress`` follow them.
    """
    structure = structure or CodingStructure()
    settings = replace(settings, coder=structure.coder_for(settings.coder))
    begin = time.perf_counter()
    counts = settings.counts_for(width, height)
    steps = structure.quant.steps()
    fps = Fraction(fps).limit_denominator(1 << 20)
    header = Header(width=width, height=height, counts=counts, steps=steps, kind=KIND_VIDEO, coder=settings.coder)
    writer = VideoWriter(out, header, VideoHeader(0, fps.numerator, fps.denominator, structure.gop))
    summary = VideoSummary()
    frames = _checked(frames, width, height)
    if schedule is None or not schedule.parallel:
        coded_frames = _serial(frames, settings, structure, width, height)
    else:
        coded_frames = _parallel(frames, settings, structure, schedule)
    for coded, units in coded_frames:
        report = coded.report
        report.bytes = writer.write_frame(coded.type, coded.chunks)
        summary.add(report)
        if on_frame is not None:
            on_frame(report)
        if on_progress is not None:
            on_progress(VideoProgress(summary.frames, units, time.perf_counter() - begin))
    if summary.frames == 0:
        raise GsvcError("no frames to encode")
    writer.finish()
    return summary
