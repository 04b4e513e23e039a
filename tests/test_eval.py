"""gsvc eval (per-layer rate and quality), its MS-SSIM, and the benchmarks/rd.py smoke run."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pytorch_msssim")

from gsvc.cli import main  # noqa: E402
from gsvc.codec import decode_image  # noqa: E402
from gsvc.evaluate import MS_SSIM_WEIGHTS, _ms_ssim_scales, _nchw, evaluate_stream, ms_ssim, ms_ssim_weights  # noqa: E402
from gsvc.errors import GsvcError  # noqa: E402
from gsvc.media import write_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TOP_KEYS = {"kind", "width", "height", "layers_encoded", "total_bytes", "ms_ssim_scales", "ms_ssim_weights",
            "decode_repeats", "layers"}
ROW_KEYS = {"layers", "gaussians", "bytes", "bpp", "psnr", "ms_ssim", "decode_ms"}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


# ------------------------------------------------------------- an independent MS-SSIM (float64 numpy)


def _gauss(size=11, sigma=1.5):
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def _blur(img, g):
    """'valid' separable filtering of [H, W] (the window is symmetric: correlation = convolution)."""
    from numpy.lib.stride_tricks import sliding_window_view as win

    img = win(img, len(g), axis=0) @ g
    return win(img, len(g), axis=1) @ g


def _ssim_cs(x, y, g, c1=(0.01 * 255) ** 2, c2=(0.03 * 255) ** 2):
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return float(np.mean((2 * mx * my + c1) / (mx * mx + my * my + c1) * cs)), float(np.mean(cs))


def numpy_ms_ssim(a, b, weights):
    """Wang et al.'s MS-SSIM per channel, mean over channels; sizes must stay even while halving."""
    g = _gauss()
    values = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        value = 1.0
        for i, w in enumerate(weights):
            s, cs = _ssim_cs(x, y, g)
            if i == len(weights) - 1:
                value *= max(s, 0.0) ** w
            else:
                value *= max(cs, 0.0) ** w
                assert x.shape[0] % 2 == 0 and x.shape[1] % 2 == 0
                x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))
                y = y.reshape(y.shape[0] // 2, 2, y.shape[1] // 2, 2).mean(axis=(1, 3))
        values.append(value)
    return float(np.mean(values))


def distorted(rgb, seed=0, sigma=12.0):
    rng = np.random.default_rng(seed)
    noisy = rgb.astype(np.float64) + rng.normal(0, sigma, rgb.shape)
    # a little blur too, so that the scales differ
    noisy[1:] = 0.5 * (noisy[1:] + noisy[:-1])
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


# ------------------------------------------------------------- MS-SSIM


def test_ms_ssim_scales_by_size():
    assert ms_ssim_weights(161, 500) == MS_SSIM_WEIGHTS  # pytorch-msssim's own limit: over 160
    assert len(ms_ssim_weights(160, 500)) == 4
    assert len(ms_ssim_weights(32, 48)) == 2
    assert len(ms_ssim_weights(11, 48)) == 1
    assert ms_ssim_weights(10, 48) == ()
    for h in (11, 32, 85, 160):
        assert sum(ms_ssim_weights(h, 200)) == pytest.approx(1.0)


def test_ms_ssim_identical_is_one(example_rgb, crop):
    for img in (example_rgb[:176, :192], crop):
        value, _ = ms_ssim(img, img)
        assert value == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(crop[:10], crop[:10]) == (None, ())


def test_ms_ssim_five_scales_matches_independent_numpy(example_rgb):
    ref = np.ascontiguousarray(example_rgb[:176, :192])  # 176 -> 88 -> 44 -> 22 -> 11: even while halving
    test = distorted(ref)
    value, weights = ms_ssim(test, ref)
    assert weights == MS_SSIM_WEIGHTS
    expected = numpy_ms_ssim(test, ref, MS_SSIM_WEIGHTS)
    assert 0.5 < expected < 0.99
    assert value == pytest.approx(expected, abs=1e-5)


def test_ms_ssim_fewer_scales_matches_independent_numpy(crop):
    test = distorted(crop, seed=1)
    value, weights = ms_ssim(test, crop)
    assert len(weights) == 2
    assert weights[0] == pytest.approx(0.0448 / (0.0448 + 0.2856))
    expected = numpy_ms_ssim(test, crop, weights)
    assert 0.3 < expected < 0.99
    assert value == pytest.approx(expected, abs=1e-5)


def test_own_scale_loop_equals_pytorch_msssim(example_rgb):
    import pytorch_msssim

    ref = np.ascontiguousarray(example_rgb[:176, :192])
    test = distorted(ref, seed=2)
    x, y = _nchw(test), _nchw(ref)
    lib = float(pytorch_msssim.ms_ssim(x, y, data_range=255))
    assert float(_ms_ssim_scales(x, y, MS_SSIM_WEIGHTS)) == pytest.approx(lib, abs=1e-12)


# ------------------------------------------------------------- gsvc eval


@pytest.fixture(scope="module")
def files(tmp_path_factory, encoded, crop):
    d = tmp_path_factory.mktemp("eval")
    (d / "crop.gsv").write_bytes(encoded.data)
    write_image(d / "crop.png", crop)
    write_image(d / "small.png", np.ascontiguousarray(crop[:16, :24]))
    return d


def test_eval_json_matches_independent_computation(files, encoded, crop):
    code, out, err = run("eval", files / "crop.gsv", "--reference", files / "crop.png", "--json", "--repeats", "1")
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["width"], result["height"]) == ("image", 48, 32)
    assert [r["layers"] for r in result["layers"]] == [1, 2, 3]
    data = encoded.data
    for row in result["layers"]:
        k = row["layers"]
        prefix = sum(encoded.sizes[: k + 1])  # header + the first k layer chunks
        assert row["bytes"] == prefix
        assert row["bpp"] == pytest.approx(8 * prefix / (48 * 32))
        decoded = decode_image(data[:prefix])  # the prefix alone decodes to layer k
        np.testing.assert_array_equal(decoded, decode_image(data, layers=k))
        mse = np.mean((decoded.astype(np.float64) - crop.astype(np.float64)) ** 2)
        assert row["psnr"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-9)
        assert row["ms_ssim"] == pytest.approx(numpy_ms_ssim(decoded, crop, result["ms_ssim_weights"]), abs=1e-5)
        assert row["decode_ms"] > 0
    assert result["layers"][-1]["bytes"] == len(data) == result["total_bytes"]
    psnrs = [r["psnr"] for r in result["layers"]]
    assert psnrs == sorted(psnrs)


