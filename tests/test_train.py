"""Training behaviour: layers that earn their bytes, a hole-free base, the quantizer."""
import math

import numpy as np
import pytest
import torch

from gsvc.codec import to_uint8
from gsvc.metrics import hole_fraction, psnr
from gsvc.model import GaussianLayer, LayeredImage
from gsvc.quantize import QuantSettings, dequantize, fake_quantize, from_streams, quantize, to_streams
from gsvc.colour_solve import prefix_weights
from gsvc.loss import clamped_mse
from gsvc.train import ScaledTargets, TrainSettings, _stage_iterations, fit, joint_loss

STEPS = QuantSettings().steps()


def _target(crop):
    return torch.from_numpy(crop.astype(np.float32) / 255)


def test_base_layer_alone_is_complete(encoded, crop):
    base = to_uint8(encoded.model.render(1))
    assert hole_fraction(base, crop) == 0.0
    # the metric does see holes: drop the Gaussians of the left half of the base layer
    # and its background Gaussian (wider than the picture, it draws the mean everywhere)
    layer = encoded.model.layers[0]
    keep = (layer.means[:, 0] > crop.shape[1] / 2) & (layer.chol[:, :2].min(1).values < math.log(crop.shape[1]))
    holed = LayeredImage(48, 32, [GaussianLayer(*(t[keep] for t in layer.tensors()))])
    assert hole_fraction(to_uint8(holed.render()), crop) > 0.2


def test_joint_training_makes_every_layer_add_detail(encoded, crop):
    values = [psnr(to_uint8(encoded.model.render(k)), crop) for k in (1, 2, 3)]
    assert values[1] - values[0] > 0.4 and values[2] - values[1] > 0.4, values


def test_stage_schedule():
    s = TrainSettings(iterations=1000, warmup_share=0.1)
    assert _stage_iterations(s, 3) == [100, 100, 800]
    assert _stage_iterations(TrainSettings(iterations=10, warmup_share=0.5), 3) == [3, 3, 4]
    seq = TrainSettings(iterations=1000, mode="sequential")
    assert _stage_iterations(seq, 3) == [333, 333, 334]
    assert sum(_stage_iterations(TrainSettings(iterations=7), 4)) == 7


def test_sequential_training_freezes_lower_layers(crop):
    target = _target(crop)
    seen = {}

    def spy(done, total, value):
        seen[done] = value

    settings = TrainSettings(iterations=60, mode="sequential", seed=1)
    model = fit(target, (30, 15), settings, STEPS, backend="torch", progress=spy)
    assert len(seen) == 60
    # layer 1 was fitted first and then frozen at its quantized values: refitting only
    # layer 1 with the same seed for its share of the iterations gives the same layer
    alone = fit(target, (30,), TrainSettings(iterations=30, mode="sequential", seed=1), STEPS, backend="torch")
    for a, b in zip(model.layers[0].tensors(), fake_quantize(alone.layers[0], STEPS).tensors()):
        torch.testing.assert_close(a, b)


def test_joint_mode_updates_all_layers_together(crop):
    target = _target(crop)
    model = fit(target, (30, 15), TrainSettings(iterations=40, warmup_share=0.25), STEPS, backend="torch")
    alone = fit(target, (30,), TrainSettings(iterations=10), STEPS, backend="torch")
    # the base layer kept training after layer 2 arrived
    assert not torch.allclose(model.layers[0].means, alone.layers[0].means)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_joint_loss_weighs_each_prefix_by_its_rising_weight(crop, backend):
    target = _target(crop)
    layers = fit(target, (20, 10, 10), TrainSettings(iterations=9), STEPS, backend="torch").layers
    settings = TrainSettings(aspect_weight=0.0)
    h, w = target.shape[:2]
    for it, k in ((0, 1), (1, 2), (2, 1)):
        loss, full, (kk, part) = joint_loss(layers, ScaledTargets(target), it, settings, backend)
        assert kk == k
        low = LayeredImage(w, h, layers[:k]).render(backend="torch")
        assert part.item() == pytest.approx(clamped_mse(low, target).item(), rel=1e-4)
        # layer 1's term at half the weight of layers 1-2's (prefix_weights: 1/2, 1)
        weight = prefix_weights(3, settings.intermediate_weight)[k - 1]
        assert weight == (0.5, 1.0)[k - 1]
        assert loss.item() == pytest.approx(full.item() + weight * part.item(), rel=1e-5)


