"""Global motion: its estimate, its integer form in the stream, moved P-frame layers."""
from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest

from bitstream import StreamError
from bitstream.entropy import write_svarints
from bitstream.layout import REF_MOVED, REF_PREVIOUS
from gsvc.decoder import decode_video, open_video, stream_info
from gsvc.encoder import EncodeSettings
from gsvc.layer_codec import ZOOM_ONE, GlobalMotion, decode_predicted, encode_predicted
from gsvc.metrics import psnr
from gsvc.motion import MARGIN, MotionEstimate, _normal_equations, _warp, estimate_global_motion, to_global_motion
from gsvc.train import TrainSettings
from gsvc.video_encoder import CodingStructure, encode_video

from conftest import encode_clip


def texture(width: int, height: int, tx: float = 0.0, ty: float = 0.0, zoom: float = 1.0,
            angle: float = 0.0, seed: int = 0) -> np.ndarray:  # [H, W, 3] uint8
    """A smooth random picture seen through a camera moved by (tx, ty), zoomed and
    rotated (radians) about the centre: pixel p shows the scene at R(-angle) (p - C - t)
    / zoom + C."""
    rng = np.random.default_rng(seed)
    n = 60
    cx, cy = rng.uniform(-0.2, 1.2, n) * width, rng.uniform(-0.2, 1.2, n) * height
    sigma = rng.uniform(0.04, 0.12, n) * min(width, height)
    colour = rng.uniform(-0.5, 0.5, (n, 3))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    dx, dy = xs - width / 2 - tx, ys - height / 2 - ty
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    sx, sy = c * dx + s * dy + width / 2, -s * dx + c * dy + height / 2
    img = np.full((height, width, 3), 0.5)
    for i in range(n):
        g = np.exp(-((sx - cx[i]) ** 2 + (sy - cy[i]) ** 2) / (2 * sigma[i] ** 2))
        img += g[..., None] * colour[i]
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(160, 120), (800, 600)])  # the second is estimated downscaled
@pytest.mark.parametrize("angle_deg", [0.0, 1.5])
def test_a_pan_zoom_and_roll_are_recovered(size, angle_deg):
    w, h = size
    scale = w / 160  # the same motion relative to the picture at both sizes
    prev = texture(w, h)
    cur = texture(w, h, 2.3 * scale, -1.4 * scale, 1.02, np.radians(angle_deg))
    est = estimate_global_motion(prev, cur)
    assert est.tx == pytest.approx(2.3 * scale, abs=0.08 * scale)
    assert est.ty == pytest.approx(-1.4 * scale, abs=0.08 * scale)
    assert est.zoom == pytest.approx(1.02, abs=1e-3)
    assert np.degrees(est.angle) == pytest.approx(angle_deg, abs=0.05)
    assert est.gain > 0.8, est
    assert estimate_global_motion(prev, cur) == est  # deterministic


def test_a_still_picture_has_no_motion():
    rng = np.random.default_rng(1)
    prev = texture(96, 64)
    noisy = np.clip(prev.astype(int) + rng.integers(-3, 4, prev.shape), 0, 255).astype(np.uint8)
    est = estimate_global_motion(prev, noisy)
    assert abs(est.tx) < 0.05 and abs(est.ty) < 0.05 and abs(est.zoom - 1) < 1e-3 and abs(est.angle) < 1e-3, est
    assert est.gain < 0.05 < CodingStructure.motion_gain, est  # so the encoder moves nothing


def test_an_object_crossing_a_still_scene_moves_no_camera():
    """A textured object on 13 % of a still scene moves 4 px: the robust fit keeps the
    camera still (a least-squares one followed the object: 3 px, 57 % of the MSE)."""
    background, thing = texture(320, 240, seed=1), texture(320, 240, seed=2)
    frames = []
    for t in range(2):
        f = background.copy()
        f[60:160, 80 + 4 * t : 180 + 4 * t] = thing[60:160, 100:200]
        frames.append(f)
    est = estimate_global_motion(*frames)
    assert abs(est.tx) < 0.2 and abs(est.ty) < 0.2 and abs(est.zoom - 1) < 2e-3, est
    assert est.gain < CodingStructure.motion_gain, est


