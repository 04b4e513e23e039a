"""Render backends against the plain-torch reference: outputs and gradients."""
from __future__ import annotations

import math

import numba
import pytest
import torch

from gsvc.render import conics_from_chol, get_backend, render
from gsvc.render import numba_cpu
from gsvc.render.reference import rasterize_sum as reference

# --------------------------------------------------------------------------- helpers


def _gaussians(n, height, width, seed, mu=1.0, sd=0.6, pad=10.0):
    """Random Gaussians (means [N, 2], conics [N, 3], colors [N, 3]), some overhanging
    the image border by up to ``pad`` pixels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * torch.tensor([width + 2 * pad, height + 2 * pad]) - pad
    chol = torch.cat(
        [torch.randn(n, 2, generator=g) * sd + mu, torch.randn(n, 1, generator=g)], dim=1
    )
    colors = torch.randn(n, 3, generator=g)
    return means, conics_from_chol(chol), colors


def _conics_from_axes(sig_major, sig_minor, angle):
    """Inverse of R diag(s1^2, s2^2) R^T, for elongated / rotated test Gaussians."""
    c, s = torch.cos(angle), torch.sin(angle)
    i1, i2 = 1.0 / sig_major**2, 1.0 / sig_minor**2
    ca = c * c * i1 + s * s * i2
    cb = c * s * (i1 - i2)
    cc = s * s * i1 + c * c * i2
    return torch.stack([ca, cb, cc], dim=-1)


def _run(fn, means, conics, colors, height, width, grad_out):
    m = means.detach().clone().requires_grad_(True)
    c = conics.detach().clone().requires_grad_(True)
    col = colors.detach().clone().requires_grad_(True)
    out = fn(m, c, col, height, width)
    assert out.requires_grad  # also when no Gaussian touches the image
    out.backward(grad_out)
    return out.detach(), m.grad, c.grad, col.grad


def _close(actual, expected, rel=2e-5):
    """float32-sum closeness, with the absolute slack scaled to the tensor's size."""
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=rel * scale)


