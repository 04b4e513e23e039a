"""The colour solve at the end of a fit (gsvc/colour_solve.py): its gradient and Hessian
against autograd of the clamped objective, that it lowers the objective on the decoded
geometry, and that fits stay deterministic."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gsvc.colour_rounding import ColourRounding
from gsvc.colour_solve import (
    ColourSolve, _apply_transposed, _Operators, _prefixes, _streamed_prefixes, clamped_objective, clamped_pixels,
    objective_gradient, objective_weights, prefix_weights, solve_colours,
)
from gsvc.encoder import EncodeSettings, encode_image
from gsvc.geometry_rounding import GeometryRounding
from gsvc.model import GaussianLayer
from gsvc.presets import train_settings
from gsvc.rate_control import RateSettings

STEPS = (1 / 8, 1 / 8, 1 / 32, 1 / 32, 1 / 16, 1 / 128, 1 / 128, 1 / 128)


def _layers(seed: int, counts=(40, 25, 15), h=24, w=32) -> list[GaussianLayer]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        means = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        chol = torch.cat([torch.rand(n, 2, generator=g) * 1.5 - 0.2, torch.randn(n, 1, generator=g) * 0.3], 1)
        colors = torch.rand(n, 3, generator=g) * 0.8 - 0.1
        out.append(GaussianLayer(means, chol, colors))
    return out


def _target(seed: int, h=24, w=32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([x, y, 0.5 * (x + y)], -1)
    return (base + 0.05 * torch.randn(h, w, 3, generator=g)).clamp(0, 1)


def _problem(seed: int, backend: str):
    """Random layers, a target, their operators and the joint objective's weights."""
    layers, target = _layers(seed), _target(seed + 1)
    ops = _Operators(layers, STEPS, target.shape[0], target.shape[1], backend)
    return layers, target, ops, objective_weights(len(layers), 1.0)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_gradient_matches_autograd_of_the_clamped_objective(backend):
    layers, target, ops, weights = _problem(0, backend)
    colours = [l.colors.clone().requires_grad_(True) for l in layers]
    prefixes = _prefixes([ops.forward(l, c) for l, c in enumerate(colours)])
    f = sum(wk * torch.mean((p.clamp(0, 1) - target) ** 2) for wk, p in zip(weights, prefixes))
    expected = torch.autograd.grad(f, colours)
    detached = [p.detach() for p in prefixes]
    kept = [p.clone() for p in detached]
    clamped = clamped_pixels(detached)
    assert any(bool(c.any()) for c in clamped) and not all(bool(c.all()) for c in clamped)  # both kinds of pixel
    got = objective_gradient(ops, detached, clamped, target, weights)
    assert all(torch.equal(a, b) for a, b in zip(detached, kept))  # the prefixes are not consumed
    scale = 2.0 / target.numel()  # objective_gradient leaves out d mean / d pixel
    for e, g_ in zip(expected, got):
        torch.testing.assert_close(g_ * scale, e, rtol=1e-4, atol=1e-7)
    assert float(f.detach()) == pytest.approx(clamped_objective(detached, target, weights), rel=1e-6)
    # masking in place gives what multiplying by a 0 / 1 mask gives (up to the sign of zero)
    multiplied = [(p - target) * ((p >= 0) & (p <= 1)).float() for p in detached]
    for g_, m in zip(got, _apply_transposed(ops, multiplied, weights)):
        torch.testing.assert_close(g_, m, rtol=0, atol=0)


@pytest.mark.parametrize("zero_below", [0, 1, 2])
def test_streamed_prefixes_are_the_prefix_sums_bit_for_bit(zero_below):
    layers, target, ops, _ = _problem(4, "numba")
    colours = [l.colors for l in layers]
    renders = [torch.zeros_like(target) if l < zero_below else ops.forward(l, c) for l, c in enumerate(colours)]
    for a, b in zip(_streamed_prefixes(ops, colours, zero_below), _prefixes(renders)):
        assert torch.equal(a, b)


def test_weights_are_the_joint_loss_averaged_over_its_cycle():
    assert objective_weights(1, 1.0) == [1.0]
    assert objective_weights(2, 0.8) == pytest.approx([0.8, 1.0])
    # the prefixes' weights rise with k (prefix_weights), each trained 1 / (L - 1) of the time
    assert prefix_weights(3, 1.0) == [0.5, 1.0]
    assert objective_weights(3, 1.0) == [0.25, 0.5, 1.0]
    assert prefix_weights(4, 0.6) == pytest.approx([0.2, 0.4, 0.6])
    assert objective_weights(4, 0.6) == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 1.0])


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_solve_lowers_the_objective_and_keeps_the_geometry(backend):
    layers, target, ops, weights = _problem(2, backend)

    def value(ls):
        with torch.no_grad():
            return clamped_objective(_prefixes([ops.forward(i, l.colors) for i, l in enumerate(ls)]), target, weights)

    solved = solve_colours(layers, target, STEPS, 1.0, backend)
    assert value(solved) < 0.9 * value(layers)  # random colours: away from their optimum
    for a, b in zip(layers, solved):
        assert torch.equal(a.means, b.means) and torch.equal(a.chol, b.chol)
    # steps=0 is off; solving on never raises the objective
    assert solve_colours(layers, target, STEPS, 1.0, backend, ColourSolve(steps=0)) is layers
    assert value(solve_colours(solved, target, STEPS, 1.0, backend)) <= value(solved)


