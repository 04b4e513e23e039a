"""Scale-out (issue #12): GOPs and pictures as independent units on worker processes or
Ray give the same bytes as the serial encode; failures are retried once, then one line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gsvc.cli import main
from gsvc.decoder import stream_info
from gsvc.media import write_image
from gsvc.scale_out import Schedule, UnitFailed, run_units

from conftest import synthetic_clip

#: a tiny, fast encode: 2 layers of few Gaussians, 5 frames in GOPs of 2 (3 units: I P | I P | I)
TINY = ["--gaussians", "20,10", "--iterations", "12", "--frames", "5", "--gop", "2", "--device", "cpu", "-q", "-y"]
#: the same for pictures
TINY_PICTURE = ["--gaussians", "12,6", "--iterations", "10", "--device", "cpu"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def serial_video(clip_file, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("serial") / "clip.gsv"
    code, _, err = run("encode", clip_file, "-o", out, *TINY)
    assert code == 0, err
    return out.read_bytes()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    clip = synthetic_clip(frames=7, cut_at=5, width=32, height=24)
    for name, t in (("a", 0), ("b", 3), ("c", 6)):
        write_image(folder / f"{name}.png", clip[t])
    return folder


# --- same bytes whatever the schedule -----------------------------------------------

def test_gops_are_closed_units_on_a_fixed_grid(serial_video):
    types = [f["type"] for f in stream_info(serial_video)["frame_list"]]
    assert types == ["I", "P", "I", "P", "I"]  # every unit starts with an I-frame
    assert stream_info(serial_video)["gop"] == 2


def test_video_jobs_2_gives_the_bytes_of_jobs_1(clip_file, serial_video, tmp_path):
    code, _, err = run("encode", clip_file, "-o", tmp_path / "p.gsv", *TINY, "--jobs", "2")
    assert code == 0, err
    assert (tmp_path / "p.gsv").read_bytes() == serial_video


def test_image_batch_jobs_2_gives_the_bytes_of_jobs_1(pictures, tmp_path):
    flags = [*TINY_PICTURE, "-y"]
    code, _, err = run("encode", pictures, "-o", tmp_path / "one", *flags, "-q")  # a directory
    assert code == 0, err
    files = sorted(pictures.glob("*.png"))
    code, _, err = run("encode", *files, "-o", tmp_path / "two", *flags, "--jobs", "2")  # a list
    assert code == 0, err
    assert "[3/3]" in err and "pictures/s" in err
    names = ["a.gsv", "b.gsv", "c.gsv"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    # a picture of a batch is coded exactly as on its own
    code, _, err = run("encode", files[1], "-o", tmp_path / "b.gsv", *flags, "-q")
    assert code == 0, err
    assert (tmp_path / "b.gsv").read_bytes() == (tmp_path / "one" / "b.gsv").read_bytes()


def test_batch_follows_the_overwrite_rules(pictures, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.gsv").write_bytes(b"mine")
    flags = ["--gaussians", "4", "--iterations", "2", "--device", "cpu", "-q"]
    code, _, err = run("encode", pictures, "-o", out, *flags, "-n")
    assert code == 1 and "b.gsv already exists" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b.gsv"]  # nothing encoded
    (tmp_path / "file").write_bytes(b"x")
    code, _, err = run("encode", pictures, "-o", tmp_path / "file", *flags)
    assert code == 1 and "not a directory" in err


def test_a_refused_batch_leaves_no_output_directory(pictures, tmp_path):
    from golden import DATA

    flags = ["--gaussians", "4", "--iterations", "2", "--device", "cpu", "-q"]
    stream = DATA / "tiny.gsv"  # a stream among the pictures: refused before anything is written
    code, _, err = run("encode", *sorted(pictures.glob("*.png")), stream, "-o", tmp_path / "new" / "out", *flags)
    assert code == 1 and "a gsvc stream" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_bytes_of_jobs_1(local_ray, clip_file, serial_video, pictures, tmp_path):
    code, _, err = run("encode", clip_file, "-o", tmp_path / "r.gsv", *TINY, "--ray", "auto")
    assert code == 0, err
    assert (tmp_path / "r.gsv").read_bytes() == serial_video
    flags = [*TINY_PICTURE, "-q"]
    code, _, err = run("encode", pictures, "-o", tmp_path / "ray", *flags, "--ray", "auto")
    assert code == 0, err
    code, _, err = run("encode", pictures, "-o", tmp_path / "local", *flags)
    assert code == 0, err
    for name in ("a.gsv", "b.gsv", "c.gsv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_ray_missing_is_one_line(monkeypatch, clip_file, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, _, err = run("encode", clip_file, "-o", tmp_path / "x.gsv", *TINY, "--ray", "auto")
    assert code == 1 and "pip install 'gsvc[ray]'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("encode", clip_file, "-o", tmp_path / "x.gsv", *TINY, "--ray", "auto", "--jobs", "2")
    assert code == 2


# --- failures -----------------------------------------------------------------------

def _square(x: int) -> int:
    return x * x


def _fails_on_3(x: int) -> int:
    if x == 3:
        raise RuntimeError("unit three is broken")
    return x


def _dies_once(arg: tuple[str, int]) -> int:
    """Kills its worker process the first time it sees unit 1 (a marker file remembers)."""
    folder, x = arg
    marker = Path(folder) / f"died-{x}"
    if x == 1 and not marker.exists():
        marker.write_text("")
        os._exit(9)
    return x


def _always_dies(x: int) -> int:
    if x == 2:
        os._exit(9)
    return x


def test_run_units_keeps_order_and_bounds():
    pulled = []

    def units():
        for i in range(7):
            pulled.append(i)
            yield i

    got = []
    for done in run_units(_square, units(), Schedule(jobs=2, threads=1, window=3)):
        got.append(done.result)
        assert len(pulled) <= done.done + 3  # never more than `window` units ahead
    assert got == [i * i for i in range(7)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_unit_that_raises_is_retried_then_named(jobs):
    with pytest.raises(UnitFailed, match=r"^unit 3 failed after 2 attempts: RuntimeError: unit three is broken$"):
        list(run_units(_fails_on_3, range(6), Schedule(jobs=jobs, threads=1), name=lambda u: f"unit {u}"))


def test_a_worker_that_dies_is_retried(tmp_path):
    got = [d.result for d in run_units(_dies_once, [(str(tmp_path), i) for i in range(4)], Schedule(jobs=2, threads=1))]
    assert got == [0, 1, 2, 3] and (tmp_path / "died-1").exists()
    with pytest.raises(UnitFailed, match=r"^unit 2 failed after 2 attempts: a worker process died$"):
        list(run_units(_always_dies, range(4), Schedule(jobs=2, threads=1), name=lambda u: f"unit {u}"))


def _failing_gop(unit):
    if unit.index == 1:
        raise RuntimeError("boom")
    from gsvc.video_encoder import encode_gop  # in a worker: the real one

    return encode_gop(unit)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_gop_is_one_line_and_leaves_no_output(monkeypatch, clip_file, tmp_path, jobs):
    import gsvc.video_encoder as ve

    if jobs == "1":  # in-process: the encoder itself fails on frame 2 (GOP 1)
        real = ve._Encoder.frame

        def frame(self, index, rgb):
            if index == 2:
                raise RuntimeError("boom")
            return real(self, index, rgb)

        monkeypatch.setattr(ve._Encoder, "frame", frame)
    else:  # workers: the unit function raises for GOP 1 (workers import it from here)
        monkeypatch.setattr(ve, "encode_gop", _failing_gop)
    code, _, err = run("encode", clip_file, "-o", tmp_path / "x.gsv", *TINY, "--jobs", jobs)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "GOP 1" in err and "boom" in err
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left


def _slow_one_dies_two(x: int) -> int:
    import time

    if x == 1:
        time.sleep(1.5)  # in flight when unit 2 kills the pool
    if x == 2:
        os._exit(9)
    return x


def test_a_dying_worker_is_blamed_not_the_units_beside_it():
    with pytest.raises(UnitFailed, match=r"^unit 2 failed after 2 attempts: a worker process died$"):
        list(run_units(_slow_one_dies_two, range(4), Schedule(jobs=2, threads=1), name=lambda u: f"unit {u}"))