def _compare(means, conics, colors, height, width, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(height, width, 3, generator=g)
    ref = _run(reference, means, conics, colors, height, width, grad_out)
    got = _run(numba_cpu.rasterize_sum, means, conics, colors, height, width, grad_out)
    assert got[0].shape == (height, width, 3) and got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    for name, a, b in zip(("means", "conics", "colors"), got[1:], ref[1:]):
        assert a.shape == b.shape, name
        _close(a, b)
    return ref, got


# --------------------------------------------------------------------------- numba vs torch


@pytest.mark.parametrize("height,width", [(37, 53), (64, 96)])
def test_random(height, width):
    means, conics, colors = _gaussians(200, height, width, seed=height)
    _compare(means, conics, colors, height, width)


def test_same_support():
    """The cut q <= Q_MAX keeps exactly the reference's pixels (q is computed the same way)."""
    height, width = 40, 50
    means, conics, colors = _gaussians(30, height, width, seed=3, mu=1.5)
    for i in range(30):
        args = (means[i : i + 1], conics[i : i + 1], torch.ones(1, 3), height, width)
        with torch.no_grad():
            assert torch.equal(numba_cpu.rasterize_sum(*args) > 0, reference(*args) > 0)


def test_tiny():
    """Footprints narrower than a pixel: drawn at one pixel centre or not at all."""
    height, width = 20, 30
    g = torch.Generator().manual_seed(5)
    centres = torch.randint(0, 20, (20, 2), generator=g).float() + 0.5
    means = torch.cat([centres, centres + 0.5, centres + torch.rand(20, 2, generator=g)])
    conics = torch.tensor([50.0, 0.0, 50.0]).repeat(60, 1)
    colors = torch.rand(60, 3, generator=g)
    ref, got = _compare(means, conics, colors, height, width)
    assert (ref[0] > 0).any()


def test_huge():
    """Boxes much larger than the image, alone and mixed with small Gaussians."""
    height, width = 37, 53
    g = torch.Generator().manual_seed(7)
    means = torch.rand(6, 2, generator=g) * 60.0 - 5.0
    major = torch.rand(6, generator=g) * 200 + 50
    minor = torch.rand(6, generator=g) * 100 + 20
    conics = _conics_from_axes(major, minor, torch.rand(6, generator=g) * 3.0)
    colors = torch.randn(6, 3, generator=g)
    _compare(means, conics, colors, height, width)
    m2, c2, col2 = _gaussians(50, height, width, seed=8)
    cat = torch.cat
    _compare(cat([means, m2]), cat([conics, c2]), cat([colors, col2]), height, width)


def test_off_image():
    height, width = 37, 53
    means, conics, colors = _gaussians(40, height, width, seed=9)
    far = torch.tensor([[-100.0, 10], [10, -100], [200, 10], [10, 200], [-50, -50]])
    ref, got = _compare(far, conics[:5], colors[:5], height, width)
    assert not got[0].any() and not got[1].any() and not got[3].any()
    # mixed: off-image ones change nothing, overhanging ones are clipped
    cat = torch.cat
    _compare(
        cat([far, means]), cat([conics[:5], conics]), cat([colors[:5], colors]), height, width
    )


def test_elongated():
    """Very thin, rotated Gaussians (strong cancellation inside q)."""
    height, width = 64, 96
    g = torch.Generator().manual_seed(11)
    n = 40
    means = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    major = torch.rand(n, generator=g) * 40 + 10
    minor = torch.rand(n, generator=g) * 0.4 + 0.3  # down to 0.3 px: lines ~2 px wide
    conics = _conics_from_axes(major, minor, torch.rand(n, generator=g) * math.pi)
    colors = torch.randn(n, 3, generator=g)
    _compare(means, conics, colors, height, width)


def test_single():
    means = torch.tensor([[20.3, 11.7]])
    conics = torch.tensor([[0.2, 0.05, 0.1]])
    _compare(means, conics, torch.tensor([[0.5, -1.0, 2.0]]), 37, 53)


def test_empty():
    z2, z3 = torch.zeros(0, 2), torch.zeros(0, 3)
    _, got = _compare(z2, z3, z3, 37, 53)
    assert not got[0].any()
    assert got[1].shape == (0, 2) and got[2].shape == (0, 3) and got[3].shape == (0, 3)
    assert numba_cpu.rasterize_sum(*_gaussians(5, 8, 8, 0), 0, 7).shape == (0, 7, 3)


def test_dtypes_layouts_and_no_grad():
    height, width = 37, 53
    means, conics, colors = _gaussians(60, height, width, seed=13)
    # float64 in: float32 image out, float64 gradients, same values as float32 in
    fn = numba_cpu.rasterize_sum
    ones = torch.ones(height, width, 3)
    ref = _run(fn, means, conics, colors, height, width, ones)
    got = _run(fn, means.double(), conics.double(), colors.double(), height, width, ones.double())
    assert got[0].dtype == torch.float32
    assert all(t.dtype == torch.float64 for t in got[1:])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b, rtol=0, atol=0)
    # non-contiguous views
    wide = torch.stack([means, means + 1000], dim=2).reshape(60, 4)[:, ::2]
    assert not wide.is_contiguous()
    c_t = conics.t().contiguous().t()
    assert not c_t.is_contiguous()
    out = numba_cpu.rasterize_sum(wide, c_t, colors, height, width)
    assert torch.equal(out, ref[0])
    # nothing requires grad / only some inputs do
    out = numba_cpu.rasterize_sum(means, conics, colors, height, width)
    assert not out.requires_grad and torch.equal(out, ref[0])
    col = colors.clone().requires_grad_(True)
    numba_cpu.rasterize_sum(means, conics, col, height, width).sum().backward()
    torch.testing.assert_close(col.grad, ref[3], rtol=0, atol=0)


def test_shape_asserts():
    m, c, col = _gaussians(4, 8, 8, 0)
    with pytest.raises(AssertionError):
        numba_cpu.rasterize_sum(m[:, :1], c, col, 8, 8)
    with pytest.raises(AssertionError):
        numba_cpu.rasterize_sum(m, c[:3], col, 8, 8)


