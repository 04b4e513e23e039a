"""The P-frames' rate proxy on numba (gsvc.step_l1) against its numpy expressions: the
same slopes, gradients and shrunk parameters bit for bit, the same value to rounding."""
import numpy as np
import pytest

from gsvc.step_l1 import distance_grads, shrink_towards, step_distance


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
