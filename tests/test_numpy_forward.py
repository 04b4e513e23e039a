"""The numpy forward draws numba's picture bit for bit (gsvc/render/numpy_forward.py).

Outputs are compared as raw float32 bits (not allclose): the decoder picks either
engine by the amount of work, and that choice must never change a pixel.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from gsvc import render
from gsvc.render import conics_from_chol, numpy_forward as npf, render_array
from gsvc.render import numba_kernels as nbk

from golden import DATA

F32 = np.float32


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == F32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def both(means, conics, colors, h, w):
    """(numpy, numba) forward of the same float32 scene; the boxes agree too."""
    means, conics, colors = (np.ascontiguousarray(x, dtype=F32) for x in (means, conics, colors))
    boxes = npf.pixel_boxes(means, conics, h, w)
    assert np.array_equal(boxes, nbk.pixel_boxes(means, conics, h, w))
    assert npf.box_work(boxes) == nbk.box_work(boxes)
    return npf.forward_sum(means, conics, colors, h, w), nbk.forward_sum(means, conics, colors, h, w)


def random_scene(rng, n, h, w, log_sigma=(0.5, 1.0), spread=0.2):
    """Gaussians about the image (some off it): log-Cholesky -> conics as the decoder does."""
    means = rng.uniform([-spread * w, -spread * h], [(1 + spread) * w, (1 + spread) * h], (n, 2))
    chol = np.stack([rng.normal(*log_sigma, n), rng.normal(*log_sigma, n), rng.normal(0.0, 1.0, n)], axis=1)
    conics = conics_from_chol(chol.astype(F32), 1.0)
    colors = rng.normal(0.3, 0.5, (n, 3))
    return means.astype(F32), np.asarray(conics, F32), colors.astype(F32)


SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (12, 16), (17, 33), (31, 129), (64, 64), (97, 61), (130, 250)]


@pytest.mark.parametrize("h,w", SIZES)
def test_random_scenes_match_numba_bit_for_bit(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    for n, log_sigma in [(0, (0.5, 1.0)), (1, (0.5, 1.0)), (40, (0.5, 1.0)), (300, (0.0, 1.5)),
                         (60, (-3.0, 0.5)), (20, (4.0, 1.0)), (5, (9.0, 1.0))]:
        a, b = both(*random_scene(rng, n, h, w, log_sigma), h, w)
        assert same_bits(a, b), (h, w, n, log_sigma, np.abs(a - b).max())


def test_trained_scene_statistics():
    """About what the encoder makes at 768x512 (default counts 5000/2000/2000, scaled
    down here): base Gaussians of ~spacing size, smaller enhancement ones with colours of
    both signs, positions and shapes on the quantizer's grid."""
    rng = np.random.default_rng(7)
    h, w = 192, 288
    parts = []
    for n, size, color in [(700, 0.8, (0.45, 0.25)), (280, 0.5, (0.0, 0.15)), (280, 0.4, (0.0, 0.1))]:
        spacing = np.sqrt(h * w / n)
        sigma = np.clip(size * spacing * rng.lognormal(0.0, 0.4, n), 0.6, min(h, w) / 3)
        chol = np.stack([np.log(sigma) + rng.normal(0, 0.3, n), np.log(sigma) + rng.normal(0, 0.3, n),
                         rng.normal(0, 0.6, n)], axis=1)
        means = rng.uniform([0, 0], [w, h], (n, 2))
        parts.append((np.round(means * 16) / 16, np.round(chol * 64) / 64, rng.normal(*color, (n, 3))))
    means, chol, colors = (np.concatenate([p[i] for p in parts]).astype(F32) for i in range(3))
    for scale in (1.0, 2.0, (1.5, 0.75)):
        sx, sy = render.scale_xy(scale)
        hh, ww = round(h * sy), round(w * sx)
        m = means * np.array([sx, sy], F32)
        a, b = both(m, conics_from_chol(chol, scale), colors, hh, ww)
        assert same_bits(a, b), scale


