"""Initialization: a new layer's Gaussians come in the spatial order of their cells."""
import torch

from gsvc.init import ORDER_CELL, init_base_layer, spatial_order


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