def _runs_with_threads(args, thread_counts):
    """_run of the numba backend once per entry of thread_counts (None: as configured)."""
    threads = numba.get_num_threads()
    runs = []
    try:
        for k in thread_counts:
            numba.set_num_threads(threads if k is None else k)
            runs.append(_run(numba_cpu.rasterize_sum, *args))
    finally:
        numba.set_num_threads(threads)
    return runs


def _assert_bit_identical(runs):
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


def test_deterministic():
    """Bit-identical outputs and gradients, run to run and for any thread count."""
    height, width = 64, 96
    means, conics, colors = _gaussians(300, height, width, seed=17, mu=1.5)
    grad_out = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(2))
    args = (means, conics, colors, height, width, grad_out)
    _assert_bit_identical(_runs_with_threads(args, (None, None, 1)))


def test_deterministic_threads():
    """Gradients bit-identical with 1 and 2 numba threads, on a scene with many tiles and
    Gaussians spanning several tiles (the backward folds per-tile partial sums)."""
    height, width = 96, 160
    means, conics, colors = _gaussians(600, height, width, seed=29, mu=0.6, sd=0.4)
    grad_out = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(6))
    args = (means, conics, colors, height, width, grad_out)
    _assert_bit_identical(_runs_with_threads(args, (1, min(2, numba.config.NUMBA_NUM_THREADS), 1)))


def test_backward_binning_reused():
    """backward_sum gives the same gradients with the forward's binning or its own."""
    from gsvc.render import numba_kernels as nk

    height, width = 50, 70
    means, conics, colors = (t.numpy() for t in _gaussians(150, height, width, seed=31))
    grad = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(8)).numpy()
    boxes = nk.pixel_boxes(means, conics, height, width)
    bins = nk.bin_boxes(boxes, height, width)
    a = nk.backward_sum(means, conics, colors, boxes, grad, bins)
    b = nk.backward_sum(means, conics, colors, boxes, grad)
    for x, y in zip(a, b):
        assert (x == y).all()
    out = nk.forward_sum(means, conics, colors, height, width, boxes, bins)
    assert (out == nk.forward_sum(means, conics, colors, height, width)).all()


def test_training_draw_differs_from_the_decoders_only_in_rounding():
    """numba_kernels' two draws: training's (exp's multiply-adds fused, the one
    rasterize_sum makes and the backward differentiates) keeps the decoder's pixels; for
    a lone Gaussian both are within 2 ulp of exp(-q/2) of the kernels' float32 q, and they
    do differ (the fused path is live)."""
    import numpy as np

    from gsvc.render import numba_kernels as nk

    height, width = 40, 56
    f32 = np.float32
    means = np.array([[23.3, 17.8]], f32)
    conics = np.array([[0.011, -0.004, 0.017]], f32)
    ones = np.ones((1, 3), f32)
    exact = nk.forward_sum(means, conics, ones, height, width)[..., 0]
    fused = nk.forward_sum(means, conics, ones, height, width, fused=True)[..., 0]
    # q in the kernels' float32 order, exp of -q/2 in float64
    x = np.arange(width, dtype=f32) + f32(0.5) - means[0, 0]
    y = (np.arange(height, dtype=f32) + f32(0.5) - means[0, 1])[:, None]
    ca, cb2, cc = conics[0, 0], f32(2) * conics[0, 1], conics[0, 2]
    q = (ca * x * x + cb2 * x * y) + cc * y * y
    kept = q <= f32(nk._Q32)
    assert kept.sum() > 500 and ((exact > 0) == kept).all() and ((fused > 0) == kept).all()
    want = np.exp(-0.5 * q.astype(np.float64))[kept]
    for got in (exact, fused):
        ulps = np.abs(got[kept] - want) / np.spacing(want.astype(f32))
        assert ulps.max() <= 2.0, ulps.max()
    assert (exact != fused).any()
    # rasterize_sum draws training's picture; several Gaussians: the same support
    means, conics, colors = (t.numpy() for t in _gaussians(80, height, width, seed=17))
    exact = nk.forward_sum(means, conics, colors, height, width)
    fused = nk.forward_sum(means, conics, colors, height, width, fused=True)
    with torch.no_grad():
        drawn = numba_cpu.rasterize_sum(*(torch.from_numpy(a) for a in (means, conics, colors)), height, width)
    assert _bit_equal(drawn.numpy(), fused)
    np.testing.assert_allclose(fused, exact, rtol=1e-5, atol=1e-6)
    assert (exact != fused).any()


