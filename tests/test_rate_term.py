"""The rate term of the training loss (gsvc/rate_term.py): the code length of a layer's
shape and colour streams under coder 2's own model, differentiable in between."""
import numpy as np
import pytest
import torch

from bitstream.entropy import peaked_code_lengths
from gsvc.codec import EncodeSettings, encode_image
from gsvc.colour_rounding import ColourRounding
from gsvc.layer_codec import DEFAULT_CODER
from gsvc.model import GaussianLayer
from gsvc.quantize import QuantSettings
from gsvc.rate_term import RateTerm, rate_weight
from gsvc.train import TrainSettings

STEPS = QuantSettings().steps()


def _layer(n: int = 400, seed: int = 0, integer: bool = True) -> GaussianLayer:
    rng = np.random.default_rng(seed)
    q = np.stack([rng.integers(0, 800, n), rng.integers(0, 600, n), np.round(rng.laplace(40, 6, n)),
                  np.round(rng.laplace(40, 6, n)), np.round(rng.laplace(0, 3, n)),
                  np.round(rng.laplace(10, 20, n)), np.round(rng.laplace(12, 20, n)),
                  np.round(rng.laplace(8, 20, n))], 1)
    if not integer:
        q = q + rng.uniform(-0.4, 0.4, q.shape)
    cols = torch.tensor(q * np.asarray(STEPS), dtype=torch.float32)
    return GaussianLayer(cols[:, 0:2].clone(), cols[:, 2:5].clone(), cols[:, 5:8].clone())


def test_bits_at_integers_are_the_peaked_code_lengths():
    layer = _layer()
    q = np.rint(torch.cat(layer.tensors(), 1).numpy() / np.asarray(STEPS)).astype(np.int64)
    streams = [q[:, 2], q[:, 3], q[:, 4], q[:, 6], q[:, 5] - q[:, 6], q[:, 7] - q[:, 6]]  # coder 2's colours
    expected = 0.0
    for s in streams:
        lo, bits = peaked_code_lengths(s)
        expected += bits[s - lo].sum()
    (got,) = RateTerm(STEPS, DEFAULT_CODER).bits([layer])
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_gradient_is_the_slope_of_the_code_length_and_points_to_the_mode():
    layer = _layer(integer=False)
    for t in layer.tensors():
        t.requires_grad_(True)
    term = RateTerm(STEPS, DEFAULT_CODER)
    (bits,) = term.bits([layer])
    bits.backward()
    assert layer.means.grad is None or torch.all(layer.means.grad == 0)  # positions are not priced
    # a step of the shear away from its mode costs bits: the gradient points away from it
    r = layer.chol[:, 2].detach() / STEPS[4]
    g = layer.chol.grad[:, 2]
    far = (r - 0.0).abs() > 3
    assert torch.all(torch.sign(g[far]) == torch.sign(r[far]))
    # finite differences inside one integer cell agree with autograd
    with torch.no_grad():
        i = int(torch.nonzero(far)[0])
        h = 0.01 * STEPS[4]
        layer.chol[i, 2] += h
        (up,) = term.bits([layer])
        layer.chol[i, 2] -= 2 * h
        (down,) = term.bits([layer])
    assert float((up - down) / (2 * h)) == pytest.approx(float(g[i]), rel=1e-2)


def test_rate_weight_scales_with_the_distortion():
    assert rate_weight(2e-3, 1000, 8.0) == pytest.approx(2 * rate_weight(1e-3, 1000, 8.0))
    assert rate_weight(1e-3, 1000, 8.0) == pytest.approx(8.0 * np.log(10) / 10 * 1e-3 / 1000)


def test_the_rate_term_shrinks_the_stream_and_stays_deterministic(crop):
    def encode(slope):
        train = TrainSettings(iterations=200, seed=0, rate_slope=slope, rate_from=0.2)
        return encode_image(crop, EncodeSettings(gaussians=(40, 20, 20), train=train, device="cpu")).data

    plain, priced = encode(0.0), encode(40.0)
    assert len(priced) < 0.99 * len(plain)
    assert encode(40.0) == priced


