"""Rate-distortion optimized rounding of the colours: the integers the stream codes.

Rounding each colour to its nearest step treats every Gaussian alone, but Gaussians
overlap: the picture is their sum, linear in the colours, so the errors of rounding
neighbours add up where a joint choice would let them cancel. And the nearest step is
not the cheapest one: coder 2 codes a layer's colours as green, red - green and
blue - green under peaked models, so a step towards a stream's mode saves bits.

``round_colours`` starts from the nearest steps and runs a few passes of coordinate
descent on the integers (JPEG's trellis quantization and RDOQ in video coders do the
same for transform coefficients). For each Gaussian in turn, each of the 26 moves of
-1, 0 or +1 step in red, green and blue is priced by

    delta f + lambda_l * delta bits

with f the joint objective of the colour solve (``colour_solve``: sum over the
prefixes 1..k of w_k times the squared error of the clamped picture), evaluated
exactly on the Gaussian's pixels (clamp included; the 8-bit rounding of the output
is not modelled), and bits the layer's code length under coder 2's
peaked models of its colour streams (``peaked_code_lengths``, refitted each pass); the
best move that lowers the sum is taken and the prefix pictures updated. ``lambda_l``
is the exchange rate of a codec that gains ``slope`` dB per bit per pixel at the MSE
of layers 1..l (``rate_term.rate_weight``), the rate term's own.

Without budgets a Gaussian may also go (``prune``): dropping it is one more move,
priced by the exact change of f (the neighbours' colours then take up what they can
in the next moves and passes) against all its bits, its colours', its shape's and a
position's. Only the default counts are pruned; counts a user gave are kept.

With byte budgets per layer (``--bpp`` / ``--bytes``) the lambdas become the control:
after each pass a layer over its budget has its lambda raised and one under it
lowered (to half the slope's at most), so the rounding ends near each budget; a layer
still over its budget after the last pass loses its least important Gaussians
(``rate_control.keep_within``), as a fit's trim does. The fit aims a few per cent over
each budget for that (``RateSettings.rounding_margins``).

Encoder only: the decoder reads the integers. Deterministic: each layer in its own
order, layer 1 first; a large picture in bands of rows side by side, fixed by the
Gaussians' boxes alone (``row_blocks``), so the same on any number of threads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numba
from numba import prange
import numpy as np
import torch

from bitstream.entropy import peaked_code_lengths

from .colour_solve import objective_weights
from .layer_codec import colour_streams, position_bits
from .model import GaussianLayer
from .params import dequantize_array
from .quantize import dequantize, quantize_ints
from .rate_control import energy, keep_within, layer_bytes
from .rate_term import rate_weight
from .render.geometry import conics_from_chol
from .render.kernel_floats import Q32
from .render.numba_kernels import pixel_boxes
from .row_blocks import row_blocks

_Q = float(Q32)
#: code length of a value outside a model's alphabet (bits): a move there is never cheap
_OUTSIDE = 32.0


@dataclass(frozen=True)
class ColourRounding:
    """How a fit's colours become integers (``TrainSettings.colour_rounding``)."""

    #: passes of coordinate descent over all Gaussians; 0: the nearest steps
    passes: int = 4
    #: RD slope (dB per bit per pixel) that prices a bit: lambda of each layer; 0: the
    #: distortion alone
    slope: float = 6.0
    #: a Gaussian may be dropped where its bits (at lambda) are worth more than the
    #: distortion it saves
    prune: bool = True
    #: a pass that changes fewer than this share of the Gaussians ends the descent
    #: (without budgets)
    settled: float = 0.005
    #: with budgets: after each pass a layer's lambda is multiplied by (bytes / budget)
    #: ** budget_power, within ``gain_limits`` of the slope's. Not far below it: the
    #: distortion alone (lambda 0) fills a budget with worse pictures than the slope's
    #: lambda does with fewer bytes (docs/results.md)
    budget_power: float = 16.0
    gain_limits: tuple[float, float] = (0.5, 64.0)
    #: pictures of at least this many pixels are rounded in bands of ``band`` rows side
    #: by side (``row_blocks``; a 12 MP picture's serial passes took ~80 s); smaller ones
    #: one Gaussian after another. Both deterministic; they visit the Gaussians in other
    #: orders, so their integers differ a little
    parallel_from: int = 4_000_000
    band: int = 128


