"""Resolution layers: layers 1..k also trained at a reduced scale, drawn as the decoder
draws that scale, against the target shrunk with the area filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvc.codec import EncodeSettings, decode_image, encode_image
from gsvc.decoder import output_size
from gsvc.media import resize
from gsvc.metrics import psnr
from gsvc.model import GaussianLayer
from gsvc.quantize import QuantSettings
from gsvc.render import render
from gsvc.render.resample import area_shrink
from gsvc.train import RESOLUTION_LAYERS, TrainSettings, fit, refine, render_scaled

STEPS = QuantSettings().steps()


def _leaves(n: int, width: int, height: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    means = torch.rand(n, 2, generator=g) * torch.tensor([width, height], dtype=torch.float32)
    chol = torch.randn(n, 3, generator=g) * 0.4 + torch.tensor([0.5, 0.5, 0.0])
    colors = torch.rand(n, 3, generator=g) * 0.6
    return [t.requires_grad_() for t in (means, chol, colors)]


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * weights).sum(), leaves))


# integer and non-integer ratios: the thumbnail resampled from the full-size render is
# the decoder's picture at that scale, and gradients pass through it
@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("size,scale", [((48, 32), 0.25), ((48, 32), 0.5), ((50, 30), 0.25), ((48, 32), 0.3)])
def test_scaled_render_is_the_decoders_picture_and_passes_its_gradient(backend, size, scale):
    w, h = size
    leaves = _leaves(80, w, h)
    out = output_size(w, h, scale)
    expected = render(*leaves, out.height, out.width, backend=backend, scale=out.scale)
    full = render(*leaves, h, w, backend=backend)
    got = render_scaled([GaussianLayer(*leaves)], full, scale, out.height, out.width, backend)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.rand(got.shape, generator=torch.Generator().manual_seed(2))
    for a, b in zip(_grads(got, leaves, weights), _grads(expected, leaves, weights)):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_settings():
    assert TrainSettings().resolution_scales is None
    assert TrainSettings().intermediate_scale(1) == 1.0
    s = TrainSettings(resolution_scales=RESOLUTION_LAYERS)
    assert [s.intermediate_scale(k) for k in (1, 2, 3)] == [0.25, 0.5, 1.0]
    for bad in [(0.0,), (0.5, 1.5), (-0.25,)]:
        with pytest.raises(ValueError):
            TrainSettings(resolution_scales=bad)
    with pytest.raises(ValueError):
        TrainSettings(resolution_full_weight=-1.0)


def test_scales_of_one_are_the_default_training(crop):
    target = torch.from_numpy(crop.astype(np.float32) / 255)[:16, :24]
    a = fit(target, (12, 6, 6), TrainSettings(iterations=30), STEPS, backend="numba")
    b = fit(target, (12, 6, 6), TrainSettings(iterations=30, resolution_scales=(1.0, 1.0)), STEPS, backend="numba")
    for la, lb in zip(a.layers, b.layers):
        for ta, tb in zip(la.tensors(), lb.tensors()):
            assert torch.equal(ta, tb)


def test_refine_trains_resolution_layers_too(encoded, crop):
    # video P-frames start from given layers; the thumbnail term applies there as well
    target = torch.from_numpy(crop.astype(np.float32) / 255)
    settings = TrainSettings(resolution_scales=RESOLUTION_LAYERS, resolution_full_weight=0.0)
    before = _thumbnail_psnr(encoded.model, crop)
    layers = refine(target, encoded.model.layers, settings, iterations=20, lr_scale=0.15, backend="numba")
    after = _thumbnail_psnr(type(encoded.model)(48, 32, layers), crop)
    assert after > before, (before, after)


def _thumbnail_psnr(model, crop) -> float:
    """Layer 1 at 1/4 size (unquantized) against the crop area-downscaled to it."""
    target = torch.from_numpy(crop.astype(np.float32) / 255)
    h, w = crop.shape[:2]
    ref = area_shrink(target, h // 4, w // 4)
    with torch.no_grad():
        thumb = model.render(1, backend="numba", scale=0.25)
    return -10 * np.log10(float(((thumb - ref) ** 2).mean()))


def test_resolution_layers_make_a_better_thumbnail_and_decode(encoded, crop):
    # the same settings as the shared ``encoded`` stream (conftest), resolution layers on
    settings = EncodeSettings(gaussians=(60, 30, 30), device="cpu",
                              train=TrainSettings(iterations=240, seed=0, resolution_scales=RESOLUTION_LAYERS))
    result = encode_image(crop, settings)
    # the trained model's thumbnail is closer to the area-downscaled crop (seeds 0-4 all
    # gain 0.4 to 2.7 dB here; the full picture loses about 0.5 dB)
    gain = _thumbnail_psnr(result.model, crop) - _thumbnail_psnr(encoded.model, crop)
    assert gain > 0.2, gain
    # and the stream decodes at every layer count and scale
    for k in (1, 2, 3):
        for scale in (0.25, 0.5, 1.0):
            picture = decode_image(result.data, layers=k, scale=scale)
            ref = resize(crop, round(48 * scale), round(32 * scale))
            assert picture.shape == ref.shape
            assert psnr(picture, ref) > 28.0, (k, scale)


def test_cli_flag(tmp_path, crop):
    from click.testing import CliRunner

    from gsvc.cli import main
    from gsvc.media import write_image

    write_image(tmp_path / "in.png", crop)
    args = ["encode", str(tmp_path / "in.png"), "--gaussians", "12,6,6", "--iterations", "20", "-q"]
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "rl.gsv"), "--resolution-layers"])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "plain.gsv")])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "rl.gsv").read_bytes() != (tmp_path / "plain.gsv").read_bytes()  # the flag changes training