def test_edge_cases_match_numba():
    """Invalid, degenerate, extreme and far-away Gaussians, and colours of any sign."""
    h, w = 23, 37
    nan, inf = np.nan, np.inf
    conics = [
        [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [1.0, 1.0, 1.0],  # invalid, det 0
        [1.0, 0.999999, 1.0], [1.0, -0.9999, 1.0], [nan, 0.0, 1.0], [1.0, inf, 1.0], [inf, 0.0, inf],
        [1e30, 0.0, 1e30], [1e-30, 0.0, 1e-30], [1e-6, 0.0, 1e-6], [3e38, 1e38, 3e38], [1e-4, 1e-4 * 0.999, 1e-4],
        [4.0, 0.0, 0.01], [0.01, 0.0, 4.0], [2.0, -1.99, 2.0], [0.5, 0.2, 0.3], [1e20, 0.0, 1e-20],
    ]
    means = [
        [5.0, 5.0], [10.0, 10.0], [0.0, 0.0], [-3.0, 40.0], [1e30, 5.0], [5.0, -1e30], [nan, 3.0], [3.0, inf],
        [18.5, 11.5], [0.5, 0.5], [36.5, 22.5], [-100.0, -100.0], [1e7, 1e7], [-0.0, 23.0], [37.0, -0.0],
        [18.25, 11.75], [1e4, 1e4], [18.0, 11.0], [18.0, 11.0],
    ]
    colors = [[1.0, -1.0, 0.0], [-0.0, 0.0, -0.0], [1e-30, -1e-30, 1e30], [3.0, 2.0, 1.0]] * 5
    rng = np.random.default_rng(3)
    for _ in range(4):
        order = rng.permutation(len(conics))
        a, b = both(np.array(means, F32)[order], np.array(conics, F32)[order], np.array(colors[: len(conics)], F32),
                    h, w)
        assert same_bits(a, b)


def test_many_layers_deep_overlap():
    """Hundreds of Gaussians on one pixel: the summation order is the whole story."""
    rng = np.random.default_rng(11)
    n, h, w = 600, 20, 20
    means = (10 + rng.normal(0, 1.5, (n, 2))).astype(F32)
    conics = conics_from_chol(np.stack([rng.normal(1.5, 0.5, n), rng.normal(1.5, 0.5, n), rng.normal(0, 1, n)],
                                       axis=1).astype(F32), 1.0)
    colors = rng.normal(0, 1, (n, 3)).astype(F32)
    a, b = both(means, conics, colors, h, w)
    assert same_bits(a, b)


def test_non_finite_colors_are_refused():
    with pytest.raises(ValueError, match="finite"):
        npf.forward_sum(np.zeros((1, 2), F32), np.array([[1, 0, 1]], F32), np.array([[np.nan, 0, 0]], F32), 4, 4)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, (1.25, 0.6)])
def test_render_array_engines_agree(scale):
    rng = np.random.default_rng(5)
    n, h, w = 400, 48, 72
    means = rng.uniform([0, 0], [w, h], (n, 2)).astype(F32)
    chol = np.stack([rng.normal(1.0, 0.6, n), rng.normal(1.0, 0.6, n), rng.normal(0, 0.7, n)], axis=1).astype(F32)
    colors = rng.normal(0.2, 0.4, (n, 3)).astype(F32)
    sx, sy = render.scale_xy(scale)
    hh, ww = round(h * sy), round(w * sx)
    a = render_array(means, chol, colors, hh, ww, scale, engine="numpy")
    b = render_array(means, chol, colors, hh, ww, scale, engine="numba")
    assert same_bits(a, b)


def test_engine_rule(monkeypatch):
    colors = np.zeros((3, 3), F32)
    monkeypatch.setattr(render, "_numba_loaded", lambda: False)
    monkeypatch.setattr(render, "_numpy_work", 0)
    monkeypatch.setattr(render, "NUMPY_MAX_WORK", 100)
    assert render._use_numpy(60, colors)
    assert render._numpy_work == 60
    assert not render._use_numpy(60, colors)  # the process's budget is spent: numba from here
    assert render._use_numpy(40, colors)
    monkeypatch.setattr(render, "_numpy_work", 0)
    assert not render._use_numpy(1, np.array([[np.inf, 0, 0]], F32))  # numba's rule for non-finite colours
    monkeypatch.setattr(render, "_numba_loaded", lambda: True)
    assert not render._use_numpy(1, colors)  # numba already loaded: it is faster
    assert "gsvc.render.numba_kernels" in sys.modules and render._numba_loaded.__module__ == __name__


@pytest.fixture(scope="module")
def kodak_stream(example_rgb) -> bytes:
    """A real encode of the bundled example at 768x512 with the default counts (2 steps)."""
    from gsvc.encoder import EncodeSettings, encode_image
    from gsvc.train import TrainSettings

    rgb = np.ascontiguousarray(example_rgb.repeat(2, axis=0).repeat(2, axis=1))
    return encode_image(rgb, EncodeSettings(train=TrainSettings(iterations=2), device="cpu")).data