def test_tails_price_each_step_away_from_the_mode_at_the_models_tail_slope():
    from bitstream.entropy import peaked_tail_slopes

    layer = _layer(seed=3)
    term = RateTerm(STEPS, DEFAULT_CODER, tails=True)
    (base,) = term.bits([layer])
    q = np.rint(layer.chol[:, 2].numpy() / STEPS[4]).astype(np.int64)
    mode, left, right = peaked_tail_slopes(q)
    i = int(np.argmax(q))  # the largest shear: one more step right costs `right` bits
    with torch.no_grad():
        layer.chol[i, 2] += STEPS[4]
    (moved,) = term.bits([layer])
    assert float(moved - base) == pytest.approx(right, abs=2e-3)  # float32 sums of ~2400 terms
    assert 0 < left < 8 and 0 < right < 8 and q.min() < mode < q.max()


def test_size_targets_train_with_the_rate_term_and_still_meet_them(crop):
    from gsvc.rate_control import RateSettings

    def encode(slope):
        # (the training's rate term alone: the colour rounding at the end prices bits too)
        train = TrainSettings(iterations=150, seed=0, colour_rounding=ColourRounding(passes=0))
        # (400 / 800 B: at the pictures' coarser steps since the eighth session, 300 / 600 B
        # held 59 Gaussians with and without the rate term; here 95 against 97)
        settings = EncodeSettings(gaussians=None, targets=(400, 800), device="cpu", train=train,
                                  rate=RateSettings(slope=slope))
        return encode_image(crop, settings)

    plain, priced = encode(0.0), encode(6.0)
    for result in (plain, priced):
        assert 0.95 * 800 <= len(result.data) <= 800
    # cheaper Gaussians: more of them in the same bytes
    assert sum(priced.model.counts) > sum(plain.model.counts)


def test_a_layer_is_priced_once_it_has_trained_the_start_iterations():
    from gsvc.rate_term import LayerPricing

    layers = [_layer(seed=4), _layer(seed=5)]
    term = RateTerm(STEPS, DEFAULT_CODER, tails=True)
    bits = [float(b) for b in term.bits(layers)]
    pricing = LayerPricing(RateTerm(STEPS, DEFAULT_CODER, tails=True), slope=6.0, start=10, pixels=1000)
    pricing.add_layer(0)
    pricing.add_layer(8)  # joins at iteration 8
    mse = torch.tensor(1e-3)
    assert pricing(layers, 5, mse, None) == 0.0  # nobody has trained 10 iterations yet
    first = float(pricing(layers, 12, mse, None))  # layer 1 only
    assert first == pytest.approx(rate_weight(1e-3, 1000, 6.0) * bits[0], rel=1e-5)
    both = float(pricing(layers, 18, mse, None))
    assert both == pytest.approx(rate_weight(1e-3, 1000, 6.0) * sum(bits), rel=1e-5)
    top_free = LayerPricing(RateTerm(STEPS, DEFAULT_CODER, tails=True), 6.0, 0, 1000, layers=1)
    top_free.add_layer(0)
    top_free.add_layer(0)
    assert float(top_free(layers, 50, mse, None)) == pytest.approx(first, rel=1e-5)


@pytest.mark.parametrize("coder", [1, DEFAULT_CODER])
def test_the_fused_tails_match_the_torch_form_in_value_and_gradient(coder):
    """The CPU's one-pass proxy (gsvc.tail_bits) against the plain torch expression
    (``_Tails`` on the streams), as gsplat tests a kernel against its reference."""
    layer = _layer(seed=5, integer=False)
    with torch.no_grad():  # some values exactly at a stream's mode: the slope there is right - left
        layer.chol[:7, 2] = 0.0
    term = RateTerm(STEPS, coder, tails=True)
    term.bits([layer])  # fit the models
    (model,) = term._models
    grads = []
    for fused in (True, False):
        leaf = GaussianLayer(*(t.clone().requires_grad_(True) for t in layer.tensors()))
        value = term._bits(leaf, model) if fused else model(term._streams(leaf))
        (0.37 * value).backward()
        grads.append((value.detach().item(), leaf.chol.grad, leaf.colors.grad, leaf.means.grad))
    (v1, c1, k1, m1), (v2, c2, k2, m2) = grads
    assert v1 == pytest.approx(v2, rel=1e-5)
    torch.testing.assert_close(c1, c2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k1, k2, rtol=1e-6, atol=1e-6)
    assert m1 is None and not m2.any()  # positions are not priced
    assert c1[:7, 2].abs().sum() > 0
