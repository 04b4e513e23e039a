"""The command line under stress: exit codes, pipes, interrupts, special files, latency."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gsvc.cli import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, main
from gsvc.media import read_image, write_image

from golden import DATA

GOLDEN = DATA / "tiny.gsv"  # 16x12, 2 layers
GOLDEN_VIDEO = DATA / "tiny_video.gsv"


def run(*args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    return result.exit_code, result.stdout_bytes, result.stderr


def gsvc(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The real program in a child process (pipes and signals behave as in a shell)."""
    env = {k: v for k, v in os.environ.items() if k != "GSVC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "gsvc", *map(str, args)], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=300)


# ------------------------------------------------------------------ exit codes

@pytest.mark.parametrize("flags", [["--layers", "0"], ["--scale", "0"], ["--scale", "-1"], ["--scale", "nan"],
                                   ["--format", "webm"]])
def test_bad_flag_values_are_usage_errors(tmp_path, flags):
    code, _, err = run("decode", GOLDEN, "-o", tmp_path / "x.png", *flags)
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("scale,needle", [("0.01", "too small"), ("1000", "above the limit")])
def test_output_size_is_bounded(tmp_path, scale, needle):
    code, _, err = run("decode", GOLDEN, "-o", tmp_path / "x.png", "--scale", scale)
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_usage_errors_come_before_any_heavy_import(tmp_path):
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "gsvc", "encode", GOLDEN, "--gaussians", "10,0"],
                       capture_output=True, text=True)
    assert p.returncode == EXIT_USAGE
    assert not {"torch", "numba", "av"} & imported_modules(p.stderr)


