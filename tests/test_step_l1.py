"""The P-frames' rate proxy on numba (gsvc.step_l1) against its numpy expressions: the
same slopes, gradients and shrunk parameters bit for bit, the same value to rounding."""
import numpy as np
import pytest

from gsvc.step_l1 import distance_grads, log_distance, shrink_towards, step_distance


def _case(seed, n=57, k=41):
    rng = np.random.default_rng(seed)
    # not powers of two: the operation order then shows in the bits
    steps = np.array([0.13, 0.11, 0.031, 0.029, 0.07, 0.017, 0.013, 0.019], dtype=np.float32)
    base = np.round(rng.normal(0, 40, (k, 8))).astype(np.float32)
    v = base * steps + rng.normal(0, 1, (k, 8)).astype(np.float32) * steps * rng.choice([0, 0.3, 3], (k, 8))
    params = np.concatenate([v, rng.normal(0, 1, (n - k, 8))]).astype(np.float32)
    parts = [np.ascontiguousarray(params[:, a:b]) for a, b in ((0, 2), (2, 5), (5, 8))]
    return parts, base, steps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distance_and_gradients_match_numpy(seed):
    parts, base, steps = _case(seed)
    k = base.shape[0]
    d = np.concatenate([p[:k] for p in parts], axis=1) / steps - base
    value, slope = step_distance(*parts, base, steps)
    assert np.array_equal(slope, np.sign(d) * (np.float32(2.0) / steps))
    assert value == pytest.approx(2.0 * float(np.abs(d).sum(dtype=np.float64)), rel=1e-12)
    grad = np.float32(0.37)
    g = np.zeros((parts[0].shape[0], 8), dtype=np.float32)
    g[:k] = slope * grad
    for got, want in zip(distance_grads(slope, grad, parts[0].shape[0], (2, 3, 3)), (g[:, :2], g[:, 2:5], g[:, 5:])):
        assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("tau", [0.0, 0.4, 2.5])
def test_shrink_matches_numpy_in_place(tau):
    parts, base, steps = _case(5)
    k = base.shape[0]
    want = [p.copy() for p in parts]
    col = 0
    for w in want:
        b, st = base[:, col : col + w.shape[1]], steps[col : col + w.shape[1]]
        v = w[:k]
        d = v / st - b
        v[...] = (b + np.sign(d) * np.maximum(np.abs(d) - np.float32(tau), np.float32(0.0))) * st
        col += w.shape[1]
    shrink_towards(*parts, base, steps, tau)
    for got, w in zip(parts, want):
        assert np.array_equal(got, w)
    assert not np.array_equal(parts[0][:k], _case(5)[0][0][:k]) or tau == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale, knee", [(3.0, 0.25), (2.0, 1.0)])
def test_log_distance_and_its_slope(seed, scale, knee):
    """The log proxy: its value and slope against numpy, and the slope is the value's
    derivative (central differences on changed parameters)."""
    parts, base, steps = _case(seed)
    k = base.shape[0]
    d = np.concatenate([p[:k] for p in parts], axis=1) / steps - base  # float32, as the kernel takes it
    a = np.abs(d.astype(np.float64))
    value, slope = log_distance(*parts, base, steps, scale, knee)
    assert value == pytest.approx(scale * float(np.log2(1.0 + a / knee).sum()), rel=1e-12)
    want = (np.sign(d) / (np.log(2.0) * (knee + a) * steps.astype(np.float64))).astype(np.float32) * np.float32(scale)
    np.testing.assert_allclose(slope, want, rtol=1e-6)
    assert np.all(slope[d == 0] == 0)  # an unchanged parameter: no pull either way
    rng = np.random.default_rng(seed)
    for i, j in zip(rng.integers(0, k, 12), rng.integers(0, 8, 12)):
        if abs(d[i, j]) < 0.05:
            continue
        col = np.concatenate(parts, axis=1).astype(np.float64)
        h = 1e-3 * steps[j]
        values = []
        for sign in (1, -1):
            moved = col.copy()
            moved[i, j] += sign * h
            dd = moved[:k] / steps - base
            values.append(scale * np.log2(1.0 + np.abs(dd) / knee).sum())
        assert slope[i, j] == pytest.approx((values[0] - values[1]) / (2 * h), rel=2e-3)


def test_the_cpu_rate_node_matches_the_tensor_expression():
    """video_encoder's rate proxy: the numba node (CPU) against the tensor expression the
    other devices run, values and gradients, for the L1 and the log shape."""
    import torch

    from gsvc.model import GaussianLayer
    from gsvc.video_encoder import _rate_bits, _rate_bits_expression

    parts, base, steps = _case(3)
    for log in (None, (3.0, 0.25)):
        got, want = [], []
        for fn in (_rate_bits(torch.from_numpy(base), torch.from_numpy(steps), log),
                   _rate_bits_expression(torch.from_numpy(base), torch.from_numpy(steps), log)):
            layer = GaussianLayer(*(torch.tensor(p, requires_grad=True) for p in parts))
            value = fn(layer)
            value.backward()
            got.append((value.item(), [t.grad.numpy().copy() for t in layer.tensors()]))
        (v1, g1), (v2, g2) = got
        assert v1 == pytest.approx(v2, rel=1e-5)
        for a, b in zip(g1, g2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