def test_eval_json_keys_are_stable(files):
    code, out, err = run("eval", files / "crop.gsv", "--reference", files / "crop.png", "--json", "--repeats", "1")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == TOP_KEYS
    assert result["ms_ssim_scales"] == len(result["ms_ssim_weights"]) == 2
    for row in result["layers"]:
        assert set(row) == ROW_KEYS
        assert isinstance(row["layers"], int) and isinstance(row["bytes"], int)
        for key in ("bpp", "psnr", "ms_ssim", "decode_ms"):
            assert isinstance(row[key], float), key


def test_eval_table(files):
    code, out, err = run("eval", files / "crop.gsv", "--reference", files / "crop.png", "--repeats", "1")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "48x32" in lines[0] and "3 of 3 layers" in lines[0] and "2 scales" in lines[0]
    assert lines[1].split() == ["layers", "bytes", "bpp", "PSNR", "dB", "MS-SSIM", "decode", "ms"]
    assert [l.split()[0] for l in lines[2:]] == ["1", "2", "3"]


def test_eval_python_api(encoded, crop):
    result = evaluate_stream(encoded.data, crop, repeats=1)
    assert [r["bytes"] for r in result["layers"]] == list(np.cumsum(encoded.sizes)[1:])
    with pytest.raises(GsvcError, match="but the stream is 48x32"):
        evaluate_stream(encoded.data, crop[:16], repeats=1)


def test_eval_wrong_reference_size_is_one_line(files):
    p = subprocess.run([sys.executable, "-m", "gsvc", "eval", str(files / "crop.gsv"), "--reference",
                        str(files / "small.png")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("gsvc: error:") and "24x16" in lines[0] and "48x32" in lines[0], lines[0]
    assert p.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["missing.gsv", "--reference", "crop.png"], "no such file"),
    (["crop.gsv", "--reference", "missing.png"], "no such file"),
    (["crop.png", "--reference", "crop.png"], "gsvc: error:"),
])
def test_eval_bad_inputs(files, args, needle):
    code, out, err = run("eval", *[files / a if not a.startswith("-") else a for a in args])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


# ------------------------------------------------------------- benchmarks/rd.py


def test_rd_smoke(tmp_path, example_rgb):
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    data = tmp_path / "tiny"
    data.mkdir()
    write_image(data / "kodim03_crop.png", np.ascontiguousarray(example_rgb[96:144, 160:224]))  # 64x48
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "benchmarks.rd", str(data), "--out", str(out),
                        "--iterations", "30"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    with open(out / "rd_tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["image", "method", "layers", "bytes", "bpp", "psnr", "ms_ssim"]
    counts = {m: sum(r["method"] == m for r in rows) for m in ("joint", "sequential", "monolithic", "jpeg2000", "jpeg")}
    assert counts == {"joint": 3, "sequential": 3, "monolithic": 1, "jpeg2000": 3, "jpeg": 3}
    assert {r["image"] for r in rows} == {"kodim03_crop"}
    joint = [r for r in rows if r["method"] == "joint"]
    budgets = [int(r["bytes"]) for r in joint]
    assert budgets == sorted(budgets)
    for r in rows:
        assert float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / (64 * 48), abs=1e-5)
        assert 5 < float(r["psnr"]) < 60 and 0 < float(r["ms_ssim"]) <= 1
    j2k = [r for r in rows if r["method"] == "jpeg2000"]
    assert [int(r["target_bytes"]) for r in j2k] == budgets
    assert all(r["bytes_source"] == "prefix" for r in j2k)
    for r in j2k:  # measured layer prefixes, rate-controlled to within 15% of the budget
        assert abs(int(r["bytes"]) - int(r["target_bytes"])) <= 0.15 * int(r["target_bytes"])
    assert [int(r["target_bytes"]) for r in rows if r["method"] == "jpeg"] == budgets
    assert (out / "rd_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "rd_tiny.md").read_text()
    for needle in ("| joint |", "| sequential |", "| monolithic |", "| jpeg2000 |", "| jpeg |",
                   "Scalability overhead", "Joint vs sequential", "checked for every layer of every image",
                   "--iterations 30"):
        assert needle in md, needle
