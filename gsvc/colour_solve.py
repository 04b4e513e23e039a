"""The last step of a fit: each Gaussian's colour solved for, given the geometry the
decoder will see.

The picture is linear in the colours (the additive sum), so once positions and shapes
are fixed, the P-GSVC objective

    f(c) = sum_k w_k * mean((clamp(P_k(c), 0, 1) - T)^2),  P_k(c) = sum_{l <= k} R_l c_l

(w_L = 1 for all layers, w_k = ``prefix_weights``[k] / (L - 1) for the prefixes 1..k that
training cycles through) is a least-squares problem in the colours, up to the clamp.
Adam leaves it short of its minimum: the cyclic objective switches every iteration, the
learning rate has decayed, and where a fit has a quantization-aware share (video frames)
it moves the colours through a straight-through rounding. A few Gauss-Newton steps on
the colours alone (pixels where the clamp is active hold no gradient: they are masked,
the mask refreshed each step), each solved by conjugate gradients and kept only where it
lowers f, close most of that gap for the cost of a few dozen training iterations (docs/results.md, "Colours solved
at the end of a fit").

Operators: ``R_l c`` is a render of layer l with colours c; ``R_l^T Y`` is the colour
gradient of <render, Y> (the render is linear in the colours, so it is taken at zero
colours): the backward kernel alone on numba, autograd on any other backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .model import GaussianLayer
from .quantize import round_to_steps
from .render import conics_from_chol, render


@dataclass(frozen=True)
class ColourSolve:
    """How many steps the colour solve takes (``TrainSettings.colour_solve``)."""

    #: Gauss-Newton steps (clamp masks refreshed each step); 0: no solve
    steps: int = 3
    #: conjugate-gradient iterations per step (each about one training iteration)
    cg_iterations: int = 10
    #: step halvings tried before a step that does not lower the objective is dropped
    backtracks: int = 4
    #: ridge (Levenberg-Marquardt damping) relative to the Hessian's scale along the
    #: first residual: keeps the step bounded where the colours are underdetermined (a
    #: pixel under many Gaussians: a 1x1 picture), at no cost elsewhere
    damping: float = 1e-3


class _Operators:
    """R_l and R_l^T of each layer, on the geometry the decoder will draw. With the numba
    backend each layer is binned once (``FixedGeometry``) and a transpose runs the
    backward kernel alone: the same numbers as autograd through ``render``, bit for bit
    (tested), about a quarter less work; other backends take the autograd route."""

    def __init__(self, layers: list[GaussianLayer], steps: tuple[float, ...], height: int, width: int,
                 backend: str):
        self.h, self.w, self.backend = height, width, backend
        self.geometry = []
        for layer in layers:
            s = torch.tensor(steps, dtype=layer.means.dtype, device=layer.means.device)
            self.geometry.append((round_to_steps(layer.means.detach(), s[0:2]),
                                  round_to_steps(layer.chol.detach(), s[2:5])))
        self.fixed = None
        if backend == "numba":
            from .render.numba_cpu import FixedGeometry

            self.fixed = [FixedGeometry(means, conics_from_chol(chol), height, width) for means, chol in self.geometry]

    def forward(self, l: int, colours: Tensor) -> Tensor:  # [N_l, 3] -> [H, W, 3]
        means, chol = self.geometry[l]
        if self.fixed is not None and not colours.requires_grad:
            return self.fixed[l].draw(colours)
        return render(means, chol, colours, self.h, self.w, backend=self.backend)

    def transpose(self, l: int, image: Tensor) -> Tensor:  # [H, W, 3] -> [N_l, 3]
        means, _ = self.geometry[l]
        if self.fixed is not None:
            return self.fixed[l].transpose(image).to(means.dtype)
        zero = means.new_zeros((means.shape[0], 3), requires_grad=True)
        with torch.enable_grad():
            out = self.forward(l, zero)
            (grad,) = torch.autograd.grad(out, zero, grad_outputs=image)
        return grad


def prefix_weights(num_layers: int, intermediate_weight: float) -> list[float]:
    """The joint loss's weight of the intermediate term of layers 1..k, k = 1..L-1, in the
    iterations that train it: ``intermediate_weight * k / (L - 1)``, rising with k.

    A lower prefix draws the picture coarsely, so its MSE is larger (Kodak at 0.25 /
    0.5 / 1 bpp: about 4x and 2x the full picture's) and, weighted alike, its term
    outweighed the others: the Adam steps served layer 1's PSNR before the layers
    above. Weighted by k / (L - 1) (three layers: 1/2 and 1), each prefix's term
    weighs about as much as its share of the PSNR (the gradient of a sum of the
    prefixes' log-MSEs, at layers ~3 dB apart): at 384 px, ``medium``, ``--bpp
    0.25,0.5,1.0`` on kodim03, kodim08, Megamind frame 40 and tree.avi frame 20,
    -0.29 / +0.15 / +0.12 dB at layers 1 / 2 / 3 on the mean (docs/results.md,
    "Prefix weights rising with the layer"). Two layers: ``intermediate_weight``."""
    return [intermediate_weight * k / (num_layers - 1) for k in range(1, num_layers)]


def objective_weights(num_layers: int, intermediate_weight: float) -> list[float]:
    """w_k of the prefixes 1..L: the joint loss averaged over its cycle of k."""
    if num_layers == 1:
        return [1.0]
    return [w / (num_layers - 1) for w in prefix_weights(num_layers, intermediate_weight)] + [1.0]


def _prefixes(pictures: list[Tensor]) -> list[Tensor]:
    out, acc = [], None
    for p in pictures:
        acc = p if acc is None else acc + p
        out.append(acc)
    return out


def _streamed_prefixes(ops: _Operators, colours: list[Tensor], zero_below: int = 0) -> list[Tensor]:
    """``_prefixes`` of the layers' renders, each render freed once added (L + 1 pictures
    alive at most, not 2L - 1: a 12 MP picture is 144 MB); layers before ``zero_below``
    draw nothing (their colours held at zero). The same sums, in the same order."""
    out, acc = [], None
    for l, c in enumerate(colours):
        if l < zero_below:
            picture = acc if acc is not None else torch.zeros(ops.h, ops.w, 3, dtype=c.dtype, device=c.device)
        else:
            picture = ops.forward(l, c)  # a new picture of its own: summed into in place
            if acc is not None:
                picture.add_(acc)
        out.append(picture)
        acc = picture
    return out


def clamped_objective(prefixes: list[Tensor], target: Tensor, weights: list[float]) -> float:
    """f of the module docstring (one new picture a prefix: clamp, then in place)."""
    return float(sum(w * torch.mean(p.clamp(0.0, 1.0).sub_(target).square_()) for w, p in zip(weights, prefixes)))


def clamped_pixels(prefixes: list[Tensor]) -> list[Tensor]:
    """Where each prefix picture leaves [0, 1] (bool, a quarter of a float picture): the
    clamp is active there and the pixel holds no gradient."""
    return [~((p >= 0.0) & (p <= 1.0)) for p in prefixes]


def objective_gradient(ops: _Operators, prefixes: list[Tensor], clamped: list[Tensor], target: Tensor,
                       weights: list[float], first: int = 0) -> list[Tensor]:
    """d f / d c_l per layer, times (pixels / 2): sum_{k >= l} w_k R_l^T (M_k (P_k - T)),
    M_k zero on ``clamped``'s pixels (``clamped_pixels``); zero for the layers before
    ``first`` (held fixed)."""
    return _apply_transposed(ops, [(p - target).masked_fill_(c, 0.0) for c, p in zip(clamped, prefixes)],
                             weights, first)


def _apply_transposed(ops: _Operators, images: list[Tensor], weights: list[float], first: int = 0) -> list[Tensor]:
    """[sum_{k >= l} w_k R_l^T images_k for each layer l >= first; zeros before]
    (one transpose per free layer). Consumes ``images`` from ``first`` on: they are
    scaled and summed in place (no new picture: at 12 MP each would be 144 MB of fresh
    pages); those before ``first`` are not read (no transpose below needs them)."""
    out, acc = [], None
    for k in reversed(range(len(images))):
        if k < first:  # held fixed
            out.append(torch.zeros_like(ops.geometry[k][0][:, :1].expand(-1, 3)))
            continue
        images[k].mul_(weights[k])
        acc = images[k] if acc is None else acc.add_(images[k])
        out.append(ops.transpose(k, acc))
    return out[::-1]


def solve_colours(layers: list[GaussianLayer], target: Tensor, steps: tuple[float, ...],
                  intermediate_weight: float, backend: str,
                  settings: ColourSolve = ColourSolve(), first: int = 0) -> list[GaussianLayer]:
    """``layers`` with colours that lower the joint objective on their quantized geometry
    (module docstring); positions and shapes untouched, and the colours of the layers
    before ``first`` too (a size-target fit prices those layers' bits: a least-squares
    solve would undo that). Deterministic."""
    if settings.steps <= 0 or first >= len(layers):
        return layers
    h, w = target.shape[:2]
    ops = _Operators(layers, steps, h, w, backend)
    weights = objective_weights(len(layers), intermediate_weight)
    x = [l.colors.detach().clone() for l in layers]
    # colours stay within what the fit itself reached (and far from the coder's limits)
    limit = max(2.0, 2.0 * max(float(c.abs().max()) if c.numel() else 0.0 for c in x))

    def pictures(colours: list[Tensor], fixed_zero: bool = False) -> list[Tensor]:
        """Prefix pictures; ``fixed_zero``: the fixed layers' colours are zero (a step;
        those prefixes may share one zero picture)."""
        with torch.no_grad():
            return _streamed_prefixes(ops, colours, first if fixed_zero else 0)

    prefixes = pictures(x)
    best = clamped_objective(prefixes, target, weights)
    for _ in range(settings.steps):
        clamped = clamped_pixels(prefixes)

        def hessian(v: list[Tensor]) -> list[Tensor]:  # (in place: the pictures are this call's own)
            return _apply_transposed(ops, [q.masked_fill_(c, 0.0) for c, q in zip(clamped, pictures(v, True))],
                                     weights, first)

        r = [-g for g in objective_gradient(ops, prefixes, clamped, target, weights, first)]
        p = [t.clone() for t in r]
        d = [torch.zeros_like(t) for t in r]
        rs = sum(float((t * t).sum()) for t in r)
        ridge = None
        for _ in range(settings.cg_iterations):
            if rs == 0.0:
                break
            hp = hessian(p)
            if ridge is None:  # the Hessian's scale along the first residual (p = r)
                ridge = settings.damping * sum(float((a * b).sum()) for a, b in zip(p, hp)) / rs
            hp = [a + ridge * b for a, b in zip(hp, p)]
            php = sum(float((a * b).sum()) for a, b in zip(p, hp))
            if not php > 0.0:
                break
            alpha = rs / php
            d = [a + alpha * b for a, b in zip(d, p)]
            r = [a - alpha * b for a, b in zip(r, hp)]
            rs_new = sum(float((t * t).sum()) for t in r)
            p = [a + (rs_new / rs) * b for a, b in zip(r, p)]
            rs = rs_new
        # the line search needs only the objective's value: free the pictures and masks
        # first (peak memory of a large picture: L prefixes + L masks + one trial). The
        # pictures' arithmetic runs in place throughout (a new 12 MP picture is 144 MB
        # of fresh pages to fault in: in-place sums and masking cut the solve's page
        # faults there from 11.2 M to 1.1 M)
        prefixes = clamped = hessian = None
        t, improved = 1.0, False
        for _ in range(settings.backtracks + 1):
            trial = [(a + t * b).clamp(-limit, limit) for a, b in zip(x, d)]
            trial_prefixes = pictures(trial)
            value = clamped_objective(trial_prefixes, target, weights)
            if value < best:
                x, prefixes, best, improved = trial, trial_prefixes, value, True
                break
            t *= 0.5
        if not improved:
            break
    return [GaussianLayer(l.means.detach(), l.chol.detach(), c.detach()) for l, c in zip(layers, x)]
