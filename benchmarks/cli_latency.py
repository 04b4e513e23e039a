"""How fast the command line answers: repeated runs of real `gsvc` processes (hyperfine-style).

    python -m benchmarks.cli_latency [--runs 10] [--json docs/cli_latency.json]

Makes a 768x512 image stream with the default Gaussian counts (the bundled Kodak
example upscaled; only the counts matter for decode time) and a short video stream,
then times each command as a fresh process: one warm-up run, then ``--runs`` timed
runs; reports mean, standard deviation and minimum in seconds and in "cal" units
(seconds / the output of ../shared/tools/calib.py, run just before), and the machine's
load average (other processes slow every number down).

A 768x512 decode draws with numpy alone (render.render_array: below NUMPY_MAX_WORK
pixel-Gaussian pairs); ``--scale 2`` (4x the work) draws with the numba kernels, whose
import and cache load it pays. The first numba decode after installation compiles the
kernels into their cache; that cost is timed once apart, with an empty NUMBA_CACHE_DIR.

Targets (issue 8): `gsvc info` under 0.3 s, `gsvc decode` of a 768x512 stream under
1.5 s end to end on 2 cores, flag errors before any heavy import.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT.parent / "shared" / "tools" / "calib.py"
EXAMPLE = ROOT / "examples" / "kodim03_384x256.png"
CLIP = ROOT / "examples" / "tree_160x120.mp4"

TARGETS = {"info": 0.3, "decode": 1.5}


def gsvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gsvc", *args]


def calibration() -> float | None:
    if not CALIB.exists():
        return None
    out = subprocess.run([sys.executable, str(CALIB)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().split()[-1])


def time_command(cmd: list[str], runs: int, cwd: Path, env: dict | None = None, expect: int = 0) -> list[float]:
    """Wall seconds of ``runs`` runs after one untimed warm-up run."""
    seconds = []
    for i in range(runs + 1):
        start = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
        elapsed = time.perf_counter() - start
        if p.returncode != expect:
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
        if i:
            seconds.append(elapsed)
    return seconds


def make_streams(folder: Path) -> None:
    subprocess.run(gsvc_command("encode", str(EXAMPLE), "-o", "image.gsv", "--size", "768x512",
                                "--iterations", "30", "-q", "-y"), cwd=folder, check=True)
    subprocess.run(gsvc_command("encode", str(CLIP), "-o", "video.gsv", "--frames", "8", "--iterations", "30",
                                "-q", "-y"), cwd=folder, check=True)


CASES = [
    # name, arguments, expected exit status, target key
    ("gsvc --version", ["--version"], 0, None),
    ("flag error (decode --layers 0)", ["decode", "image.gsv", "-o", "x.png", "--layers", "0"], 2, None),
    ("info (768x512 image)", ["info", "image.gsv"], 0, "info"),
    ("info --json (8-frame video)", ["info", "video.gsv", "--json"], 0, "info"),
    ("decode 768x512 -> png", ["decode", "image.gsv", "-o", "out.png", "-y"], 0, "decode"),
    ("decode 768x512 --layers 1 -> png", ["decode", "image.gsv", "--layers", "1", "-o", "out1.png", "-y"], 0, "decode"),
    ("decode 8 frames 160x120 -> mkv", ["decode", "video.gsv", "-o", "out.mkv", "-y"], 0, None),
    ("decode 768x512 --scale 2 -> png (numba)", ["decode", "image.gsv", "--scale", "2", "-o", "out2.png", "-y"], 0,
     None),
]
COLD = ["decode", "image.gsv", "--scale", "2", "-o", "cold.png", "-y"]  # a decode that draws with numba


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gsvc-latency-") as tmp:
        folder = Path(tmp)
        make_streams(folder)
        cal = calibration()
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            start = time.perf_counter()
            subprocess.run(gsvc_command(*COLD), cwd=folder, check=True,
                           env={**os.environ, "NUMBA_CACHE_DIR": cache}, capture_output=True)
            cold_seconds = time.perf_counter() - start
        for name, cli_args, expect, target in CASES:
            s = time_command(gsvc_command(*cli_args), args.runs, folder, expect=expect)
            rows.append({"command": name, "runs": len(s), "mean_s": statistics.mean(s),
                         "stdev_s": statistics.stdev(s) if len(s) > 1 else 0.0, "min_s": min(s),
                         "target_s": TARGETS.get(target)})
    load_after = os.getloadavg()[0]
    print(f"calibration: {cal:.3f} s" if cal else "calibration: ../shared/tools/calib.py not found")
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    print(f"{'command':<42} {'mean s':>7} {'± sd':>6} {'min s':>6} {'mean cal':>8} {'target':>7}")
    for r in rows:
        cal_units = f"{r['mean_s'] / cal:8.2f}" if cal else f"{'-':>8}"
        target = f"{r['target_s']:.1f} s" if r["target_s"] else "-"
        ok = "" if not r["target_s"] else (" ok" if r["mean_s"] < r["target_s"] else " MISSED")
        print(f"{r['command']:<42} {r['mean_s']:7.3f} {r['stdev_s']:6.3f} {r['min_s']:6.3f} {cal_units} "
              f"{target:>7}{ok}")
    print(f"first numba decode after installation (--scale 2, numba compiles its cache): {cold_seconds:.2f} s"
          + (f" ({cold_seconds / cal:.1f} cal)" if cal else ""))
    if args.json:
        args.json.write_text(json.dumps({"calibration_s": cal, "load_average_1min": [load_before, load_after],
                                         "rows": rows, "cold_decode_s": cold_seconds,
                                         "cold_decode_command": " ".join(COLD)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