@pytest.mark.parametrize("source", ["golden", "golden_video", "kodak"])
def test_decoded_streams_identical_with_either_engine(monkeypatch, source, request):
    from gsvc.decoder import decode_image, decode_video

    def decode(engine_budget: int):
        monkeypatch.setattr(render, "NUMPY_MAX_WORK", engine_budget)
        monkeypatch.setattr(render, "_numpy_work", 0)
        monkeypatch.setattr(render, "_numba_loaded", lambda: False)  # as in a fresh process
        if source == "golden_video":
            return np.stack(decode_video(DATA / "tiny_video.gsv"))
        data = (DATA / "tiny.gsv").read_bytes() if source == "golden" else request.getfixturevalue("kodak_stream")
        scales = (1.0, 0.5, 2.0) if source == "golden" else (1.0, 0.25)
        return [decode_image(data, layers=k, scale=s) for k in (1, None) for s in scales]

    with_numpy = decode(1 << 40)
    assert render._numpy_work > 0
    with_numba = decode(0)
    assert render._numpy_work == 0
    for a, b in zip(with_numpy, with_numba):
        np.testing.assert_array_equal(a, b)


def test_kodak_stream_float_pictures_bit_for_bit(kodak_stream):
    """The float32 sums themselves (before uint8), at the size the benchmark decodes."""
    from gsvc.decoder import read
    from gsvc.layer_codec import decode_intra
    from gsvc.params import dequantize_array

    stream = read(kodak_stream)
    hdr = stream.header
    p = np.concatenate([dequantize_array(decode_intra(c.data, c.count, hdr.coder), hdr.steps) for c in stream.layers])
    means, conics, colors = p[:, 0:2], conics_from_chol(p[:, 2:5], 1.0), p[:, 5:8]
    a, b = both(means, conics, colors, hdr.height, hdr.width)
    assert same_bits(a, b)
    assert npf.box_work(npf.pixel_boxes(np.ascontiguousarray(means), np.ascontiguousarray(conics, dtype=F32),
                                        hdr.height, hdr.width)) < render.NUMPY_MAX_WORK


def test_cells_left_out_keep_no_pixel():
    """A (Gaussian, cell) pair is skipped only when no pixel of it passes the float32
    cut-off (brute force over random, elongated, near-boundary pairs)."""
    rng = np.random.default_rng(13)
    n = 100_000
    chol = np.stack([rng.normal(1.0, 1.5, n), rng.normal(1.0, 1.5, n), rng.normal(0.0, 3.0, n)], axis=1)
    conics = np.ascontiguousarray(conics_from_chol(chol.astype(F32), 1.0), dtype=F32)
    means = rng.uniform(0, 300, (n, 2)).astype(F32)
    # rectangles near each Gaussian: about where its ellipse ends
    reach = np.sqrt(render.Q_MAX / np.minimum(conics[:, 0], conics[:, 2]))
    x_lo = np.floor(means[:, 0] + rng.uniform(-1.5, 1.5, n) * reach).astype(np.int64)
    y_lo = np.floor(means[:, 1] + rng.uniform(-1.5, 1.5, n) * reach).astype(np.int64)
    x_hi = x_lo + rng.integers(0, 8, n)
    y_hi = y_lo + rng.integers(0, 8, n)
    miss = npf._misses(means, conics, np.arange(n), x_lo, x_hi, y_lo, y_hi)
    assert 0.2 < miss.mean() < 0.9
    # every pixel of the skipped pairs, in the kernels' float32 order
    i = np.flatnonzero(miss)
    off = np.arange(8)
    px = x_lo[i, None] + off  # [M, 8]
    py = y_lo[i, None] + off
    dx = ((px.astype(F32) + F32(0.5)) - means[i, 0, None])[:, None, :]
    dy = ((py.astype(F32) + F32(0.5)) - means[i, 1, None])[:, :, None]
    ca, cb2, cc = (x[:, None, None] for x in (conics[i, 0], F32(2) * conics[i, 1], conics[i, 2]))
    q = (ca * dx * dx + cb2 * dx * dy) + cc * dy * dy
    inside = (px <= x_hi[i, None])[:, None, :] & (py <= y_hi[i, None])[:, :, None]
    closest = np.where(inside, q, np.inf).min(axis=(1, 2))
    assert (closest > npf._Q32).all()
    assert closest.min() < 1.001 * npf._Q32  # the test reaches the edge of the cut-off
