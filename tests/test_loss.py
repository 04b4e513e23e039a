import pytest
import torch

from gsvc.loss import Pictures, clamped_mse, split_mse, split_mse_reference


def test_fused_loss_matches_torch_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(13, 17, 3, generator=g) * 1.6 - 0.3).requires_grad_()
    pred.data[0, 0, 0] = 1.0  # clamp boundary: torch passes the gradient there
    pred.data[0, 0, 1] = 0.0
    target = torch.rand(13, 17, 3, generator=g)
    ref = pred.detach().clone().requires_grad_()
    expected = torch.mean((ref.clamp(0, 1) - target) ** 2)
    (expected * 3).backward()
    got = clamped_mse(pred, target)
    (got * 3).backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(pred.grad, ref.grad)


def _scene(n=300, h=37, w=53, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    chol = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.6, 0.5]) + torch.tensor([0.8, 0.8, 0.0])
    colors = torch.randn(n, 3, generator=g) * 0.3
    return (means, chol, colors), torch.rand(h, w, 3, generator=g)


def _value_and_grads(fn, params, split, target, backend, aspect_bound=0.0):
    leaves = [t.clone().requires_grad_() for t in params]
    out = fn(*leaves, split, target, backend=backend, aspect_bound=aspect_bound)
    (out[0] * 1.3 + out[1] * 0.7 + out[2] * 0.01).backward()  # the terms weighted, as the joint loss does
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("split,aspect_bound", [(1, 0.0), (120, 0.0), (299, 0.0), (120, 2.5)])
def test_split_mse_matches_the_reference_in_value_and_gradient(split, aspect_bound):
    """The fused node (numba renders, conic gradients chained to the Cholesky factors by
    hand, the anti-needle term in float64) against plain tensor operations on the torch
    reference rasterizer."""
    params, target = _scene()
    got, got_grads = _value_and_grads(split_mse, params, split, target, "numba", aspect_bound)
    ref, ref_grads = _value_and_grads(split_mse_reference, params, split, target, "torch", aspect_bound)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert got[0] != got[1]
    assert (got[2] > 0) == (aspect_bound > 0)
    for a, b in zip(got_grads, ref_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_split_mse_falls_back_to_the_reference_where_it_cannot_fuse():
    params, target = _scene(n=40)
    for split in (0, 40):  # one of the two pictures is empty
        got, grads = _value_and_grads(split_mse, params, split, target, "numba")
        ref, ref_grads = _value_and_grads(split_mse_reference, params, split, target, "numba")
        torch.testing.assert_close(got, ref)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b)


def test_split_mse_is_deterministic():
    params, target = _scene()
    first = _value_and_grads(split_mse, params, 100, target, "numba", aspect_bound=2.5)
    second = _value_and_grads(split_mse, params, 100, target, "numba", aspect_bound=2.5)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_split_mse_reuses_picture_buffers_bit_for_bit():
    """A training loop's Pictures: the fused loss draws into buffers handed back by the
    previous iteration's backward (holding its gradients) and gives the same values and
    gradients as with fresh pictures, iteration after iteration, scenes changing."""
    pictures = Pictures()
    for seed, split in ((1, 100), (2, 20), (3, 250)):
        params, target = _scene(seed=seed)
        fresh = _value_and_grads(split_mse, params, split, target, "numba")
        reused = _value_and_grads(lambda *a, **k: split_mse(*a, **k, pictures=pictures), params, split, target,
                                  "numba")
        assert torch.equal(fresh[0], reused[0])
        assert all(torch.equal(a, b) for a, b in zip(fresh[1], reused[1]))
        assert len(pictures._free) == 2  # both pictures handed back after the backward
    kept = [id(a) for a in pictures._free]
    params, target = _scene(seed=4)
    leaves = [t.clone().requires_grad_() for t in params]
    split_mse(*leaves, 100, target, backend="numba", pictures=pictures)  # forward only: takes both
    assert not pictures._free and len(kept) == 2


@pytest.mark.parametrize("cols", [7, 48, 53 * 3])
def test_split_sums_are_the_plain_sums_of_each_picture(cols):
    """The split pass's two sums a row are ``_sse_rows`` of the full and the low picture
    bit for bit (the same lanes and order, whole blocks and tail), close to numpy's float64
    sums of the float32 differences,
    and it writes the full picture in place."""
    import numpy as np

    from gsvc.loss import _split_sse_rows, _sse_rows

    rng = np.random.default_rng(cols)
    low = (rng.random((9, cols)) * 1.4 - 0.2).astype(np.float32)
    high = (rng.random((9, cols)) * 0.4 - 0.2).astype(np.float32)
    target = rng.random((9, cols)).astype(np.float32)
    full = low + high
    got = _split_sse_rows(low, high, target)
    assert (high == full).all()
    assert (got[:, 0] == _sse_rows(full, target)).all() and (got[:, 1] == _sse_rows(low, target)).all()
    for pic, sums in ((full, got[:, 0]), (low, got[:, 1])):
        exact = ((np.clip(pic, 0, 1) - target).astype(np.float64) ** 2).sum(axis=1)  # float32 differences
        np.testing.assert_allclose(sums, exact, rtol=1e-12)
