"""The command line as users meet it: outputs, JSON, and one-line errors."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bitstream.container import iter_chunks, read_signature
from gsvc.cli import main
from gsvc.media import read_image, write_image


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code, stderr, *needles):
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gsvc: error:") or lines[0].startswith("Error:"), stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, crop):
    d = tmp_path_factory.mktemp("cli")
    write_image(d / "in.png", crop)
    code, out, err = run("encode", d / "in.png", "-o", d / "in.gsv", "--gaussians", "40,20,20",
                         "--iterations", "60", "--device", "cpu")
    assert code == 0, err
    assert "PSNR" in out and "gain" in out
    return d


def test_encode_decode_info(workdir):
    for k in (1, 2, 3):
        code, _, err = run("decode", workdir / "in.gsv", "--layers", k, "-o", workdir / f"l{k}.png")
        assert code == 0, err
        assert read_image(workdir / f"l{k}.png").shape == (32, 48, 3)
    code, _, err = run("decode", workdir / "in.gsv", "-o", workdir / "all.jpg")
    assert code == 0, err
    assert read_image(workdir / "all.jpg").shape == (32, 48, 3)
    np.testing.assert_array_equal(read_image(workdir / "all.png") if (workdir / "all.png").exists()
                                  else read_image(workdir / "l3.png"), read_image(workdir / "l3.png"))
    code, out, _ = run("info", workdir / "in.gsv")
    assert code == 0 and "3 of 3 layers" in out
    code, out, _ = run("info", workdir / "in.gsv", "--json")
    info = json.loads(out)
    assert info["total_bytes"] == (workdir / "in.gsv").stat().st_size
    assert [l["gaussians"] for l in info["layers"]] == [40, 20, 20]


def test_decode_at_double_resolution(workdir):
    code, _, err = run("decode", workdir / "in.gsv", "--scale", "2", "-o", workdir / "x2.png")
    assert code == 0, err
    assert read_image(workdir / "x2.png").shape == (64, 96, 3)


def test_python_dash_m_and_no_traceback(workdir):
    env = dict(os.environ)
    env.pop("GSVC_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "gsvc", "decode", str(workdir / "nope.gsv"), "-o",
                        str(workdir / "x.png")], capture_output=True, text=True, env=env)
    assert p.returncode == 1
    assert p.stderr.strip() == f"gsvc: error: {workdir / 'nope.gsv'}: no such file"
    p = subprocess.run([sys.executable, "-m", "gsvc", "info", str(workdir / "in.gsv"), "--json"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["kind"] == "image"


def bad_inputs(d: Path) -> dict[str, Path]:
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    (d / "adir").mkdir(exist_ok=True)
    return {"missing": d / "missing.png", "empty": d / "empty.png", "text": d / "text.png", "dir": d / "adir"}


@pytest.mark.parametrize("kind,needle", [("missing", "no such file"), ("empty", "empty file"),
                                         ("text", "not an image"), ("dir", "is a directory")])
def test_encode_bad_input(workdir, kind, needle):
    src = bad_inputs(workdir)[kind]
    out = workdir / f"bad-{kind}.gsv"
    code, _, err = run("encode", src, "-o", out, "--iterations", "5")
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_decode_corrupt_streams(workdir):
    data = (workdir / "in.gsv").read_bytes()
    # a bit flipped inside the largest chunk's payload (a flipped length field reads as a
    # cut stream, which it cannot be told from: the test below)
    with io.BytesIO(data) as src:
        offset = read_signature(src)
        largest = max(iter_chunks(src, offset), key=lambda c: len(c.payload))
    flipped = bytearray(data)
    flipped[largest.offset + 8 + len(largest.payload) // 2] ^= 0x10
    cases = {"flip.gsv": bytes(flipped), "png.gsv": (workdir / "in.png").read_bytes()}
    for name, payload in cases.items():
        (workdir / name).write_bytes(payload)
        out = workdir / (name + ".png")
        code, _, err = run("decode", workdir / name, "-o", out)
        assert_one_line_error(code, err)
        assert not out.exists(), name
        code, _, err = run("info", workdir / name)
        assert_one_line_error(code, err)
    # a cut (a partial download) is not corruption: its complete layers decode, with a note
    (workdir / "trunc.gsv").write_bytes(data[: len(data) - 5])
    code, _, err = run("decode", workdir / "trunc.gsv", "-o", workdir / "trunc.png")
    assert code == 0 and "cut short" in err and (workdir / "trunc.png").exists()


def test_decode_bad_layer_count(workdir):
    out = workdir / "layers.png"
    code, _, err = run("decode", workdir / "in.gsv", "--layers", "4", "-o", out)
    assert_one_line_error(code, err, "cannot decode 4")
    assert code == 1 and not out.exists()


def test_unwritable_outputs(workdir):
    code, _, err = run("decode", workdir / "in.gsv", "-o", workdir / "no" / "dir" / "x.png")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run("decode", workdir / "in.gsv", "-o", workdir / "x.bmp")
    assert_one_line_error(code, err, "unsupported output extension")
    code, _, err = run("encode", workdir / "in.png", "-o", workdir / "adir", "--iterations", "5")
    assert_one_line_error(code, err, "is a directory")
    if os.geteuid() != 0:  # root writes anywhere
        ro = workdir / "ro"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o500)
        code, _, err = run("decode", workdir / "in.gsv", "-o", ro / "x.png")
        assert_one_line_error(code, err, "cannot write")


def test_bad_gaussians_flag(workdir):
    code, _, err = run("encode", workdir / "in.png", "--gaussians", "10,x", "-o", workdir / "g.gsv")
    assert code == 2 and "Traceback" not in err
    assert not (workdir / "g.gsv").exists()
    code, _, err = run("encode", workdir / "in.png", "--gaussians", "10,0", "-o", workdir / "g.gsv")
    assert code == 2
    assert not (workdir / "g.gsv").exists()


# ------------------------------------------------------------- overwrite policy (ffmpeg's habits)

def test_existing_output_is_kept_unless_y(workdir):
    target = workdir / "keep.png"
    target.write_bytes(b"precious")
    for extra in ([], ["-n"]):
        code, _, err = run("decode", workdir / "in.gsv", "-o", target, *extra)
        assert_one_line_error(code, err, "already exists", "-y")
        assert target.read_bytes() == b"precious"
    code, _, err = run("decode", workdir / "in.gsv", "-o", target, "-y")
    assert code == 0, err
    assert read_image(target).shape == (32, 48, 3)
    stream = workdir / "in.gsv"
    before = stream.read_bytes()
    code, _, err = run("encode", workdir / "in.png", "-o", stream, "--gaussians", "4", "--iterations", "2", "-q")
    assert_one_line_error(code, err, "already exists")
    assert stream.read_bytes() == before


def test_writing_onto_the_input_is_refused_even_with_y(workdir):
    src = workdir / "copy.png"
    src.write_bytes((workdir / "in.png").read_bytes())
    code, _, err = run("encode", src, "-o", src, "-y", "--gaussians", "4", "--iterations", "2", "-q")
    assert_one_line_error(code, err, "is the input file")
    assert src.read_bytes() == (workdir / "in.png").read_bytes()
    link = workdir / "link.png"
    if not link.exists():
        os.symlink(src, link)
    code, _, err = run("encode", src, "-o", link, "-y", "--gaussians", "4", "--iterations", "2", "-q")
    assert_one_line_error(code, err, "is the input file")
    assert src.read_bytes() == (workdir / "in.png").read_bytes()


def test_encode_notes_an_unusual_extension(workdir):
    code, _, err = run("encode", workdir / "in.png", "-o", workdir / "in.bin", "--gaussians", "4",
                       "--iterations", "2", "-q", "-y")
    assert code == 0, err
    assert "note" in err and ".gsv" in err


def test_the_progress_bar_says_when_the_fit_is_done():
    """After the last iteration the bar stands full while the colours are solved and
    rounded (about a minute at 12 MP): its text says so, and not before."""
    from gsvc.cli import fit_status

    assert fit_status(10, 600, 21.456) == "PSNR 21.46 dB"
    assert fit_status(600, 600, 30.0) == "PSNR 30.00 dB, now placing the colours"
