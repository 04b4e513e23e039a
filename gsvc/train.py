"""Fitting layered Gaussians to an image: P-GSVC joint training (or LIG-style sequential).

Joint schedule (the default):

1. Layer 1 is initialized (init.py) and trained alone for ``warmup_share`` of the
   iterations; then layer 2 is initialized on the remaining error and layers 1-2
   train jointly, and so on, until all L layers are present. These warm-up stages
   only place the enhancement layers where detail is missing.
2. For the rest of the run all layers train together. Every iteration minimizes

       MSE(render(layers 1..L)) + w_k * MSE(render(layers 1..k))

   with k = 1, 2, ..., L-1, 1, 2, ... taken cyclically and w_k = intermediate_weight
   * k / (L - 1) (``colour_solve.prefix_weights``: a coarse prefix's larger MSE would
   otherwise outweigh the layers above it), and one Adam step updates
   the parameters of every layer. Because rendering is an additive sum, the two
   targets share one render: low = sum(layers 1..k), full = low + sum(layers k+1..L).
3. The last ``qat_share`` of iterations (none by default) renders every parameter
   through the stream's quantizer with a straight-through gradient
   (quantization-aware fine-tuning).

Resolution layers (``TrainSettings.resolution_scales``, off by default): the
intermediate term of step 2 also compares layers 1..k with the target at a smaller
size s_k (e.g. layer 1 at 1/4, layers 1-2 at 1/2), drawn as the decoder draws that
scale (``decode_image(scale=s_k)``: the full-size picture, clamped, area-resampled)
against the target area-resampled to that size, so that the first layers make good
thumbnails:

    MSE(layers 1..L) + intermediate_weight * (MSE_{s_k}(layers 1..k)
                                              + resolution_full_weight * MSE(layers 1..k))

``resolution_full_weight`` = 0 trains layers 1..k for their scale alone (the best
thumbnail, at a large cost at full size); 1 (the default) keeps them a full-size
picture too. The full reconstruction always trains at full size. The thumbnail is
resampled from the full-size render of layers 1..k that the joint loss draws anyway:
no extra rendering.

Sequential ("LIG") training is the baseline: layer l is fitted for 1/L of the
iterations with layers 1..l-1 frozen at their quantized values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from .colour_rounding import ColourRounding
from .colour_solve import ColourSolve, prefix_weights, solve_colours
from .decoder import output_size
from .geometry_rounding import GeometryRounding, round_geometry
from .heap import keep_freed_blocks
from .metrics import psnr_from_mse
from .loss import Pictures, aspect_excess, clamped_mse, split_mse
from .init import init_base_layer, init_enhancement_layer
from .model import GaussianLayer, LayeredImage, concat
from .layer_codec import DEFAULT_CODER
from .quantize import fake_quantize
from .rate_term import LayerPricing, LevelMSE, RateGain, RateTerm, rate_weight
from .render import EPS, covariance, get_backend, render
from .render.resample import area_shrink

Progress = Callable[[int, int, float], None]  # (iteration done, total, PSNR of full render)

#: ``resolution_scales`` of resolution layers (``--resolution-layers``): layer 1 trained
#: as a quarter-size thumbnail, layers 1-2 at half size, anything above at full size.
RESOLUTION_LAYERS = (0.25, 0.5)


@dataclass
class TrainSettings:
    """How layers are fitted. Iteration counts are totals over all stages."""

    #: optimizer steps in total
    iterations: int = 2000
    #: "joint" (P-GSVC: all layers every step) or "sequential" (LIG: one layer at a time)
    mode: Literal["joint", "sequential"] = "joint"
    #: joint mode: share of iterations each of layers 1..L-1 trains before the next is added
    warmup_share: float = 0.1
    #: weight of the intermediate (layers 1..k) loss next to the full loss, scaled by
    #: k / (L - 1) (``colour_solve.prefix_weights``; resolution layers' scaled prefixes
    #: take it as it is)
    intermediate_weight: float = 1.0
    #: final share of iterations trained through the quantizer (per stage when sequential).
    #: 0 for pictures: the colours are solved and rounded for distortion and rate after
    #: the fit (colour_solve, colour_rounding), and the geometry's steps cost little, so
    #: 15 % of the iterations through the quantizer (the default until the seventh
    #: session) gave less than the same iterations in float: kodim03 / 05 / 08 at
    #: --bpp 0.25,0.5,1.0 +0.03-0.04 / +0.06-0.10 / +0.15-0.21 dB without it
    #: (docs/results.md, "No quantization-aware share for pictures"). Video frames keep
    #: theirs (``CodingStructure.i_qat_share``, ``p_qat_share``): a P-frame's differences
    #: are deadzone-rounded, and I-frames without it gave no better streams.
    qat_share: float = 0.0
    #: Adam learning rates: positions (pixels), log-Cholesky (a, b, r), colours. Twice
    #: those of the first release, decaying twice as far: the same PSNR in fewer
    #: iterations (docs/results.md, "Encode speed")
    lr_means: float = 1.2
    lr_chol: float = 0.12
    lr_colors: float = 0.02
    #: learning rates decay exponentially to this fraction by the last step
    lr_final_ratio: float = 0.1
    #: share of the base layer's positions drawn uniformly (the rest follow image gradients)
    base_uniform_share: float = 0.3
    #: the base layer's background Gaussian (``init.background_gaussian``): sigma in
    #: multiples of the picture's longer side; 0: none. 4: Kodak at --bpp 0.25,0.5,1.0
    #: +0.71 / +0.38 / +0.19 dB at the same bytes (BD-rate against JPEG 2000 +39.3 ->
    #: +28.6 %); 2 and 8 within the fit's noise of 4 (docs/results.md, "A background
    #: Gaussian")
    background_spread: float = 4.0
    #: random seed of the initialization
    seed: int = 0
    #: resolution layers: entry k-1 is the scale s_k (of the encoded size, in (0, 1]) at
    #: which the joint loss trains the intermediate reconstruction of layers 1..k, drawn
    #: as ``decode_image(layers=k, scale=s_k)`` draws it, against the target shrunk with
    #: the area filter to that size. Layers past the tuple, and always the full
    #: reconstruction of all layers, train at full size only. None (default): all at full
    #: size. RESOLUTION_LAYERS = (1/4, 1/2). Joint mode only (the sequential baseline
    #: ignores it); video P-frames (``refine``) use it too.
    resolution_scales: tuple[float, ...] | None = None
    #: resolution layers: weight of the full-size term of layers 1..k next to their term at
    #: s_k < 1 (weight 1). 1 keeps them a good full-size picture as well; 0 trains them for
    #: s_k alone (better thumbnails, much worse full-size pictures: docs/results.md).
    resolution_full_weight: float = 1.0
    #: coarse-to-fine fitting: (scale, share) phases, in order, each training for
    #: ``share`` of the iterations against the target area-shrunk to ``scale`` of the
    #: encoded size (coarse_render: cheaper by about scale^2); the remaining iterations
    #: train at full size. Empty: every iteration at full size.
    coarse_phases: tuple[tuple[float, float], ...] = ()
    #: coarse phases: the position learning rate (pixels of the encoded size) is
    #: multiplied by (1 / scale) ** coarse_lr_power, so a step moves a Gaussian by a
    #: similar distance on the coarse grid
    coarse_lr_power: float = 0.0
    #: early stopping: a phase of the last joint stage (each coarse scale, then full size
    #: up to the quantization-aware share) ends, and training moves on to the next phase
    #: (learning-rate schedule included), when the mean PSNR of the full reconstruction
    #: over the last ``plateau_window`` iterations beats the window before it by less than
    #: ``plateau_tol_db``, or when that mean reaches ``plateau_psnr_db`` (beyond what
    #: 8-bit output and the quantizer keep); the quantization-aware share and the warm-up
    #: stages (layers joining) end early on the latter only. 0: fixed iteration counts.
    #: Deterministic (it only reads losses).
    plateau_window: int = 0
    plateau_tol_db: float = 0.01
    plateau_psnr_db: float = 50.0
    #: a stall (not a picture drawn perfectly) that would end the training outright (no
    #: quantization-aware share after it) leaves this share of the iterations to run:
    #: the learning rate steps down to the schedule's tail and decays to its end, and
    #: a size-target fit's pending resizes happen with iterations after them to take
    #: up the cut Gaussians' work. Jumping to the end left the picture at a high
    #: learning rate and skipped resizes: ``slow`` stopped kodim03 (384 px wide) at 3345
    #: of 8000 iterations, 0.1-0.2 dB below ``medium`` at layers 2-3 (docs/results.md)
    plateau_tail: float = 0.1
    #: anti-needle: Gaussians whose covariance is more elongated than ``max_aspect``
    #: (ratio of the axes) pay ``aspect_weight`` * mean(log(s / s_max)^2) over the
    #: excess, s = aspect + 1 / aspect (= exp(a - b) + (r^2 + 1) exp(b - a)). Long thin
    #: Gaussians draw straight streaks through texture. At 6 and 1e-3 the share of
    #: Gaussians longer than 8:1 in layers 2-3 falls from ~55 % to 0-35 % for ~0.1 dB
    #: and ~1 % fewer bytes (docs/results.md, "Needles"); 0: no penalty.
    max_aspect: float = 6.0
    aspect_weight: float = 1e-3
    #: rate in the loss (``rate_term``): loss + lambda * bits of the layers' shape and
    #: colour streams under the coder's own models, lambda from this RD slope (dB per
    #: bit per pixel) at the current MSE; 0: no rate term
    rate_slope: float = 0.0
    #: ... for each layer once it has trained this share of the iterations (a newborn
    #: layer's small colours would be priced to zero before they grow)
    rate_from: float = 0.15
    #: price only the first this many layers (None: all)
    rate_layers: int | None = None
    #: price only the tails of the model (a Laplace proxy; the setting measured in
    #: docs/results.md), not the exact code length with its jump at the mode
    rate_tails: bool = True
    #: after the last iteration, solve the colours for the joint objective on the
    #: quantized geometry (``colour_solve``; Adam leaves them short of it). Joint mode at
    #: full size only; under a rate term only the layers it does not price (a
    #: least-squares solve would undo what the rate term shaped for the bits).
    #: ``ColourSolve(steps=0)``: off
    colour_solve: ColourSolve = ColourSolve()
    #: then round the positions and shapes for the joint objective rather than to their
    #: nearest steps, and solve the colours again (``geometry_rounding``; same modes as
    #: the colour solve). ``GeometryRounding(passes=0)``: the nearest steps
    geometry_rounding: GeometryRounding = GeometryRounding()
    #: how the encoder turns the fitted colours into the stream's integers
    #: (``colour_rounding``: jointly, for distortion plus rate; ``ColourRounding(passes=0)``:
    #: each to its nearest step). Full-size layers only (not resolution layers)
    colour_rounding: ColourRounding = ColourRounding()

    def __post_init__(self) -> None:
        self.coarse_phases = tuple((float(s), float(f)) for s, f in self.coarse_phases)
        if not all(0.0 < s < 1.0 and f >= 0.0 for s, f in self.coarse_phases):
            raise ValueError(f"coarse phases need scales in (0, 1) and shares >= 0: {self.coarse_phases}")
        if self.coarse_phases and sum(f for _, f in self.coarse_phases) >= 1.0 - self.qat_share:
            raise ValueError("coarse phases must leave the quantization-aware iterations at full size")
        if self.resolution_scales is not None:
            self.resolution_scales = tuple(float(s) for s in self.resolution_scales)
            if not all(0.0 < s <= 1.0 for s in self.resolution_scales):
                raise ValueError(f"resolution scales must lie in (0, 1]: {self.resolution_scales}")
        if self.resolution_full_weight < 0:
            raise ValueError(f"resolution_full_weight must be at least 0: {self.resolution_full_weight}")

    def _coarse_ends(self, total: int) -> list[int]:
        """Iteration (``done``) at which each coarse phase ends."""
        ends, end = [], 0.0
        for _, share in self.coarse_phases:
            end += share
            ends.append(round(end * total))
        return ends

    def scale_at(self, done: int, total: int) -> float:
        """The coarse-to-fine scale of iteration ``done`` (0-based) of ``total``."""
        for (scale, _), end in zip(self.coarse_phases, self._coarse_ends(total)):
            if done < end:
                return scale
        return 1.0

    def phase_ends(self, total: int, qat_start: int) -> list[int]:
        """Iteration (``done``) at which each phase ends: the coarse phases, then full size
        up to ``qat_start``, then the quantization-aware rest up to ``total``."""
        return [min(end, qat_start) for end in self._coarse_ends(total)] + [qat_start, total]

    def intermediate_scale(self, k: int) -> float:
        """The scale at which the reconstruction of layers 1..k (k < L) is trained."""
        scales = self.resolution_scales or ()
        return scales[k - 1] if k <= len(scales) else 1.0


#: an optimizer step over fewer parameters than this runs on one CPU thread (``_step``)
SMALL_STEP = 1 << 20


def _step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; a small one on the CPU with torch's intra-op threads at one.
    Fused Adam is elementwise, so its values do not depend on the thread count, but
    waking sleeping pool threads costs more than a few thousand Gaussians' update: on 2
    cores, 9 parameter tensors of 1000 Gaussians alone, 210 us a step with 2 threads and
    99 us with 1. Inside training the threads are often still awake from the last kernel
    and the gain is small (Megamind P-frames, alternating: under 1 %)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    threads = torch.get_num_threads()
    if threads == 1 or sum(p.numel() for p in params) >= SMALL_STEP or any(p.device.type != "cpu" for p in params):
        optimizer.step()
        return
    torch.set_num_threads(1)
    try:
        optimizer.step()
    finally:
        torch.set_num_threads(threads)


def _stage_iterations(settings: TrainSettings, num_layers: int) -> list[int]:
    total = settings.iterations
    if settings.mode == "sequential":
        base = total // num_layers
        return [base] * (num_layers - 1) + [total - base * (num_layers - 1)]
    warm = round(total * settings.warmup_share)
    warm = min(warm, total // num_layers)
    return [warm] * (num_layers - 1) + [total - warm * (num_layers - 1)]


def _leaf(layer: GaussianLayer, device: torch.device) -> GaussianLayer:
    return GaussianLayer(*(t.detach().to(device).clone().requires_grad_(True) for t in layer.tensors()))


def _param_groups(layer: GaussianLayer, s: TrainSettings) -> list[dict]:
    return [
        {"params": [layer.means], "lr": s.lr_means, "base_lr": s.lr_means},
        {"params": [layer.chol], "lr": s.lr_chol, "base_lr": s.lr_chol},
        {"params": [layer.colors], "lr": s.lr_colors, "base_lr": s.lr_colors},
    ]


#: ``fit``'s resize hook: given the (unquantized) layers, a [N_l] bool keep mask per layer
Resize = Callable[[list[GaussianLayer]], list[np.ndarray]]


def _resized(layers: list[GaussianLayer], keeps: list[np.ndarray], optimizer: torch.optim.Adam,
             settings: TrainSettings) -> tuple[list[GaussianLayer], torch.optim.Adam]:
    """``layers`` cut to the kept Gaussians, and an optimizer that carries on with each
    kept Gaussian's Adam moments and step (learning rates as they were)."""
    new_layers, groups, states = [], [], []
    old_groups = optimizer.param_groups
    for layer, keep in zip(layers, keeps):
        mask = torch.as_tensor(np.asarray(keep, dtype=bool), device=layer.means.device)
        new = GaussianLayer(*(t.detach()[mask].clone().requires_grad_(True) for t in layer.tensors()))
        for old, fresh in zip(layer.tensors(), new.tensors()):
            state = optimizer.state.get(old, {})
            states.append((fresh, {k: (v[mask].clone() if torch.is_tensor(v) and v.dim() > 0 else
                                       v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}))
        new_layers.append(new)
        groups += _param_groups(new, settings)
    for group, old in zip(groups, old_groups):  # _param_groups' order, layer by layer
        group["lr"], group["base_lr"] = old["lr"], old["base_lr"]
    optimizer = torch.optim.Adam(groups, eps=1e-15, fused=True)
    for param, state in states:
        if state:
            optimizer.state[param] = state
    return new_layers, optimizer


def _render_sum(layers: list[GaussianLayer], h: int, w: int, backend: str,
                coarse: tuple[float, float] | None = None) -> Tensor:
    g = concat(layers)
    if coarse is not None:
        return coarse_render(g, h, w, coarse, backend)
    return render(g.means, g.chol, g.colors, h, w, backend=backend)


def coarse_render(g: GaussianLayer, h: int, w: int, scale: tuple[float, float], backend: str) -> Tensor:
    """Gaussians drawn directly on a coarser grid (scale (sx, sy) < 1 of the encoded size)
    for coarse-to-fine training: covariance S L L^T S + EPS I (the pixel footprint of the
    grid drawn on), colour times sqrt(det(S (L L^T + EPS I) S) / det(that)), so that each
    Gaussian keeps the energy it has in the area-shrunk full-size picture. A cheap stand-in
    for the decoder's shrink rule (draw at full size, area-resample), used only while
    training; the last phase always trains at full size."""
    sx, sy = scale
    cov = covariance(g.chol, scale)  # [N, 3]: S (L L^T + EPS I) S, the format's covariance
    s11 = cov[:, 0] + EPS * (1.0 - sx * sx)  # S L L^T S + EPS I
    s12 = cov[:, 1]
    s22 = cov[:, 2] + EPS * (1.0 - sy * sy)
    det = s11 * s22 - s12 * s12
    det_scaled = cov[:, 0] * cov[:, 2] - s12 * s12
    conics = torch.stack([s22 / det, -s12 / det, s11 / det], -1)
    gain = torch.sqrt(det_scaled / det)
    means = g.means * g.means.new_tensor([sx, sy])
    return get_backend(backend)(means, conics, g.colors * gain[:, None], h, w)


class ScaledTargets:
    """The training target, and its area-downscaled copies at the sizes the decoder draws
    for given scales (``decoder.output_size``), each computed once."""

    def __init__(self, full: Tensor):  # [H, W, 3]
        self.full = full
        self._scaled: dict[float, Tensor] = {}

    def at(self, scale: float) -> Tensor:
        if scale == 1.0:
            return self.full
        if scale not in self._scaled:
            h, w = self.full.shape[:2]
            out = output_size(w, h, scale)
            self._scaled[scale] = area_shrink(self.full, out.height, out.width)
        return self._scaled[scale]


def render_scaled(layers: list[GaussianLayer], full_render: Tensor, scale: float, height: int, width: int,
                  backend: str) -> Tensor:  # [height, width, 3] in [0, 1]
    """``layers`` drawn at ``scale`` < 1 as the decoder draws it (height x width from
    ``output_size``): their full-size picture, clamped, area-resampled (FORMAT.md,
    section 5). ``full_render``: the same layers' unclamped render at scale 1, which the
    joint loss draws anyway, so a thumbnail costs no extra rendering."""
    return area_shrink(full_render.clamp(0.0, 1.0), height, width)


def _intermediate_mse(layers: list[GaussianLayer], low: Tensor, targets: ScaledTargets,
                      settings: TrainSettings, k: int, backend: str) -> Tensor:
    """The intermediate term of layers 1..k (``low``: their full-size render): at full size,
    or with resolution layers at s_k plus ``resolution_full_weight`` x at full size."""
    scale = settings.intermediate_scale(k)
    if scale == 1.0:
        return clamped_mse(low, targets.full)
    target = targets.at(scale)
    pred = render_scaled(layers, low, scale, target.shape[0], target.shape[1], backend)
    mse = clamped_mse(pred, target)
    if settings.resolution_full_weight:
        mse = mse + settings.resolution_full_weight * clamped_mse(low, targets.full)
    return mse


def joint_loss(
    present: list[GaussianLayer],
    targets: ScaledTargets,
    it: int,
    settings: TrainSettings,
    backend: str,
    joint: bool = True,
    scale: float = 1.0,
    pictures: Pictures | None = None,
) -> tuple[Tensor, Tensor, tuple[int, Tensor] | None]:  # (loss, MSE of all layers, (k, MSE of 1..k))
    """The P-GSVC objective of iteration ``it``: MSE(layers 1..L) + w * MSE(layers 1..k),
    k = 1 + it mod (L - 1); both from one render, the sum being additive. With resolution
    layers the second term is also taken at ``settings.intermediate_scale(k)``. A coarse
    ``scale`` < 1 (coarse-to-fine) takes both terms on the target area-shrunk to that
    scale, drawn with ``coarse_render``. ``pictures``: the training loop's picture buffers
    (``loss.Pictures``), reused by the fused loss."""
    target = targets.at(scale)
    h, w = target.shape[:2]
    coarse = None
    if scale != 1.0:
        full_h, full_w = targets.full.shape[:2]
        coarse = (w / full_w, h / full_h)
    if joint and len(present) >= 2:
        k = 1 + it % (len(present) - 1)
        full_size = settings.intermediate_scale(k) == 1.0
        # resolution layers weigh their prefixes alike: the thumbnails are their own objective
        weight = prefix_weights(len(present), settings.intermediate_weight)[k - 1] if full_size \
            else settings.intermediate_weight
        if coarse is None and full_size:
            g = concat(present)  # all three terms from one node on the CPU (loss.split_mse)
            bound = _aspect_bound(settings)
            terms = split_mse(g.means, g.chol, g.colors, sum(len(l) for l in present[:k]), target, backend, pictures,
                              bound)
            full_mse, part_mse = terms[0], terms[1]
            shape = settings.aspect_weight * terms[2] if bound else 0.0
            return full_mse + weight * part_mse + shape, full_mse, (k, part_mse)
        shape = aspect_penalty(present, settings)
        low = _render_sum(present[:k], h, w, backend, coarse)
        full = low + _render_sum(present[k:], h, w, backend, coarse)
        full_mse = clamped_mse(full, target)
        if coarse is None:
            part_mse = _intermediate_mse(present[:k], low, targets, settings, k, backend)
        else:
            part_mse = clamped_mse(low, target)
        return full_mse + weight * part_mse + shape, full_mse, (k, part_mse)
    shape = aspect_penalty(present, settings)
    full = _render_sum(present, h, w, backend, coarse)
    full_mse = clamped_mse(full, target)
    return full_mse + shape, full_mse, None


def _aspect_bound(settings: TrainSettings) -> float:
    """s_max = max_aspect + 1 / max_aspect, the bound of ``loss.aspect_excess``; 0: no term."""
    if settings.aspect_weight <= 0 or settings.max_aspect <= 0:
        return 0.0
    return settings.max_aspect + 1.0 / settings.max_aspect


def aspect_penalty(layers: list[GaussianLayer], settings: TrainSettings) -> Tensor | float:
    """``aspect_weight`` * mean over all Gaussians of relu(log(s / s_max))^2, s the
    elongation aspect + 1/aspect of each covariance (TrainSettings.max_aspect;
    ``loss.aspect_excess``). The fused joint loss takes the same term inside its node."""
    bound = _aspect_bound(settings)
    if bound == 0.0:
        return 0.0
    return settings.aspect_weight * aspect_excess(torch.cat([l.chol for l in layers], dim=0), bound)


#: iterations in a row at or above ``plateau_psnr_db`` that end a phase at once (a black
#: frame ran 400 iterations, 14 s at 360x264, to fill four windows of 100)
PERFECT_RUN = 5


class _Plateau:
    """Early stopping within the phases of ``TrainSettings.phase_ends`` (plateau_window).

    A phase ends once ``PERFECT_RUN`` iterations in a row, or the mean PSNR over the
    last window, reach ``plateau_psnr_db``, or when that mean beats the window before
    it by less than ``plateau_tol_db``; the last
    phase (quantization-aware; for a warm-up stage, the whole stage) ends only on the
    former: a stall there still has work to do (fit the quantizer, place the next
    layer), a picture already drawn perfectly (a black or flat frame) has none."""

    def __init__(self, settings: TrainSettings, phase_ends: list[int], tail: int = 0):
        self.window = settings.plateau_window
        self.tol = settings.plateau_tol_db
        self.enough = settings.plateau_psnr_db
        self.ends = phase_ends
        self.tail = tail  # iterations a stall leaves before the last end (TrainSettings.plateau_tail)
        self.history: list[float] = []
        self.phase = -1  # the phase of ``history``

    def restart(self) -> None:
        """Forget the PSNR series: the model changed at once (a resize cut Gaussians),
        so the windows before and after are not comparable."""
        self.history = []

    def skip(self, done: int, psnr: float) -> int:
        """Iterations to skip after iteration ``done`` (1-based count) with ``psnr``."""
        phase = next((i for i, e in enumerate(self.ends) if e >= done), None)
        if phase is None or self.ends[phase] == done:
            self.history = []
            return 0
        end = self.ends[phase]
        if phase != self.phase:  # a new phase: a new scale, a new PSNR series
            self.phase, self.history = phase, []
        self.history.append(psnr)
        w = self.window
        run = min(w, PERFECT_RUN)
        if len(self.history) >= run and min(self.history[-run:]) >= self.enough:
            self.history = []  # drawn perfectly (a black or flat frame): nothing to learn
            return end - done
        if len(self.history) < w:
            return 0
        recent = sum(self.history[-w:]) / w
        stop = end
        if recent < self.enough:
            if phase == len(self.ends) - 1 or len(self.history) < 2 * w:
                return 0
            if recent - sum(self.history[-2 * w:-w]) / w >= self.tol:
                return 0
            if end == self.ends[-1]:  # a stall that would end the training: keep a tail
                stop = end - self.tail
        self.history = []
        return max(0, stop - done)


def refine(
    target: Tensor,  # [H, W, 3] float in [0, 1]
    start: list[GaussianLayer],
    settings: TrainSettings,
    iterations: int,
    lr_scale: float = 1.0,
    lr_final_ratio: float | None = None,
    quantizer: Callable[[int, GaussianLayer], GaussianLayer] | None = None,
    rate: Callable[[int, GaussianLayer], Tensor] | None = None,
    rate_slope: float = 0.0,
    rate_mse: list[float] | None = None,
    after_step: Callable[[int, GaussianLayer, float], None] | None = None,
    backend: str = "torch",
    progress: Progress | None = None,
    plateau_window: int = 0,
) -> list[GaussianLayer]:
    """Train given layers jointly from where they are (video P-frames start from the
    previous decoded frame). The loss is ``joint_loss`` plus, for each layer l,
    ``rate(l, layer)`` (a rate proxy, bits) times the exchange rate of a codec gaining
    ``rate_slope`` dB per bit per pixel at the running MSE of layers 1..l
    (``rate_term.rate_weight``, as ``fit``'s ``LayerPricing``), or at ``rate_mse[l]``
    when given (a fixed anchor: a video GOP's I-frame); a picture drawn coarsely pays
    more per bit than one drawn finely, in MSE units; the last ``qat_share``
    of iterations renders layer l through ``quantizer(l, layer)``. ``after_step(l, layer,
    decay)`` may change the parameters in place after every optimizer step (a proximal
    step of a rate term); ``decay`` is the learning-rate factor of that step. Learning
    rates are ``settings``' times ``lr_scale``, decaying to ``lr_final_ratio`` (default:
    ``settings.lr_final_ratio``) of that by the last step. ``plateau_window`` > 0: the
    iterations before the quantization-aware share end early once the mean PSNR over
    that many iterations beats the window before it by less than
    ``settings.plateau_tol_db`` (``_Plateau``; a still shot's P-frame has nothing to
    learn), and the quantization-aware share once past ``settings.plateau_psnr_db``."""
    keep_freed_blocks()
    pictures = Pictures()  # the fused loss's picture buffers, reused every iteration
    device = target.device
    layers = [_leaf(l, device) for l in start]
    # one group per parameter kind across the layers (same rates): 3 fused Adam calls, not 3 per layer
    groups = [{"params": [p for g in kind for p in g["params"]], "lr": kind[0]["lr"], "base_lr": kind[0]["base_lr"]}
              for kind in zip(*(_param_groups(layer, settings) for layer in layers))]
    for g in groups:
        g["base_lr"] *= lr_scale
        g["lr"] = g["base_lr"]
    optimizer = torch.optim.Adam(groups, eps=1e-15, fused=True)
    qat_from = iterations - round(iterations * settings.qat_share)
    targets = ScaledTargets(target)
    final_ratio = settings.lr_final_ratio if lr_final_ratio is None else lr_final_ratio
    pixels = target.shape[0] * target.shape[1]
    level_mse = LevelMSE()
    plateau = None
    if plateau_window > 0:
        plateau = _Plateau(replace(settings, plateau_window=plateau_window), [qat_from, iterations])
    it = 0
    while it < iterations:
        decay = final_ratio ** (it / max(1, iterations - 1))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay
        if quantizer is not None and it >= qat_from:
            present = [quantizer(l, layer) for l, layer in enumerate(layers)]
        else:
            present = layers
        loss, full_mse, part = joint_loss(present, targets, it, settings, backend, pictures=pictures)
        if rate is not None and rate_slope > 0:
            level = rate_mse
            if level is None:
                level_mse.track(len(layers), full_mse, part)
                level = [level_mse[l + 1] for l in range(len(layers))]
            loss = loss + sum(rate_weight(level[l], pixels, rate_slope) * rate(l, layer)
                              for l, layer in enumerate(layers))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _step(optimizer)
        if after_step is not None:
            with torch.no_grad():
                for l, layer in enumerate(layers):
                    after_step(l, layer, decay)
        it += 1
        psnr = psnr_from_mse(full_mse.item()) if (progress is not None or plateau is not None) else 0.0
        if plateau is not None:
            it += plateau.skip(it, psnr)
        if progress is not None:
            progress(it, iterations, psnr)
    return [l.detached() for l in layers]


def fit(
    target: Tensor,  # [H, W, 3] float in [0, 1]
    counts: tuple[int, ...],
    settings: TrainSettings,
    steps: tuple[float, ...],
    backend: str = "torch",
    progress: Progress | None = None,
    resize: Resize | None = None,
    resize_at: tuple[int, ...] = (),
    coder: int = DEFAULT_CODER,
    rate_gain: RateGain | None = None,
) -> LayeredImage:
    """Fit len(counts) layers of Gaussians to ``target``. ``resize`` (joint mode) is
    called once for each iteration of ``resize_at``, as soon as training has reached it
    with all layers present (early stopping may skip past it), and may cut each layer
    to a subset (rate targets: rate_control); training carries on with the rest."""
    keep_freed_blocks()
    pictures = Pictures()  # the fused loss's picture buffers, reused every iteration
    assert target.dim() == 3 and target.shape[2] == 3, target.shape
    assert len(counts) >= 1 and min(counts) >= 1, counts
    h, w = target.shape[:2]
    device = target.device
    gen = torch.Generator().manual_seed(settings.seed)
    cpu_target = target.detach().to("cpu", torch.float32)
    num_layers = len(counts)
    stage_iters = _stage_iterations(settings, num_layers)
    total = sum(stage_iters)
    sequential = settings.mode == "sequential"
    targets = ScaledTargets(target)
    pending_resizes = sorted(resize_at) if resize is not None and not sequential else []
    pricing = None
    if settings.rate_slope > 0:
        pricing = LayerPricing(RateTerm(steps, coder, tails=settings.rate_tails), settings.rate_slope,
                               round(settings.rate_from * total), h * w, rate_gain, layers=settings.rate_layers)

    layers: list[GaussianLayer] = []
    optimizer: torch.optim.Adam | None = None
    done = 0
    init_backend = backend if device.type == "cpu" else "torch"  # init works on the CPU
    for stage, count in enumerate(counts):
        if sequential:  # freeze the layers below at their coded (quantized) values
            layers = [fake_quantize(l, steps).detached() for l in layers]
        if stage == 0:
            new = init_base_layer(cpu_target, count, gen, init_backend, settings.base_uniform_share,
                                  settings.background_spread)
        else:
            with torch.no_grad():
                current = _render_sum(layers, h, w, backend).clamp(0, 1).to("cpu")
            new = init_enhancement_layer(cpu_target, current, count, gen, init_backend)
        layers.append(_leaf(new, device))
        if pricing is not None:
            pricing.add_layer(done)
        if sequential or optimizer is None:
            optimizer = torch.optim.Adam(_param_groups(layers[-1], settings), eps=1e-15, fused=True)
        else:
            for group in _param_groups(layers[-1], settings):
                optimizer.add_param_group(group)

        n_iter = stage_iters[stage]
        qat_from = n_iter - round(n_iter * settings.qat_share) if (sequential or stage == num_layers - 1) else n_iter
        # early stopping: in the last joint stage, a phase (coarse scale, full size before
        # the quantization-aware share) ends when its PSNR stops improving
        plateau = None
        if settings.plateau_window and not sequential:
            # the last stage's phases (coarse scales, full size, quantization-aware); a
            # warm-up stage is one last phase, ended early only when the picture is
            # already good enough (flat frames: a fade to black, a title card)
            last = stage == num_layers - 1
            plateau = _Plateau(settings, settings.phase_ends(total, done + qat_from) if last else [done + n_iter],
                               tail=round(settings.plateau_tail * total))
        it = 0
        while it < n_iter:
            frac = (it / max(1, n_iter - 1)) if sequential else (done / max(1, total - 1))
            decay = settings.lr_final_ratio**frac
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * decay
            scale = settings.scale_at(done, total)
            if scale != 1.0 and settings.coarse_lr_power:
                for group in optimizer.param_groups[0::3]:  # positions (_param_groups' order)
                    group["lr"] *= scale ** -settings.coarse_lr_power
            if it >= qat_from:  # (frozen layers are quantized already)
                present = [fake_quantize(l, steps) if l.means.requires_grad else l for l in layers]
            else:
                present = layers
            loss, full_mse, part = joint_loss(present, targets, it, settings, backend, joint=not sequential,
                                              scale=scale, pictures=pictures)
            if pricing is not None:
                loss = loss + pricing(layers, done, full_mse, part)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _step(optimizer)
            it += 1
            done += 1
            if pending_resizes and done >= pending_resizes[0] and len(layers) == num_layers:
                pending_resizes = [at for at in pending_resizes if at > done]
                layers, optimizer = _resized(layers, resize(layers), optimizer, settings)
                if plateau is not None:
                    plateau.restart()
            psnr = psnr_from_mse(full_mse.item()) if (progress is not None or plateau is not None) else 0.0
            if plateau is not None:
                skip = plateau.skip(done, psnr)
                it += skip
                done += skip
            if progress is not None:
                progress(done, total, psnr)
    pictures = None  # (the solve's own pictures take their place: 12 MP, 2 x 144 MB)
    final = [l.detached() for l in layers]
    full_size = all(settings.intermediate_scale(k) == 1.0 for k in range(1, num_layers))
    if not sequential and full_size:
        first = 0 if pricing is None else pricing.priced(num_layers)
        final = solve_colours(final, target, steps, settings.intermediate_weight, backend, settings.colour_solve,
                              first=first)
        if settings.geometry_rounding.passes > 0:
            final = round_geometry(final, target, steps, settings.intermediate_weight, settings.geometry_rounding)
            final = solve_colours(final, target, steps, settings.intermediate_weight, backend,
                                  settings.colour_solve, first=first)
    return LayeredImage(w, h, final)