def test_fake_quantization_equals_stream_quantization():
    g = torch.Generator().manual_seed(0)
    layer = GaussianLayer(torch.rand(50, 2, generator=g) * 40, torch.randn(50, 3, generator=g),
                          torch.rand(50, 3, generator=g))
    fq = fake_quantize(layer, STEPS)
    q = quantize(layer, STEPS)
    back = dequantize(from_streams(to_streams(q)), STEPS)
    # same set of Gaussians (the stream sorts them)
    key = lambda l: torch.cat(l.tensors(), 1).detach().double().numpy()
    a = key(fq)
    b = key(back)
    np.testing.assert_allclose(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])], atol=1e-5)


def test_fake_quantization_passes_gradients_straight_through():
    means = torch.rand(5, 2, requires_grad=True)
    layer = GaussianLayer(means, torch.zeros(5, 3), torch.zeros(5, 3))
    fake_quantize(layer, STEPS).means.sum().backward()
    torch.testing.assert_close(means.grad, torch.ones(5, 2))


@pytest.mark.parametrize("mode", ["joint", "sequential"])
def test_progress_reports_every_iteration(crop, mode):
    calls = []
    fit(_target(crop)[:16, :16], (8, 4, 4), TrainSettings(iterations=12, mode=mode), STEPS,
        backend="torch", progress=lambda d, t, p: calls.append((d, t)))
    assert calls == [(i, 12) for i in range(1, 13)]


def test_aspect_penalty_only_past_the_bound_and_pulls_towards_round():
    from gsvc.train import TrainSettings, aspect_penalty

    s = TrainSettings(max_aspect=6.0, aspect_weight=1e-3)
    round_ = GaussianLayer(torch.zeros(2, 2), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.2, 0.5]]), torch.zeros(2, 3))
    assert float(aspect_penalty([round_], s)) == 0.0  # aspects 1 and ~2.3
    chol = torch.tensor([[2.0, -1.0, 0.0]], requires_grad=True)  # aspect e^3 ~ 20
    needle = GaussianLayer(torch.zeros(1, 2), chol, torch.zeros(1, 3))
    penalty = aspect_penalty([needle], s)
    assert penalty.item() > 0
    penalty.backward()
    assert chol.grad[0, 0] > 0 and chol.grad[0, 1] < 0  # descent shrinks a - b
    assert float(aspect_penalty([needle], TrainSettings(aspect_weight=0.0))) == 0.0


def test_fit_resizes_once_per_point_and_only_with_all_layers():
    target = torch.rand(12, 16, 3)
    seen = []

    def resize(layers):
        seen.append([len(l) for l in layers])
        return [np.arange(len(l)) > 0 for l in layers]  # drop each layer's first Gaussian

    # 40 iterations: layer 1 alone for 4, layers 1-2 for 4, all three from iteration 9
    model = fit(target, (6, 5, 5), TrainSettings(iterations=40), STEPS, "torch", resize=resize, resize_at=(2, 3, 30))
    assert seen == [[6, 5, 5], [5, 4, 4]]  # 2 and 3 reached before layer 3 existed: one call, then 30
    assert model.counts == (4, 3, 3)


def test_small_optimizer_steps_run_on_one_thread_with_the_same_values():
    """``_step`` runs a small step with torch's threads at one and gives the values of a
    plain ``optimizer.step()`` bit for bit; the thread count is restored afterwards."""
    from gsvc.train import _step

    def trajectory(step):
        g = torch.Generator().manual_seed(3)
        params = [torch.randn(500, k, generator=g, requires_grad=True) for k in (2, 3, 3)]
        opt = torch.optim.Adam([{"params": [p]} for p in params], lr=0.05, eps=1e-15, fused=True)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            step(opt)
        return [p.detach().clone() for p in params]

    threads = torch.get_num_threads()
    seen = []

    class Watch(torch.optim.Adam):
        def step(self, closure=None):
            seen.append(torch.get_num_threads())
            return super().step(closure)

    ref = trajectory(lambda opt: opt.step())
    got = trajectory(_step)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert torch.get_num_threads() == threads
    p = torch.zeros(10, requires_grad=True)
    p.grad = torch.ones(10)
    _step(Watch([p], lr=0.1))
    assert seen == [1] and torch.get_num_threads() == threads



def test_a_flat_picture_is_drawn_flat_by_the_background_gaussian():
    """A flat picture (a title card, a fade's plateau) is one colour everywhere: the
    base layer's background Gaussian draws it flat, where pixel-sized Gaussians can only
    build it as a ripple of bumps (the same fit without it: 43 dB)."""
    target = torch.empty(36, 48, 3)
    target[...] = torch.tensor([0.55, 0.40, 0.30])

    def base_psnr(background):
        model = fit(target, (12, 4), TrainSettings(iterations=80, seed=0, background_spread=background), STEPS,
                    backend="numba")
        return psnr(to_uint8(model.render(1)), to_uint8(target))

    with_it, without = base_psnr(4.0), base_psnr(0.0)
    assert with_it > 50.0 and with_it > without + 6.0, (with_it, without)