@numba.njit(cache=True, nogil=True)
def _code_length(transform, colours, offsets, group, los, tables):
    """Bits of one Gaussian's colour streams (``transform`` @ (colours - offsets)) under
    its group's models."""
    bits = 0.0
    for j in range(transform.shape[0]):
        v = 0
        for c in range(3):
            v += transform[j, c] * (colours[c] - offsets[c])
        k = v - los[group, j]
        bits += tables[group, j, k] if 0 <= k < tables.shape[2] else _OUTSIDE
    return bits


@numba.njit(cache=True, nogil=True, inline="always")
def _step_weight(means, conics, i, x, y, step):
    """What one colour step of Gaussian i adds at pixel (x, y): step * exp(-q / 2),
    0 beyond the cut-off (float64; the decoder's draw rounds in float32)."""
    dx = x + 0.5 - means[i, 0]
    dy = y + 0.5 - means[i, 1]
    q = conics[i, 0] * dx * dx + 2.0 * conics[i, 1] * dx * dy + conics[i, 2] * dy * dy
    return 0.0 if q > _Q else math.exp(-0.5 * q) * step


@numba.njit(cache=True, nogil=True)
def _footprint_deltas(means, conics, boxes, i, step, colours, prefixes, target, weights, first, dd):
    """dd[c, 0 / 1]: the change of the weighted squared error of the prefixes first..L-1
    if colour c of Gaussian i moves one step up / down; the change if Gaussian i goes
    (returned)."""
    dd[:] = 0.0
    gone = 0.0
    for y in range(boxes[i, 2], boxes[i, 3] + 1):
        for x in range(boxes[i, 0], boxes[i, 1] + 1):
            d = _step_weight(means, conics, i, x, y, step)
            if d == 0.0:
                continue
            for k in range(first, prefixes.shape[0]):
                wk = weights[k]
                for c in range(3):
                    p = np.float64(prefixes[k, y, x, c])
                    t = np.float64(target[y, x, c])
                    e0 = min(max(p, 0.0), 1.0) - t
                    up = min(max(p + d, 0.0), 1.0) - t
                    down = min(max(p - d, 0.0), 1.0) - t
                    without = min(max(p - d * colours[i, c], 0.0), 1.0) - t
                    e00 = e0 * e0
                    dd[c, 0] += wk * (up * up - e00)
                    dd[c, 1] += wk * (down * down - e00)
                    gone += wk * (without * without - e00)
    return gone


@numba.njit(cache=True, nogil=True)
def _add_footprint(means, conics, boxes, i, step, move, prefixes, first):
    """Gaussian i's colours moved by ``move`` steps: the prefixes first..L-1 follow."""
    for y in range(boxes[i, 2], boxes[i, 3] + 1):
        for x in range(boxes[i, 0], boxes[i, 1] + 1):
            d = _step_weight(means, conics, i, x, y, step)
            if d == 0.0:
                continue
            for k in range(first, prefixes.shape[0]):
                for c in range(3):
                    if move[c] != 0:
                        prefixes[k, y, x, c] += np.float32(d * move[c])