def _trained_like(height, width, seed):
    """Needles (elongated, rotated), large, small and off-image Gaussians, float32 numpy."""
    g = torch.Generator().manual_seed(seed)

    def part(n, lo, hi, major, minor):
        means = torch.rand(n, 2, generator=g) * (torch.tensor(hi) - torch.tensor(lo)) + torch.tensor(lo)
        axes = [torch.rand(n, generator=g) * (b - a) + a for a, b in (major, minor)]
        return means, _conics_from_axes(*axes, torch.rand(n, generator=g) * math.pi)

    size = [float(width), float(height)]
    parts = [part(300, [0.0, 0.0], size, (5, 120), (0.2, 2)),  # needles
             part(20, [-50.0, -50.0], [width + 50.0, height + 50.0], (50, 400), (20, 200)),  # large
             part(300, [0.0, 0.0], size, (0.2, 3), (0.2, 3)),  # small
             part(60, [-300.0, -300.0], [width + 300.0, height + 300.0], (5, 150), (0.3, 5))]  # off
    means = torch.round(torch.cat([p[0] for p in parts]) * 16) / 16
    conics = torch.cat([p[1] for p in parts])
    colors = torch.randn(len(means), 3, generator=g)
    return (t.numpy().astype("float32") for t in (means, conics, colors))


def _bit_equal(a, b):
    same = a.shape == b.shape and a.dtype == b.dtype
    return same and (a.view(f"u{a.itemsize}") == b.view(f"u{b.itemsize}")).all()


@pytest.mark.parametrize("scene", ["random", "trained"])
def test_culling_bit_identical(scene):
    """Leaving out the tiles a Gaussian's ellipse misses changes no bit of the picture nor
    of the gradients (signed zeros included), drops pairs, and bins deterministically."""
    import numpy as np

    from gsvc.render import numba_kernels as nk

    height, width = (64, 96) if scene == "random" else (160, 224)
    if scene == "random":
        means, conics, colors = (t.numpy() for t in _gaussians(300, height, width, seed=41, mu=1.2))
    else:
        means, conics, colors = _trained_like(height, width, seed=43)
    grad = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(10)).numpy()
    boxes = nk.pixel_boxes(means, conics, height, width)
    full = nk.bin_boxes(boxes, height, width)  # every box tile: the kernels without culling
    culled = nk.bin_boxes(boxes, height, width, means, conics)
    assert len(culled[1]) < (0.9 if scene == "random" else 0.5) * len(full[1])
    for fused in (False, True):  # the decoder's draw and training's
        out = nk.forward_sum(means, conics, colors, height, width, boxes, full, fused=fused)
        assert _bit_equal(nk.forward_sum(means, conics, colors, height, width, boxes, culled, fused=fused), out)
        assert _bit_equal(nk.forward_sum(means, conics, colors, height, width, fused=fused), out)  # culls by default
    ref = nk.backward_sum(means, conics, colors, boxes, grad, full)
    for got in (nk.backward_sum(means, conics, colors, boxes, grad, culled),
                nk.backward_sum(means, conics, colors, boxes, grad)):
        for a, b in zip(got, ref):
            assert _bit_equal(a, b)
    # the lists: ascending ids per tile, a subset of the box tiles; the same for 1 thread
    offsets, ids = culled[0], culled[1]
    for t in range(len(offsets) - 1):
        assert (np.diff(ids[offsets[t] : offsets[t + 1]]) > 0).all()
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        again = nk.bin_boxes(boxes, height, width, means, conics)
    finally:
        numba.set_num_threads(threads)
    assert all(np.array_equal(a, b) for a, b in zip(again, culled))