def test_integer_motion_moves_the_reference_as_specified():
    q = np.array([[100, -37, 5, -2, 3, 10, 20, 30], [0, 0, 0, 0, 0, 0, 0, 0]], np.int64)
    zc, zs = ZOOM_ONE + 1000, -777
    m = GlobalMotion(tx=-7, ty=12, zc=zc, zs=zs, ds=-1)
    out = m.apply(q)
    for row_in, row_out in zip(q, out):
        x, y = int(row_in[0]), int(row_in[1])
        assert row_out[0] == -7 + (x * zc - y * zs + ZOOM_ONE // 2) // ZOOM_ONE
        assert row_out[1] == 12 + (x * zs + y * zc + ZOOM_ONE // 2) // ZOOM_ONE
        assert list(row_out[2:4]) == [row_in[2] - 1, row_in[3] - 1]
        assert list(row_out[4:]) == list(row_in[4:])
    np.testing.assert_array_equal(GlobalMotion().apply(q), q)
    assert GlobalMotion().identity and not m.identity
    # a zoom and roll about the centre fold into the translation: the centre stays put,
    # a corner turns about it
    steps = (1 / 8, 1 / 8, 1 / 32, 1 / 32, 1 / 16, 1 / 128, 1 / 128, 1 / 128)
    moved = to_global_motion(MotionEstimate(0.0, 0.0, 1.1, np.radians(5.0), 0.0, 1.0), 64, 48, steps)
    points = np.array([[256, 192, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])  # (32, 24) px, (0, 0)
    out = moved.apply(points)
    assert abs(out[0, 0] - 256) <= 1 and abs(out[0, 1] - 192) <= 1
    c, s = 1.1 * np.cos(np.radians(5.0)), 1.1 * np.sin(np.radians(5.0))
    corner = np.array([c * -32 - s * -24 + 32, s * -32 + c * -24 + 24]) * 8
    assert np.abs(out[1, :2] - corner).max() <= 1
    assert moved.ds == round(np.log(1.1) * 32) == 3
    # the x and y steps differ: no rotation (the integer map turns in step units)
    assert to_global_motion(MotionEstimate(0.0, 0.0, 1.0, 0.1, 0.0, 1.0), 64, 48, (0.1, 0.2) + steps[2:]).zs == 0


@pytest.mark.parametrize("motion", [GlobalMotion(), GlobalMotion(5, -3, ZOOM_ONE - 77, 40, 2),
                                    GlobalMotion(-(2**31) + 1, 2**31 - 1, ZOOM_ONE // 2, -ZOOM_ONE, -(2**15)),
                                    GlobalMotion(0, 0, 2 * ZOOM_ONE, ZOOM_ONE, 2**15)])
def test_moved_layers_round_trip(motion):
    rng = np.random.default_rng(3)
    ref = rng.integers(-500, 500, (30, 8))
    keep = rng.random(30) < 0.7
    k = int(keep.sum())
    kept = motion.apply(ref)[keep] + rng.integers(-2, 3, (k, 8)) * (rng.random((k, 8)) < 0.3)
    new = rng.integers(-100, 100, (4, 8))
    payload, q = encode_predicted(ref, keep, kept, new, 2, motion)
    np.testing.assert_array_equal(decode_predicted(payload, ref, len(q), 2, moved=True), q)
    np.testing.assert_array_equal(q[: int(keep.sum())], kept)
    # the motion costs a few bytes in front of the unmoved layout
    plain, _ = encode_predicted(motion.apply(ref), keep, kept, new, 2)
    assert payload.endswith(plain) and len(payload) - len(plain) <= 5 + 5 + 3 + 3 + 3


def test_corrupt_motion_is_caught():
    ref = np.zeros((3, 8), np.int64)
    payload, q = encode_predicted(ref, np.ones(3, bool), ref, np.zeros((0, 8)), 2, GlobalMotion(1, 1))
    for bad in (b"", b"\x80\x80", payload[:2]):
        with pytest.raises(StreamError):
            decode_predicted(bad, ref, 3, 2, moved=True)
    assert payload[:5] == GlobalMotion(1, 1).to_bytes()  # five one-byte varints
    with pytest.raises(StreamError, match="zoom"):  # 4x: outside the format's range
        decode_predicted(write_svarints([1, 1, 3 * ZOOM_ONE, 0, 0]) + payload[5:], ref, 3, 2, moved=True)
    with pytest.raises(StreamError, match="rotation"):
        decode_predicted(write_svarints([1, 1, 0, 2 * ZOOM_ONE, 0]) + payload[5:], ref, 3, 2, moved=True)


def panning_clip(frames: int = 6, width: int = 64, height: int = 48) -> np.ndarray:
    """A camera pan (1.5 and -0.75 pixels a frame) over a smooth scene."""
    return np.stack([texture(width, height, -1.5 * t, 0.75 * t, seed=4) for t in range(frames)])


def _moved_layers(data: bytes) -> list[list[int]]:
    with open_video(data) as reader:
        return [[c.reference for c in frame.layers] for frame in reader.chunks()]


def _position_steps(data: bytes) -> float:
    """Mean |dx| + |dy| (position steps) of the kept Gaussians of every P-frame layer."""
    with open_video(data) as reader:
        total, kept = 0, 0
        for _, _, parts in reader.layer_parts():
            for p in parts or []:
                total += int(np.abs(p.diff[:, :2]).sum())
                kept += len(p.diff)
    return total / kept


def test_a_pan_is_coded_as_moved_layers_in_fewer_bytes():
    clip = panning_clip()
    settings = EncodeSettings(gaussians=(40, 20, 20), train=TrainSettings(iterations=240, seed=0), device="cpu")
    coded = {on: encode_clip(clip, settings, CodingStructure(p_share=0.3, global_motion=on, cut_drop_db=99.0))
             for on in (True, False)}  # P-frames only
    data, reports = coded[True]
    refs = _moved_layers(data)
    assert [r.type for r in reports] == ["I"] + ["P"] * 5
    assert sum(r == REF_MOVED for frame in refs[1:] for r in frame) >= 10, refs
    assert all(r in (REF_PREVIOUS,) for frame in _moved_layers(coded[False][0])[1:] for r in frame)
    # the kept Gaussians follow the camera: their own moves shrink (seeds 0-5: 1.1-2.1
    # position steps against 9.6-10.2 unmoved), and the P-frames take fewer bytes
    # (0.93-0.97 of them; tiny pictures pay mostly for colours: larger ones save more,
    # docs/results.md). Their PSNR at this size moves with the seed (-0.25 to +0.38 dB
    # against unmoved): the benchmark measures it on real clips.
    steps = {on: _position_steps(d) for on, (d, _) in coded.items()}
    assert steps[True] < 0.3 * steps[False], steps
    p_bytes = {on: sum(sum(r.bytes) for r in rep[1:]) for on, (_, rep) in coded.items()}
    assert p_bytes[True] < 0.99 * p_bytes[False], p_bytes
    # the decoder moves the reference exactly as the encoder did: the reported PSNRs
    for report, frame, source in zip(reports, decode_video(data), clip):
        assert report.psnr == pytest.approx(psnr(frame, source), abs=1e-9)


def test_golden_moved_video_bytes_and_pixels():
    """tests/data/tiny_video_moved.gsv pins reference 2 (FORMAT.md section 7.4)."""
    from golden import DATA, MOVED, tiny_video_moved

    from gsvc.media import read_image

    golden = (DATA / MOVED).read_bytes()
    assert tiny_video_moved() == golden
    assert _moved_layers(golden) == [[0, 0], [REF_MOVED, REF_MOVED], [REF_MOVED, REF_PREVIOUS]]
    expected = read_image(DATA / MOVED.replace(".gsv", ".png"))
    for backend in ("torch", None):
        np.testing.assert_array_equal(np.concatenate(decode_video(golden, backend=backend), axis=0), expected)
    with open_video(golden) as reader:
        models = [q for _, q in reader.models()]
    first = GlobalMotion(8, 5, ZOOM_ONE + 2000, 0).apply(models[0][0])
    first[:, 5] += 4
    np.testing.assert_array_equal(models[1][0], first)
    np.testing.assert_array_equal(models[2][1], GlobalMotion(8, 5, ZOOM_ONE + 2000, 0).apply(models[0][1]))
    # info reports the camera: the centre (8, 6) px moves by t + (zoom - 1) * centre
    frames = stream_info(golden)["frame_list"]
    assert [f["moved"] for f in frames] == [[False, False], [True, True], [True, False]]
    assert "motion" not in frames[0]
    zoom = (ZOOM_ONE + 2000) / ZOOM_ONE
    assert frames[1]["motion"]["zoom"] == pytest.approx(zoom) and frames[1]["motion"]["rotation"] == 0
    assert frames[1]["motion"]["pan"] == pytest.approx([8 / 16 + (zoom - 1) * 8, 5 / 16 + (zoom - 1) * 6])
    assert frames[2]["motion"]["rotation"] == pytest.approx(np.degrees(np.arctan2(3000, ZOOM_ONE - 6554)))


def test_a_moved_layer_in_an_i_frame_is_rejected():
    from bitstream import Header, LayerChunk
    from bitstream.layout import KIND_VIDEO
    from bitstream.video import FRAME_I, VideoHeader, VideoWriter
    from gsvc.errors import GsvcError
    from gsvc.layer_codec import encode_intra

    payload, q = encode_intra(np.array([[8, 8, 0, 0, 0, 64, 64, 64]]), 2)
    out = io.BytesIO()
    writer = VideoWriter(out, Header(16, 12, (1,), (1 / 8,) * 8, kind=KIND_VIDEO, coder=2), VideoHeader(0, 25, 1, 30))
    writer.write_frame(FRAME_I, [LayerChunk(1, 1, payload, frame=0, reference=REF_MOVED)])
    writer.finish()
    with pytest.raises((StreamError, GsvcError), match="out of order"):
        decode_video(out.getvalue())


def test_cli_no_global_motion(tmp_path):
    """``--no-global-motion`` writes P-frames predicted from the unmoved frame; by default
    the same pan codes moved layers."""
    from click.testing import CliRunner

    from gsvc.cli import main
    from gsvc.media import video_output

    clip = panning_clip(frames=3)
    src = tmp_path / "pan.mkv"
    with video_output(src, 64, 48, Fraction(12)) as write:
        for f in clip:
            write(f)
    moved = {}
    for flag in ([], ["--no-global-motion"]):
        out = tmp_path / f"pan{len(flag)}.gsv"
        result = CliRunner().invoke(main, ["encode", str(src), "-o", str(out), "--gaussians", "30,15",
                                           "--iterations", "120", "--device", "cpu", "-q", *flag])
        assert result.exit_code == 0, result.stderr
        moved[bool(flag)] = [(f["type"], any(f["moved"])) for f in stream_info(out.read_bytes())["frame_list"]]
    # (a P-frame drawn 3 dB below its I-frame is coded as an I-frame: frame 2 may be one)
    assert moved[False][:2] == [("I", False), ("P", True)] and all(m == (t == "P") for t, m in moved[False]), moved
    assert moved[True][:2] == [("I", False), ("P", False)] and not any(m for _, m in moved[True]), moved


def test_shapes_moving_on_a_still_background_move_no_layer():
    """The camera's motion is measured between source frames: against the coarse decoded
    I-frame of this clip a zoom of 0.7 % and a roll of 0.55 degrees 'explained' half the
    difference (the coding error), and P-frames were moved for nothing."""
    from conftest import synthetic_clip

    clip = synthetic_clip(frames=4, cut_at=None)
    settings = EncodeSettings(gaussians=(40, 20, 20), train=TrainSettings(iterations=240, seed=0), device="cpu")
    out = io.BytesIO()
    encode_video(iter(clip), out, 64, 48, Fraction(12), settings, CodingStructure(p_share=0.3))
    assert _moved_layers(out.getvalue()) == [[0, 0, 0]] + [[REF_PREVIOUS] * 3] * 3


def _warp_reference(prev, cur, theta):
    """``motion._warp``'s residuals, still residuals and gradients, as plain numpy."""
    h, w = prev.shape
    gy, gx = np.gradient(prev)
    ys, xs = np.mgrid[MARGIN : h - MARGIN, MARGIN : w - MARGIN].astype(np.float64)
    X, Y = xs - (w - 1) / 2.0, ys - (h - 1) / 2.0
    alpha, beta, vx, vy = theta
    ux, uy = alpha * X + beta * Y + (w - 1) / 2.0 + vx, -beta * X + alpha * Y + (h - 1) / 2.0 + vy
    ok = (ux >= MARGIN) & (ux <= w - 1 - MARGIN) & (uy >= MARGIN) & (uy <= h - 1 - MARGIN)
    ux, uy = ux[ok], uy[ok]

    def sample(img):
        x0 = np.minimum(np.floor(ux).astype(np.int64), w - 2)
        y0 = np.minimum(np.floor(uy).astype(np.int64), h - 2)
        fx, fy = ux - x0, uy - y0
        top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
        return top * (1 - fy) + (img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx) * fy

    target = cur[MARGIN : h - MARGIN, MARGIN : w - MARGIN][ok]
    still = prev[MARGIN : h - MARGIN, MARGIN : w - MARGIN][ok] - target
    return np.stack([sample(prev) - target, still, sample(gx), sample(gy), X[ok], Y[ok]])


def test_the_gauss_newton_kernels_match_plain_numpy():
    rng = np.random.default_rng(5)
    prev, cur = rng.random((40, 56)), rng.random((40, 56))
    theta = np.array([1.02, 0.03, 1.7, -2.4])  # zoom, roll and pan: some pixels leave the picture
    got = _warp(prev, *np.gradient(prev)[::-1], cur, theta, MARGIN)
    ref = _warp_reference(prev, cur, theta)
    assert got.shape == ref.shape and 0 < ref.shape[1] < (40 - 2 * MARGIN) * (56 - 2 * MARGIN)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    r, _, sx, sy, x, y = ref
    scale = 0.3
    weight = 1.0 / (1.0 + (r / scale) ** 2)
    jac = np.stack([sx * x + sy * y, sx * y - sy * x, sx, sy], axis=1)
    normal, rhs = _normal_equations(r, sx, sy, x, y, scale)
    np.testing.assert_allclose(normal, (jac * weight[:, None]).T @ jac, rtol=1e-10)
    np.testing.assert_allclose(rhs, (jac * weight[:, None]).T @ r, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_coarse_to_fine_finds_the_single_size_fit(monkeypatch, seed):
    """Fitted from half size first (``COARSE_SIDE``), the motion is the one the fit at
    full size alone finds, to within a hundredth of a pixel and of a degree: the half
    size only supplies the start (and picks between the phase correlation's peak and no
    motion). The scene: a pan, zoom and roll, an object moving on its own."""
    import gsvc.motion as motion

    prev = texture(192, 144, seed=seed)
    cur = texture(192, 144, 3.1, -1.6, 1.015, np.radians(0.8), seed=seed)
    cur[20:70, 30:90] = texture(192, 144, seed=seed + 10)[20:70, 34:94]
    sizes = []
    warp = motion._warp
    monkeypatch.setattr(motion, "_warp", lambda prev, *a: sizes.append(prev.shape) or warp(prev, *a))
    both = estimate_global_motion(prev, cur)
    assert (72, 96) in sizes and (144, 192) in sizes  # both sizes fitted
    monkeypatch.setattr(motion, "COARSE_SIDE", 10**6)
    single = estimate_global_motion(prev, cur)
    assert both.tx == pytest.approx(single.tx, abs=0.01) and both.ty == pytest.approx(single.ty, abs=0.01)
    assert both.zoom == pytest.approx(single.zoom, abs=1e-4)
    assert np.degrees(both.angle) == pytest.approx(np.degrees(single.angle), abs=0.01)
    assert both.tx == pytest.approx(3.1, abs=0.1) and both.gain > 0.2, both  # (the object: its MSE stays)
