"""Resolution scalability: one stream decoded at any size keeps the picture right.

Quality is measured as users would: against the original shrunk with the area filter
(what `encode --size` and image editors do). A quarter-size decode must be as good as
shrinking the full decode; an enlargement keeps the brightness and the content.
"""
from __future__ import annotations

import numpy as np
import pytest

from gsvc.codec import EncodeSettings, decode_image, decode_video, encode_image
from gsvc.media import resize
from gsvc.metrics import psnr
from gsvc.train import TrainSettings

from golden import DATA


@pytest.fixture(scope="module")
def photo(example_rgb):
    """A 128x96 crop of the bundled Kodak picture (detail and flat areas) and its stream."""
    rgb = np.ascontiguousarray(example_rgb[64:160, 128:256])
    settings = EncodeSettings(gaussians=(300, 150, 150), train=TrainSettings(iterations=300, seed=0), device="cpu")
    return rgb, encode_image(rgb, settings).data


@pytest.mark.parametrize("scale", [0.25, 0.5])
@pytest.mark.parametrize("layers", [1, 3])
def test_shrunk_decode_is_as_good_as_shrinking_the_full_decode(photo, scale, layers):
    rgb, data = photo
    w, h = round(128 * scale), round(96 * scale)
    target = resize(rgb, w, h)
    direct = decode_image(data, layers=layers, scale=scale)
    assert direct.shape == (h, w, 3)
    shrunk = resize(decode_image(data, layers=layers), w, h)
    assert psnr(direct, target) >= psnr(shrunk, target) - 0.3


def test_non_integer_shrink_is_as_good_too(photo):
    rgb, data = photo
    for scale in (0.1, 0.4, 0.7):
        w, h = round(128 * scale), round(96 * scale)
        target = resize(rgb, w, h)
        direct = decode_image(data, scale=scale)
        shrunk = resize(decode_image(data), w, h)
        # the exact box filter here, swscale's "area" approximation for target and shrunk:
        # at non-integer ratios the two filters differ a little, which favours `shrunk`
        # (at 0.4 by 0.35-0.55 dB, measured over seeds 0-2 and two training builds)
        assert psnr(direct, target) >= psnr(shrunk, target) - 0.65, scale


def test_enlarged_decode_keeps_brightness_and_content(photo):
    _, data = photo
    full = decode_image(data).astype(np.float64)
    big = decode_image(data, scale=2.0)
    assert big.shape == (192, 256, 3)
    assert abs(big.mean() - full.mean()) < 0.5  # energy kept: no darkening
    assert psnr(resize(big, 128, 96), full.astype(np.uint8)) > 35.0


def test_explicit_size_and_aspect(photo):
    _, data = photo
    assert decode_image(data, size=(256, 0)).shape == (192, 256, 3)
    assert decode_image(data, size=(0, 24)).shape == (24, 32, 3)
    stretched = decode_image(data, size=(64, 96))  # anisotropic: x shrinks, y stays
    assert stretched.shape == (96, 64, 3)
    np.testing.assert_array_equal(decode_image(data, size=(128, 96)), decode_image(data))
    assert abs(stretched.astype(float).mean() - decode_image(data).astype(float).mean()) < 1.0


def test_video_frames_at_any_size():
    frames = decode_video(DATA / "tiny_video.gsv", scale=0.5)
    full = decode_video(DATA / "tiny_video.gsv")
    assert frames[0].shape[:2] == (full[0].shape[0] // 2, full[0].shape[1] // 2)
    for small, big in zip(frames, full):
        np.testing.assert_allclose(small.mean(), big.mean(), atol=2.0)
    assert decode_video(DATA / "tiny_video.gsv", size=(0, full[0].shape[0] * 2))[0].shape[1] == full[0].shape[1] * 2


def test_area_resampler_is_the_box_filter():
    import torch

    from gsvc.render.resample import area_shrink

    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (10, 14, 3)).astype(np.float32)
    # brute force: repeat every pixel 4 x 6 times, then output pixels are whole 10 x 14 blocks
    fine = np.repeat(np.repeat(img.astype(np.float64), 4, axis=0), 6, axis=1)  # [40, 84, 3]
    want = fine.reshape(4, 10, 6, 14, 3).mean((1, 3))
    np.testing.assert_allclose(area_shrink(img, 4, 6), want, atol=1e-6)
    np.testing.assert_allclose(area_shrink(img, 5, 7), img.reshape(5, 2, 7, 2, 3).mean((1, 3)), atol=1e-6)
    t = torch.from_numpy(img).requires_grad_()
    area_shrink(t, 4, 6).sum().backward()  # differentiable: each input pixel's weights sum to its share
    np.testing.assert_allclose(t.grad.numpy(), np.full_like(img, 4 * 6 / (10 * 14)), atol=1e-6)


def test_cli_size_and_scale(tmp_path):
    from click.testing import CliRunner

    from gsvc.cli import main
    from gsvc.media import read_image

    def run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args])
        return r.exit_code, r.stderr

    code, err = run("decode", DATA / "tiny.gsv", "--size", "32x0", "-o", tmp_path / "a.png")
    assert code == 0, err
    assert read_image(tmp_path / "a.png").shape == (24, 32, 3)
    code, err = run("decode", DATA / "tiny_video.gsv", "--size", "0x6", "-o", tmp_path / "v.mkv")
    assert code == 0, err
    code, err = run("decode", DATA / "tiny.gsv", "--size", "32x0", "--scale", "2", "-o", tmp_path / "b.png")
    assert code == 2 and "not both" in err
    code, err = run("decode", DATA / "tiny.gsv", "--size", "0x0", "-o", tmp_path / "c.png")
    assert code == 2 and not (tmp_path / "c.png").exists()