def test_culling_drops_needle_pairs():
    """A diagonal needle meets a band of the tiles of its box: the rest are dropped, and
    every dropped pair keeps no pixel (brute force, in the kernels' float32 order)."""
    import numpy as np

    from gsvc.render import numba_kernels as nk

    f32 = np.float32
    height = width = 160
    angles = torch.tensor([math.pi / 4, 3 * math.pi / 4, 0.3, 1.2, 2.0])
    minor = torch.tensor([0.3, 0.5, 0.8, 1.0, 2.0])
    conics = _conics_from_axes(torch.full((5,), 40.0), minor, angles).numpy()
    means = np.array([[80.3, 80.7], [60.5, 90.5], [100.0, 70.25], [50.1, 40.9], [120.4, 110.6]], f32)
    colors = np.ones((5, 3), f32)
    boxes = nk.pixel_boxes(means, conics, height, width)
    full = nk.bin_boxes(boxes, height, width)
    culled = nk.bin_boxes(boxes, height, width, means, conics)
    assert len(culled[1]) < 0.5 * len(full[1])
    out = nk.forward_sum(means, conics, colors, height, width, boxes, full)
    assert _bit_equal(nk.forward_sum(means, conics, colors, height, width, boxes, culled), out)
    # pairs (tile, Gaussian) dropped: all their pixels (box part of the tile) fail the cut
    tiles_x = -(-width // nk.TILE)

    def pairs(bins):
        offsets, ids = bins[0], bins[1]
        return set(zip(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)).tolist(), ids.tolist()))

    dropped = pairs(full) - pairs(culled)
    assert dropped and pairs(culled) <= pairs(full)
    closest = np.inf
    for t, i in dropped:
        x0, x1, y0, y1 = boxes[i]
        tx, ty = (t % tiles_x) * nk.TILE, (t // tiles_x) * nk.TILE
        px = np.arange(max(tx, x0), min(tx + nk.TILE - 1, x1) + 1).astype(f32)
        py = np.arange(max(ty, y0), min(ty + nk.TILE - 1, y1) + 1).astype(f32)
        dx = ((px + f32(0.5)) - means[i, 0])[None, :]
        dy = ((py + f32(0.5)) - means[i, 1])[:, None]
        ca, cb2, cc = conics[i, 0], f32(2) * conics[i, 1], conics[i, 2]
        q = (ca * dx * dx + cb2 * dx * dy) + cc * dy * dy
        closest = min(closest, float(q.min()))
    assert f32(closest) > nk._Q32 and closest < 1.5 * nk._Q32  # the bound is tight


def test_row_spans_leave_out_only_empty_rows():
    """Binning narrows a kept pair's rows to where its ellipse may keep a pixel of the
    box's columns in the tile: a subset of the box rows, with the parity of the box's
    first row (the backward's pairs of rows), fewer rows in all, and every row left out
    keeps no pixel (brute force, in the kernels' float32 order)."""
    import numpy as np

    from gsvc.render import numba_kernels as nk

    f32 = np.float32
    height, width = 160, 224
    means, conics, _ = _trained_like(height, width, seed=47)
    boxes = nk.pixel_boxes(means, conics, height, width)
    full = nk.bin_boxes(boxes, height, width)
    culled = nk.bin_boxes(boxes, height, width, means, conics)
    tiles_x = -(-width // nk.TILE)
    box_rows = {}
    for t in range(len(full.offsets) - 1):
        for k in range(full.offsets[t], full.offsets[t + 1]):
            box_rows[t, int(full.ids[k])] = (int(full.rows[k, 0]), int(full.rows[k, 1]))
    kept = left_out = 0
    for t in range(len(culled.offsets) - 1):
        tx, ty = (t % tiles_x) * nk.TILE, (t // tiles_x) * nk.TILE
        for k in range(culled.offsets[t], culled.offsets[t + 1]):
            i = int(culled.ids[k])
            first, last = (int(v) for v in culled.rows[k])
            b0, b1 = box_rows[t, i]
            kept += max(last - first + 1, 0)
            if last < first:
                first = last = b1 + 1  # none kept: every box row is left out
            else:
                assert b0 <= first and last <= b1 and (first - b0) % 2 == 0, (t, i, first, last, b0, b1)
            out = [r for r in range(b0, b1 + 1) if r < first or r > last]
            left_out += len(out)
            if not out:
                continue
            x0, x1 = boxes[i, 0], boxes[i, 1]
            px = np.arange(max(tx, x0), min(tx + nk.TILE - 1, x1) + 1).astype(f32)
            py = (ty + np.array(out)).astype(f32)
            dx = ((px + f32(0.5)) - means[i, 0])[None, :]
            dy = ((py + f32(0.5)) - means[i, 1])[:, None]
            ca, cb2, cc = conics[i, 0], f32(2) * conics[i, 1], conics[i, 2]
            q = (ca * dx * dx + cb2 * dx * dy) + cc * dy * dy
            assert (q > nk._Q32).all(), (t, i)
    assert left_out > 0.05 * (kept + left_out), (kept, left_out)


def test_invalid_conics_zero_grad():
    """Non-positive-definite / non-finite conics and non-finite means: nothing drawn,
    zero gradients, and the other Gaussians' gradients are unaffected."""
    height, width = 37, 53
    means, conics, colors = _gaussians(20, height, width, seed=37)
    bad_c = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 2.0, 1.0], [float("nan"), 0, 1], [1, 0, 1]])
    bad_m = torch.tensor([[10.0, 10.0], [10.0, 10.0], [10.0, 10.0], [float("inf"), 5.0]])
    cat = torch.cat
    grad_out = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(9))
    args = (cat([bad_m, means]), cat([bad_c, conics]), cat([colors[:4], colors]), height, width)
    got = _run(numba_cpu.rasterize_sum, *args, grad_out)
    ref = _run(numba_cpu.rasterize_sum, means, conics, colors, height, width, grad_out)
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:]):
        assert not a[:4].any()
        assert torch.equal(a[4:], b)


