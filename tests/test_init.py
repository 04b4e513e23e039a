"""Initialization: a new layer's Gaussians come in the spatial order of their cells;
the base layer's background Gaussian."""
import math

import torch

from gsvc.init import ORDER_CELL, background_gaussian, init_base_layer, spatial_order


def _morton(cx: int, cy: int) -> int:
    return sum(((cx >> b) & 1) << (2 * b) | ((cy >> b) & 1) << (2 * b + 1) for b in range(16))


def test_spatial_order_is_the_cells_morton_order_stable():
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 3000, (500,), generator=g)
    ys = torch.randint(0, 2000, (500,), generator=g)
    order = spatial_order(xs, ys)
    assert sorted(order.tolist()) == list(range(500))
    keys = [_morton(int(x) // ORDER_CELL, int(y) // ORDER_CELL) for x, y in zip(xs[order], ys[order])]
    assert keys == sorted(keys)
    ties = [(k, int(i)) for k, i in zip(keys, order)]
    assert ties == sorted(ties)  # stable: within a cell, the sampling order


def test_a_new_layer_is_its_samples_reordered_by_cell():
    """A new layer's Gaussians follow the Morton order of their cells (neighbours on the
    picture are neighbours in memory), the same from run to run."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(96, 160, 3, generator=g)
    layer = init_base_layer(target, 400, torch.Generator().manual_seed(1), "torch")
    cells = (layer.means.detach() // ORDER_CELL).long()
    keys = [_morton(int(cx), int(cy)) for cx, cy in cells]
    assert keys == sorted(keys)
    again = init_base_layer(target, 400, torch.Generator().manual_seed(1), "torch")
    assert torch.equal(layer.means, again.means) and torch.equal(layer.colors, again.colors)


def test_the_background_gaussian_draws_the_mean_and_the_rest_start_from_what_is_left():
    """With ``background`` the base layer's first Gaussian is centred, ``background`` x
    the longer side in sigma, and draws the picture's mean colour; the others' colours
    are the picture minus it (signed), so over a flat picture they start near zero."""
    g = torch.Generator().manual_seed(3)
    target = torch.rand(48, 80, 3, generator=g) * 0.2 + torch.tensor([0.5, 0.3, 0.6])
    layer = init_base_layer(target, 100, torch.Generator().manual_seed(1), "torch", background=4.0)
    assert len(layer) == 100
    assert torch.allclose(layer.means[0], torch.tensor([40.0, 24.0]))
    assert torch.allclose(layer.chol[0], torch.tensor([math.log(320.0), math.log(320.0), 0.0]))
    back, drawn = background_gaussian(target, 4.0, "torch")
    assert torch.allclose(drawn.mean((0, 1)), target.mean((0, 1)), atol=1e-5)
    assert torch.equal(layer.colors[0], back.colors[0])
    plain = init_base_layer(target, 100, torch.Generator().manual_seed(1), "torch")
    # the others draw the picture minus the background: small and signed, not the picture
    assert layer.colors[1:].abs().mean() < 0.25 * plain.colors.abs().mean()
    assert (layer.colors[1:] < 0).any()
    flat = init_base_layer(torch.full((48, 80, 3), 0.5), 100, torch.Generator().manual_seed(1), "torch", background=4.0)
    assert flat.colors[1:].abs().max() < 0.02  # the background draws a flat picture by itself


def test_one_gaussian_asked_for_gets_no_background():
    target = torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(0))
    layer = init_base_layer(target, 1, torch.Generator().manual_seed(1), "torch", background=4.0)
    assert len(layer) == 1 and layer.chol[0, 0] < math.log(30.0)
