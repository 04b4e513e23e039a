"""Coarse-to-fine fitting and early stopping: the schedule, the coarse render, determinism."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from gsvc.encoder import EncodeSettings, encode_image
from gsvc.model import GaussianLayer
from gsvc.presets import PRESETS, train_settings
from gsvc.quantize import QuantSettings
from gsvc.render import render
from gsvc.render.resample import area_shrink
from gsvc.train import PERFECT_RUN, TrainSettings, _Plateau, coarse_render, fit

STEPS = QuantSettings().steps()


def test_phase_schedule():
    s = TrainSettings(iterations=1000, coarse_phases=((0.25, 0.3), (0.5, 0.2)))
    assert [s.scale_at(i, 1000) for i in (0, 299, 300, 499, 500, 999)] == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert s.phase_ends(1000, 850) == [300, 500, 850, 1000]
    assert TrainSettings(iterations=10).scale_at(0, 10) == 1.0
    with pytest.raises(ValueError):
        TrainSettings(coarse_phases=((1.5, 0.2),))
    with pytest.raises(ValueError):  # must leave the quantization-aware share at full size
        TrainSettings(coarse_phases=((0.5, 0.9),), qat_share=0.15)
    TrainSettings(coarse_phases=((0.5, 0.9),))  # (pictures have none by default)


def test_presets_are_schedules_and_iterations_override_the_budget_only():
    medium = train_settings("medium")
    assert medium.iterations == PRESETS["medium"].iterations
    assert medium.plateau_window == PRESETS["medium"].plateau_window
    quick = train_settings("medium", 50, seed=3)
    assert (quick.iterations, quick.seed, quick.plateau_window) == (50, 3, medium.plateau_window)


def _scene(n=40, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * size
    chol = torch.cat([torch.rand(n, 2, generator=g) * 1.5 + 0.5, torch.randn(n, 1, generator=g) * 0.3], 1)
    colors = torch.rand(n, 3, generator=g) * 0.3
    return GaussianLayer(means, chol, colors)


@pytest.mark.parametrize("scale", [0.25, 0.5])
def test_coarse_render_keeps_the_energy_of_the_shrunk_picture(scale):
    """Gaussians drawn on the coarse grid approximate the decoder's shrink (full size,
    area-resampled): same total energy, small pixel error for Gaussians wider than a pixel."""
    g = _scene()
    full = render(g.means, g.chol, g.colors, 64, 64)
    shrunk = area_shrink(full, round(64 * scale), round(64 * scale))
    coarse = coarse_render(g, shrunk.shape[0], shrunk.shape[1], (scale, scale), "torch")
    assert coarse.shape == shrunk.shape
    torch.testing.assert_close(coarse.sum(), shrunk.sum(), rtol=0.02, atol=0.0)
    assert (coarse - shrunk).abs().mean() < 0.1 * shrunk.abs().mean()


def test_coarse_render_backends_agree_with_gradients():
    g = _scene(seed=1)
    outs = []
    for backend in ("torch", "numba"):
        leaves = [t.clone().requires_grad_(True) for t in g.tensors()]
        out = coarse_render(GaussianLayer(*leaves), 24, 32, (0.5, 0.375), backend)
        out.backward(torch.ones_like(out))
        outs.append((out.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_plateau_skips_to_the_end_of_a_flat_phase_only():
    s = TrainSettings(iterations=1000, plateau_window=5, plateau_tol_db=0.05)
    p = _Plateau(s, phase_ends=[400, 850, 1000])
    rising = [p.skip(done, 20.0 + 0.1 * done) for done in range(201, 230)]
    assert not any(rising)
    skips = [p.skip(done, 30.0) for done in range(230, 245)]
    jump = next(k for k in skips if k)
    assert 230 + skips.index(jump) + jump == 400  # to the end of the phase
    assert all(p.skip(done, 30.0) == 0 for done in range(851, 900))  # the last phase ends on no stall
    p = _Plateau(s, phase_ends=[400, 850, 1000])
    done = 851 + next(i for i in range(20) if p.skip(851 + i, 55.0))
    assert done == 851 + PERFECT_RUN - 1  # ... once a few iterations in a row are past plateau_psnr_db
    p = _Plateau(replace(s, plateau_window=50), phase_ends=[400, 850, 1000])
    psnrs = [55.0] * 4 + [49.0] + [55.0] * 40  # one iteration below breaks the run
    done = 851 + next(i for i, v in enumerate(psnrs) if p.skip(851 + i, v))
    assert done == 851 + 4 + PERFECT_RUN


def test_coarse_to_fine_with_early_stopping_is_deterministic_and_reports_progress(crop):
    settings = EncodeSettings(gaussians=(40, 20, 20), device="cpu", backend="numba",
                              train=TrainSettings(iterations=160, seed=0, coarse_phases=((0.25, 0.2), (0.5, 0.2)),
                                                  coarse_lr_power=1.0, plateau_window=5, plateau_tol_db=0.5))
    calls = []
    first = encode_image(crop, settings, progress=lambda d, t, p: calls.append(d))
    second = encode_image(crop, settings)
    assert first.data == second.data
    assert calls == sorted(calls) and calls[-1] == 160
    assert len(calls) < 160  # the generous tolerance made a phase stop early


def test_flat_picture_stops_early(crop):
    """A flat picture is learned at once: early stopping cuts the full-size phase short."""
    flat = torch.full((24, 32, 3), 0.4)
    calls = []
    fit(flat, (12, 6), TrainSettings(iterations=400, plateau_window=10), STEPS, backend="numba",
        progress=lambda d, t, p: calls.append(d))
    assert calls[-1] == 400 and len(calls) < 300


@pytest.mark.parametrize("qat_share", [0.0, 0.15])
def test_black_frame_skips_the_warm_up_stages(qat_share):
    """A picture already drawn perfectly (black: a fade, the first frame of a film)
    ends every phase after a few iterations that show it (PERFECT_RUN): each warm-up
    stage, the full-size phase and the quantization-aware share (if any)."""
    black = torch.zeros((24, 32, 3))
    settings = TrainSettings(iterations=400, warmup_share=0.25, plateau_window=10, qat_share=qat_share)
    calls = []
    first = fit(black, (12, 6, 6), settings, STEPS, backend="numba", progress=lambda d, t, p: calls.append(d))
    assert len([d for d in calls if d <= 200]) == 2 * PERFECT_RUN  # two warm-ups of 100 iterations
    assert len(calls) == (3 + (qat_share > 0)) * PERFECT_RUN and calls[-1] == 400
    second = fit(black, (12, 6, 6), settings, STEPS, backend="numba")
    for a, b in zip(first.layers, second.layers):
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


def test_warm_up_keeps_its_iterations_on_a_real_picture(crop):
    target = torch.from_numpy(crop.astype("float32") / 255.0)
    settings = TrainSettings(iterations=120, warmup_share=0.25, plateau_window=5, plateau_tol_db=1e9)
    calls = []
    fit(target, (12, 6, 6), settings, STEPS, backend="numba", progress=lambda d, t, p: calls.append(d))
    assert [d for d in calls if d <= 60] == list(range(1, 61))  # warm-ups ran out despite the "stall"


def test_without_a_quantization_aware_share_the_full_size_phase_still_stops_on_a_stall():
    s = TrainSettings(iterations=1000, plateau_window=5, plateau_tol_db=0.05, qat_share=0.0)
    p = _Plateau(s, phase_ends=s.phase_ends(1000, 1000))  # [1000, 1000]: an empty last phase
    skips = [p.skip(done, 30.0) for done in range(500, 520)]
    assert 500 + next(i for i, k in enumerate(skips) if k) + max(skips) == 1000


def test_refine_stops_a_still_picture_early_and_deterministically():
    """refine (video P-frames): started where the picture already is, the iterations
    before the quantization-aware share end after two windows; the QAT share runs out;
    without a window every iteration runs; two runs give the same layers."""
    from gsvc.train import refine

    scene = _scene()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the scene with sensor noise: ~34 dB, which the Gaussians cannot fit
        target = render(scene.means, scene.chol, scene.colors, 64, 64)
        target = (target + 0.02 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    settings = TrainSettings(iterations=200, seed=0, plateau_tol_db=0.005, qat_share=0.15)  # as P-frames

    def run(window):
        seen = []
        layers = refine(target, [scene], settings, 200, lr_scale=0.5, backend="numba",
                        progress=lambda done, total, psnr: seen.append(done), plateau_window=window)
        return layers, seen

    full, every = run(0)
    assert every == list(range(1, 201))
    early, seen = run(10)
    qat = round(200 * settings.qat_share)
    jump = next(i for i, (a, b) in enumerate(zip(seen, seen[1:])) if b != a + 1)
    assert 20 <= jump + 1 < 200 - qat, seen  # at least two windows, then straight to the QAT share
    assert seen[jump + 1 :] == list(range(200 - qat, 201)), seen  # which runs out
    again, _ = run(10)
    for a, b in zip(early[0].tensors(), again[0].tensors()):
        assert torch.equal(a, b)


def test_a_resize_does_not_end_the_phase(crop):
    """A resize (rate targets cut each layer to its budget) drops the PSNR at once; the
    windows before and after it are not compared, so the phase goes on. Compared, the
    drop read as a stall and ended the full-size phase: on kodim03 at --bpp 0.25,0.5,1.0
    the fit skipped from iteration 732 to the quantization-aware share at 2112."""
    target = torch.from_numpy(crop.astype("float32") / 255.0)
    settings = TrainSettings(iterations=300, warmup_share=0.1, plateau_window=5, plateau_tol_db=0.005)

    def halve(layers):
        return [np.arange(len(l)) % 2 == 0 for l in layers]

    calls = []
    fit(target, (40, 20, 20), settings, STEPS, backend="numba", progress=lambda d, t, p: calls.append(d),
        resize=halve, resize_at=(100,))
    assert calls[calls.index(100):calls.index(100) + 12] == list(range(100, 112)), calls


def test_a_stall_that_would_end_the_training_leaves_a_tail():
    """Without a quantization-aware share after it, a stall of the full-size phase jumps
    to ``tail`` iterations before the end, not to the end (the learning rate then decays
    to its last value, pending resizes get iterations after them); within the tail it
    never jumps again; a picture drawn perfectly still ends at once."""
    s = TrainSettings(iterations=1000, plateau_window=5, plateau_tol_db=0.05, qat_share=0.0)
    p = _Plateau(s, phase_ends=s.phase_ends(1000, 1000), tail=100)
    skips = [p.skip(done, 30.0) for done in range(500, 520)]
    first = next(i for i, k in enumerate(skips) if k)
    assert 500 + first + skips[first] == 900
    assert all(p.skip(done, 30.0) == 0 for done in range(901, 1000))  # the tail runs out
    p = _Plateau(s, phase_ends=s.phase_ends(1000, 1000), tail=100)
    done = 500 + next(i for i in range(20) if p.skip(500 + i, 55.0))
    assert done + p.skip(done + 1, 55.0) in (done, 1000) and done == 500 + PERFECT_RUN - 1
    p = _Plateau(s, phase_ends=[400, 850, 1000], tail=100)  # a phase before the last: to its end
    skips = [p.skip(done, 30.0) for done in range(230, 245)]
    assert 230 + next(i for i, k in enumerate(skips) if k) + max(skips) == 400


def test_a_stall_before_the_resizes_still_resizes_and_trains_after_them(crop):
    """A size-target fit that stalls before its resizes (``slow`` on a small picture
    stopped at 3345 of 8000 iterations) makes them with the tail's iterations after
    them; jumping to the end skipped the second resize and left the cut layers
    untrained."""
    target = torch.from_numpy(crop.astype("float32") / 255.0)
    settings = TrainSettings(iterations=300, warmup_share=0.1, plateau_window=5, plateau_tol_db=1e9,
                             plateau_tail=0.1)
    calls, resizes = [], []

    def halve(layers):
        resizes.append(calls[-1])
        return [np.arange(len(l)) % 2 == 0 for l in layers]

    model = fit(target, (40, 20, 20), settings, STEPS, backend="numba", progress=lambda d, t, p: calls.append(d),
                resize=halve, resize_at=(200, 250))
    assert 200 not in calls  # the stall came first (a jump past both resize points) ...
    assert resizes == [270]  # ... then both cuts at once, in the first iteration after it
    assert calls[-1] == 300 and calls[-31:] == list(range(270, 301)), calls  # the tail: 30 iterations
    assert model.counts == (20, 10, 10)