def _encode(rgb, **train):
    # without the rate term that counts encodes train with by default
    # (``RateSettings.price_counts``): a priced layer is not solved (the tests below)
    s = EncodeSettings(gaussians=(60, 30), train=train_settings("fast", iterations=80, **train),
                       rate=RateSettings(price_counts=False))
    return encode_image(rgb, s)


def _psnr(stream: bytes, rgb: np.ndarray, layers: int) -> float:
    import io

    from gsvc.decoder import decode_image

    out = decode_image(io.BytesIO(stream), layers=layers).astype(np.float64)
    return 10 * np.log10(255.0 ** 2 / np.mean((out - rgb) ** 2))


def test_fit_solves_colours_deterministically_and_the_decoded_picture_gains():
    g = np.random.default_rng(4)
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.stack([x * 5, y * 7, (x + y) * 3], -1) + g.normal(0, 6, (32, 48, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    on = _encode(rgb)
    assert _encode(rgb).data == on.data  # deterministic
    off = _encode(rgb, colour_solve=ColourSolve(steps=0))
    assert off.data != on.data
    # the full picture: the joint objective weighs it most
    assert _psnr(on.data, rgb, 2) > _psnr(off.data, rgb, 2)


def test_no_solve_under_a_rate_term_or_sequential_training():
    rgb = np.full((24, 32, 3), 90, np.uint8)
    rgb[6:18, 8:24] = (200, 40, 60)
    for train in (dict(rate_slope=6.0), dict(mode="sequential")):
        on = _encode(rgb, **train)
        off = _encode(rgb, **train, colour_solve=ColourSolve(steps=0))
        assert on.data == off.data, train


def test_under_a_rate_term_only_the_unpriced_layers_are_solved():
    layers, target = _layers(5), _target(6)
    solved = solve_colours(layers, target, STEPS, 1.0, "numba", first=2)
    assert torch.equal(solved[0].colors, layers[0].colors) and torch.equal(solved[1].colors, layers[1].colors)
    assert not torch.equal(solved[2].colors, layers[2].colors)
    assert solve_colours(layers, target, STEPS, 1.0, "numba", first=3) is layers
    # and a fit that prices layer 1 of 2 leaves layer 1 as trained
    g = np.random.default_rng(7)
    rgb = np.clip(g.normal(120, 40, (24, 32, 3)), 0, 255).astype(np.uint8)
    # (the geometry's rounding off: it moves every layer's geometry for the colours it is given)
    s = EncodeSettings(gaussians=(60, 30), train=train_settings("fast", iterations=80, rate_slope=6.0, rate_layers=1,
                                                                colour_rounding=ColourRounding(passes=0),
                                                                geometry_rounding=GeometryRounding(passes=0)))
    from gsvc.encoder import fit_image

    on = fit_image(rgb, s)
    off = fit_image(rgb, dataclasses.replace(s, train=dataclasses.replace(s.train, colour_solve=ColourSolve(steps=0))))
    assert torch.equal(on.layers[0].colors, off.layers[0].colors)
    assert torch.equal(on.layers[1].means, off.layers[1].means)
    assert not torch.equal(on.layers[1].colors, off.layers[1].colors)


def test_numba_fixed_geometry_operators_are_autograds_bit_for_bit():
    """The numba operators bin each layer once and transpose with the backward kernel
    alone: the same numbers as a render through autograd."""
    layers, target, ops, _ = _problem(5, "numba")
    generic = _Operators(layers, STEPS, target.shape[0], target.shape[1], "numba")
    assert ops.fixed is not None
    generic.fixed = None  # the autograd route every other backend takes
    g = torch.Generator().manual_seed(6)
    for l, layer in enumerate(layers):
        colours = torch.randn(layer.colors.shape, generator=g)
        image = torch.randn(target.shape, generator=g)
        assert torch.equal(ops.forward(l, colours), generic.forward(l, colours))
        fast, slow = ops.transpose(l, image), generic.transpose(l, image)
        assert fast.dtype == slow.dtype and torch.equal(fast, slow)