def imported_modules(stderr: str) -> set[str]:
    """Module names a ``python -X importtime`` run printed."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


# what each command may not load: info reads headers only; a small CPU decode draws with
# numpy (render.render_array), so it loads neither torch nor numba (~0.7 s of imports)
@pytest.mark.parametrize("command,forbidden", [
    (["info", GOLDEN], {"torch", "numba", "numpy", "av"}),
    (["info", GOLDEN_VIDEO, "--json"], {"torch", "numba", "numpy", "av"}),
    (["decode", GOLDEN, "-o", "out.png"], {"torch", "numba"}),
    (["decode", GOLDEN_VIDEO, "-o", "out.mkv"], {"torch", "numba"}),
])
def test_info_and_cpu_decode_never_import_torch(tmp_path, command, forbidden):
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "gsvc", *map(str, command)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not forbidden & imported_modules(p.stderr)


@pytest.fixture(scope="module")
def stream_768x512(tmp_path_factory) -> Path:
    """A 768x512 image stream with the default Gaussian counts (5000, 2000, 2000), of
    about the sizes the encoder makes (random: only the amount of work matters here)."""
    import numpy as np
    import torch

    from gsvc.codec import encode_model
    from gsvc.encoder import default_counts
    from gsvc.model import GaussianLayer, LayeredImage
    from gsvc.quantize import QuantSettings

    g = torch.Generator().manual_seed(0)
    w, h = 768, 512
    layers = []
    for count, size, color in zip(default_counts(w, h), (0.8, 0.5, 0.4), (0.45, 0.0, 0.0)):
        sigma = size * np.sqrt(w * h / count)
        means = torch.rand(count, 2, generator=g) * torch.tensor([w, h])
        log_s = torch.log(torch.full((count, 2), sigma)) + 0.3 * torch.randn(count, 2, generator=g)
        chol = torch.cat([log_s, 0.5 * torch.randn(count, 1, generator=g)], dim=1)
        layers.append(GaussianLayer(means, chol, color + 0.2 * torch.randn(count, 3, generator=g)))
    data, _ = encode_model(LayeredImage(w, h, layers), QuantSettings().steps())
    path = tmp_path_factory.mktemp("large") / "768x512.gsv"
    path.write_bytes(data)
    return path


def test_768x512_decode_draws_with_numpy_alone(tmp_path, stream_768x512, monkeypatch):
    """The latency target's decode (issue 8) never loads numba, and its pixels are numba's."""
    from gsvc import render
    from gsvc.decoder import decode_image

    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "gsvc", "decode", str(stream_768x512),
                        "-o", "out.png"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not {"torch", "numba"} & imported_modules(p.stderr)
    monkeypatch.setattr(render, "NUMPY_MAX_WORK", 0)  # numba draws
    np_expected = decode_image(stream_768x512)
    got = read_image(tmp_path / "out.png")
    assert got.shape == (512, 768, 3)
    assert (got == np_expected).all()


def test_internal_error_is_exit_3_with_a_hint(tmp_path, monkeypatch):
    import gsvc.decoder

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gsvc.decoder, "decode_image", broken)
    monkeypatch.delenv("GSVC_DEBUG", raising=False)
    code, _, err = run("decode", GOLDEN, "-o", tmp_path / "x.png")
    assert code == EXIT_INTERNAL
    assert err.startswith("gsvc: error: internal error: RuntimeError: a bug") and "report" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("output", ["f_%02d.png", "clip.mkv", "clip.mp4"])
def test_interrupt_leaves_no_partial_output(tmp_path, monkeypatch, output):
    """Ctrl-C after the first frame was written: nothing of the output remains."""
    import gsvc.decoder

    real = gsvc.decoder.render_params
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gsvc.decoder, "render_params", interrupted)
    code, _, err = run("decode", GOLDEN_VIDEO, "-o", tmp_path / output)
    assert code == EXIT_INTERRUPTED and err.strip() == "gsvc: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_encode(tmp_path, crop):
    """A real SIGINT to a real process: one line, status 130, no file left behind."""
    write_image(tmp_path / "in.png", crop)
    env = {k: v for k, v in os.environ.items() if k != "GSVC_DEBUG"}
    # a shell's background job inherits SIGINT ignored (and Python keeps it so): give the child
    # the terminal's default disposition, as a program started from a prompt has
    p = subprocess.Popen([sys.executable, "-m", "gsvc", "encode", "in.png", "-o", "out.gsv", "--iterations",
                          "1000000", "--gaussians", "20"], cwd=tmp_path, stderr=subprocess.PIPE, env=env, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = p.stderr.readline()  # "in.png: 48x32, ..." once the work starts
        assert "48x32" in first, first
        time.sleep(2.0)  # into the training loop (slow imports on a loaded machine)
        p.send_signal(signal.SIGINT)
        _, rest = p.communicate(timeout=180)
    finally:
        p.kill()
    assert p.returncode == EXIT_INTERRUPTED, rest
    assert rest.strip().splitlines()[-1] == "gsvc: interrupted"
    assert "Traceback" not in rest
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.png"]


# ------------------------------------------------------------------ pipes and special files

def test_closed_pipe_ends_quietly():
    env = {k: v for k, v in os.environ.items() if k != "GSVC_DEBUG"}
    p = subprocess.Popen([sys.executable, "-m", "gsvc", "info", str(GOLDEN_VIDEO)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before the first line (`| head -0`)
    err = p.stderr.read()
    p.wait(timeout=60)
    assert p.returncode == EXIT_BROKEN_PIPE and err == b""


def test_stdin_and_stdout(tmp_path):
    data = GOLDEN.read_bytes()
    direct = tmp_path / "direct.png"
    assert gsvc("decode", GOLDEN, "-o", direct).returncode == 0
    piped = gsvc("decode", "-", "-o", "-", "--format", "png", stdin=data)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == direct.read_bytes()
    info = gsvc("info", "-", "--json", stdin=data)
    assert info.returncode == 0 and b'"kind": "image"' in info.stdout
    video = gsvc("decode", "-", "-o", "-", stdin=GOLDEN_VIDEO.read_bytes())  # mkv (FFV1) by default
    assert video.returncode == 0 and video.stdout[:4] == b"\x1a\x45\xdf\xa3"  # EBML (Matroska)
    empty = gsvc("info", "-", stdin=b"")
    assert empty.returncode == 1 and b"stdin is empty" in empty.stderr


def test_encode_through_pipes(tmp_path, crop):
    write_image(tmp_path / "in.png", crop)
    p = gsvc("encode", "-", "-o", "-", "--gaussians", "8,4", "--iterations", "3", stdin=(tmp_path / "in.png").read_bytes())
    assert p.returncode == 0, p.stderr
    assert p.stdout[:4] == b"\x89GSV"
    assert b"layer" in p.stderr  # the summary table goes to stderr when the stream is on stdout
    (tmp_path / "s.gsv").write_bytes(p.stdout)
    code, _, err = run("decode", tmp_path / "s.gsv", "-o", tmp_path / "s.png")
    assert code == 0, err
    assert read_image(tmp_path / "s.png").shape == crop.shape
    code, _, err = run("encode", "-", "--iterations", "3", input=b"x")
    assert code == EXIT_USAGE and "needs -o" in err


def test_special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = run("info", fifo)  # would block forever if opened
    assert code == 1 and "not a regular file" in err
    code, _, err = run("decode", GOLDEN, "-o", os.devnull)
    assert code == 0, err
    if Path("/dev/full").exists():
        code, _, err = run("decode", GOLDEN, "-o", "/dev/full")
        assert code == 1 and "No space left" in err and len(err.strip().splitlines()) == 1


def test_a_stream_given_to_encode_is_named_as_one(tmp_path):
    for source, stdin in ((GOLDEN, None), ("-", GOLDEN.read_bytes()), (GOLDEN_VIDEO, None)):
        code, _, err = run("encode", source, "-o", tmp_path / "x.gsv", input=stdin)
        assert code == 1 and "a gsvc stream, not a picture or video" in err and "gsvc decode" in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x.gsv").exists()


def test_frame_pattern_claims_do_not_scale_with_the_claimed_count(tmp_path):
    from gsvc.cli import _frame_files_present

    for name in ("f_0001.png", "f_0003.png", "f_12.png", "f_0099.jpg", "g_0002.png"):
        (tmp_path / name).write_bytes(b"x")
    found = _frame_files_present(tmp_path / "f_%04d.png", 1 << 24)
    assert [p.name for p in found] == ["f_0001.png", "f_0003.png"]
    assert [p.name for p in _frame_files_present(tmp_path / "f_%04d.png", 2)] == ["f_0001.png"]


def test_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    """The writer fails half-way (ENOSPC): one line, status 1, no partial or temporary file."""
    import errno

    import av

    def full_disk(path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half a picture")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(av, "open", full_disk)
    (tmp_path / "keep.png").write_bytes(b"old")
    code, _, err = run("decode", GOLDEN, "-o", tmp_path / "keep.png", "-y")
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"  # the old file is not clobbered