@numba.njit(cache=True, nogil=True)
def _visit(i, means, conics, boxes, colours, offsets, groups, keep, step, prefixes, target, weights, first, lam,
           transform, los, tables, fixed_bits, prune, anchor, dd, move, trial):
    """Gaussian i's best move (module docstring), made: 1 if it moved or went, else 0.
    Its colours are coded as ``transform`` @ (colours - offsets[i]) under the models of
    its group (``_Layer.models``); ``fixed_bits[i]``: its bits besides its colours
    (what dropping it saves beyond them); ``prune``: whether it may go (never the
    layer's ``anchor``, so a layer keeps one)."""
    gone = _footprint_deltas(means, conics, boxes, i, step, colours, prefixes, target, weights, first, dd)
    base = 0.0
    if lam > 0.0:
        base = _code_length(transform, colours[i], offsets[i], groups[i], los, tables)
    best = 0.0
    move[:] = 0
    for code in range(27):
        value = 0.0
        for c in range(3):
            m = (code // (1, 3, 9)[c]) % 3 - 1
            trial[c] = colours[i, c] + m
            if m != 0:
                value += dd[c, 0] if m > 0 else dd[c, 1]
        if lam > 0.0:
            value += lam * (_code_length(transform, trial, offsets[i], groups[i], los, tables) - base)
        if value < best:
            best = value
            for c in range(3):
                move[c] = trial[c] - colours[i, c]
    if prune and lam > 0.0 and i != anchor and gone - lam * (base + fixed_bits[i]) < best:
        for c in range(3):
            move[c] = -colours[i, c]
        keep[i] = False
        best = -1.0
    if best < 0.0:
        for c in range(3):
            colours[i, c] += move[c]
        _add_footprint(means, conics, boxes, i, step, move, prefixes, first)
        return 1
    return 0


@numba.njit(parallel=True, cache=True, nogil=True)
def _pass(means, conics, boxes, colours, offsets, groups, keep, step, prefixes, target, weights, first, lam,
          transform, los, tables, fixed_bits, prune, anchor, order, starts):
    """One pass over Gaussians of layer ``first`` (their prefixes first..L-1): the
    blocks order[starts[b]:starts[b + 1]] side by side, each in its own order (blocks
    whose Gaussians draw on disjoint rows: ``row_blocks``); colours [N, 3] int64 and keep
    [N] updated in place. The number of Gaussians moved or dropped."""
    blocks = starts.shape[0] - 1
    moved = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        dd = np.zeros((3, 2))
        move = np.zeros(3, dtype=np.int64)
        trial = np.zeros(3, dtype=np.int64)
        for j in range(starts[b], starts[b + 1]):
            moved[b] += _visit(order[j], means, conics, boxes, colours, offsets, groups, keep, step, prefixes, target,
                               weights, first, lam, transform, los, tables, fixed_bits, prune, anchor, dd, move, trial)
    return moved.sum()


class _Layer:
    """One layer's decoded geometry (float64 for the kernels) and integer colours.

    ``base`` [K, 3]: the first K Gaussians are predicted (a P-frame's kept ones), their
    colours coded as differences to these reference colours (group 0) and the rest
    afresh (group 1); None: all afresh (group 0)."""

    def __init__(self, q: np.ndarray, steps: tuple[float, ...], height: int, width: int,
                 base: np.ndarray | None = None):
        self.q = np.asarray(q, dtype=np.int64)  # [N, 8], as the stream codes them
        decoded = dequantize_array(self.q, steps)  # [N, 8] float32: the decoder's values
        self.means32 = np.ascontiguousarray(decoded[:, 0:2])  # [N, 2]
        self.chol32 = np.ascontiguousarray(decoded[:, 2:5])  # [N, 3]
        conics = np.ascontiguousarray(conics_from_chol(self.chol32), dtype=np.float32)  # [N, 3]
        self.boxes = pixel_boxes(self.means32, conics, height, width)  # [N, 4]
        self.means = self.means32.astype(np.float64)
        self.conics = conics.astype(np.float64)
        self.colours = self.q[:, 5:8].copy()  # [N, 3] int64
        self.offsets = np.zeros_like(self.colours)  # [N, 3]
        self.groups = np.zeros(len(self.q), dtype=np.int64)  # [N]
        if base is not None:
            self.offsets[: len(base)] = base
            self.groups[len(base):] = 1
        self.keep = np.ones(len(self.q), dtype=np.bool_)  # [N]

    def fixed_bits(self, coder: int) -> np.ndarray:  # [N] float64
        """Each Gaussian's bits besides its colours, as far as dropping it saves them:
        its a, b, r under their streams' peaked models, and the layer's mean bits of a
        position (``layer_codec.position_bits`` of the kept Gaussians).
        Intra layers only."""
        bits = np.zeros(len(self.q))
        kept = self.q[self.keep]
        if len(kept) < 2:
            return bits
        position = position_bits(kept, coder) / len(kept)
        for j in range(2, 5):
            lo, table = peaked_code_lengths(kept[:, j])
            if table.size > 1:
                bits += table[np.clip(self.q[:, j] - lo, 0, table.size - 1)]
        return bits + position

    def anchor(self, steps: tuple[float, ...]) -> int:
        """The kept Gaussian of most energy (``rate_control.energy``): it never goes, so
        the layer keeps one."""
        q = self.q.copy()
        q[:, 5:8] = self.colours
        return int(np.argmax(np.where(self.keep, energy(dequantize(q, steps)), -1.0)))

    def draw(self, step: float, height: int, width: int) -> np.ndarray:  # [H, W, 3] float32
        from .render import render_array

        return render_array(self.means32, self.chol32, (self.colours * step).astype(np.float32), height, width)

    def ints(self) -> np.ndarray:  # [N', 8] int64: the kept Gaussians with their colours
        q = self.q.copy()
        q[:, 5:8] = self.colours
        return q[self.keep]

    def models(self, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(los [G, S], tables [G, S, n]): each group's colour streams' peaked code
        lengths, fitted to the kept Gaussians (a group without any: one free value)."""
        fits = []
        for g in range(int(self.groups.max(initial=0)) + 1):
            mine = self.keep & (self.groups == g)
            values = (self.colours[mine] - self.offsets[mine]) @ transform.T  # [n_g, S]
            fits.append([peaked_code_lengths(values[:, j]) if len(values) else (0, np.zeros(1))
                         for j in range(transform.shape[0])])
        n = max(bits.size for group in fits for _, bits in group)
        tables = np.full((len(fits), transform.shape[0], n), _OUTSIDE)
        los = np.zeros((len(fits), transform.shape[0]), dtype=np.int64)
        for g, group in enumerate(fits):
            for j, (lo, bits) in enumerate(group):
                tables[g, j, : bits.size] = bits
                los[g, j] = lo
        return los, tables


def _colour_transform(coder: int) -> np.ndarray:  # [S, 3] int64
    """Each coded colour stream as a combination of red, green, blue (layer_codec's own
    transform of the identity)."""
    return np.ascontiguousarray(np.stack(colour_streams(np.eye(8, dtype=np.int64), coder))[:, 5:8])


def _descend(state: list[_Layer], target: torch.Tensor, steps: tuple[float, ...], intermediate_weight: float,
             coder: int, settings: ColourRounding, budgets: tuple[int, ...] | None) -> None:
    """The passes of the module docstring over ``state`` (updated in place)."""
    h, w = target.shape[:2]
    step = float(steps[5])
    assert steps[5] == steps[6] == steps[7], steps
    tgt = np.ascontiguousarray(target.detach().cpu().float().numpy())  # [H, W, 3]
    weights = np.asarray(objective_weights(len(state), intermediate_weight), dtype=np.float64)
    transform = _colour_transform(coder)
    prefixes = np.empty((len(state), h, w, 3), dtype=np.float32)  # [L, H, W, 3]
    for l, s in enumerate(state):
        prefixes[l] = s.draw(step, h, w)
        if l:
            prefixes[l] += prefixes[l - 1]
    gains = [1.0] * len(state)
    over = False
    band = settings.band if h * w >= settings.parallel_from else 0
    for done in range(settings.passes + (settings.passes if budgets is not None else 0)):
        if done >= settings.passes and not over:
            break
        moved = 0
        for l, s in enumerate(state):
            if not s.keep.any():  # (an empty layer: a P-frame's may be)
                continue
            lam = 0.0
            if settings.slope > 0.0:
                mse = float(np.mean(np.square(np.clip(prefixes[l], 0.0, 1.0) - tgt)))
                lam = gains[l] * rate_weight(mse, h * w, settings.slope) * 3 * h * w
            los, tables = s.models(transform)
            # not with budgets: the fit chose how many Gaussians a budget buys, and a
            # layer that drops some falls short of it (Kodak's last layers: 86-88 %)
            pruning = settings.prune and lam > 0.0 and budgets is None
            fixed = s.fixed_bits(coder) if pruning else np.zeros(len(s.q))
            anchor = s.anchor(steps)
            for order, starts in row_blocks(s.boxes, s.keep, band):
                moved += _pass(s.means, s.conics, s.boxes, s.colours, s.offsets, s.groups, s.keep, step, prefixes,
                               tgt, weights, l, lam, transform, los, tables, fixed, pruning, anchor, order, starts)
        if budgets is not None:
            over = False
            for l, (s, budget) in enumerate(zip(state, budgets)):
                ratio = layer_bytes(dequantize(s.ints(), steps), steps, coder) / budget
                over |= ratio > 1.0
                gains[l] = min(max(gains[l] * ratio ** settings.budget_power, settings.gain_limits[0]),
                               settings.gain_limits[1])
        elif moved < settings.settled * sum(len(s.q) for s in state):
            break


def round_colours(layers: list[GaussianLayer], target: torch.Tensor, steps: tuple[float, ...],
                  intermediate_weight: float, coder: int, settings: ColourRounding = ColourRounding(),
                  budgets: tuple[int, ...] | None = None) -> list[GaussianLayer]:
    """``layers`` with colours on their quantizer steps, chosen jointly (module
    docstring), and without the Gaussians pruned: ``quantize_ints`` of the result is
    what the stream codes; positions and shapes as they were. ``budgets``: each
    layer's chunk bytes at most (``rate_control.layer_budgets``)."""
    if settings.passes <= 0 or not layers:
        return layers
    h, w = target.shape[:2]
    state = [_Layer(quantize_ints(l, steps), steps, h, w) for l in layers]
    _descend(state, target, steps, intermediate_weight, coder, settings, budgets)
    out = []
    for layer, s in zip(layers, state):
        colours = torch.from_numpy((s.colours * steps[5]).astype(np.float32)).to(layer.colors.device)
        out.append(GaussianLayer(layer.means.detach(), layer.chol.detach(), colours).select(s.keep))
    if budgets is not None:
        out = [l.select(keep_within(l, b, steps, coder)) for l, b in zip(out, budgets)]
    return out


def round_predicted(layers: list[np.ndarray], bases: list[np.ndarray], target: torch.Tensor,
                    steps: tuple[float, ...], intermediate_weight: float, coder: int,
                    settings: ColourRounding = ColourRounding()) -> list[np.ndarray]:
    """A P-frame's layers ([N_l, 8] integers, the kept Gaussians first) with their
    colours chosen jointly, the kept ones' priced as differences to ``bases``
    ([K_l, 3] the reference's colours of the kept Gaussians), the new ones' afresh.
    Nothing is pruned (a kept Gaussian's keep flag is part of the prediction)."""
    if settings.passes <= 0 or not layers:
        return layers
    h, w = target.shape[:2]
    state = [_Layer(q, steps, h, w, base) for q, base in zip(layers, bases)]
    _descend(state, target, steps, intermediate_weight, coder, replace(settings, prune=False), None)
    return [s.ints() for s in state]