def test_registry():
    assert get_backend("numba") is numba_cpu.rasterize_sum
    g = torch.Generator().manual_seed(19)
    means = torch.rand(20, 2, generator=g) * 16
    chol = torch.randn(20, 3, generator=g) * 0.3
    colors = torch.rand(20, 3, generator=g)
    a = render(means, chol, colors, 32, 40, backend="numba", scale=2.0)
    b = render(means, chol, colors, 32, 40, backend="torch", scale=2.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- torch on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_cuda_matches_cpu():
    height, width = 64, 96
    means, conics, colors = _gaussians(300, height, width, seed=23)
    grad_out = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(4))
    cpu = _run(reference, means, conics, colors, height, width, grad_out)
    dev = torch.device("cuda")
    m, c, col, go = (t.to(dev) for t in (means, conics, colors, grad_out))
    gpu = _run(reference, m, c, col, height, width, go)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(gpu[1:], cpu[1:]):
        _close(a.cpu(), b)


def test_backward_scratch_reused_bit_for_bit():
    """A kept scratch buffer for the pair sums (larger than needed, dirty from an earlier
    call) gives the gradients of a fresh one; one too small is not used."""
    import numpy as np

    from gsvc.render import numba_kernels as nk

    height, width = 50, 70
    means, conics, colors = (t.numpy() for t in _gaussians(150, height, width, seed=33))
    grad = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(9)).numpy()
    binned = nk.Binned(means, conics, height, width, fused=True)
    fresh = binned.backward(colors, grad)
    scratch = np.full(binned.scratch_size + 40, np.nan, dtype=np.float32)
    for buf in (scratch, scratch, np.zeros(3, np.float32)):
        for a, b in zip(binned.backward(colors, grad, buf), fresh):
            assert _bit_equal(a, b)
    assert not np.isnan(scratch[:binned.scratch_size]).any() and np.isnan(scratch[binned.scratch_size:]).all()
