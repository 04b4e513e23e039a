"""Encode speed: PSNR per layer against encode time and peak memory, per preset.

    python -m benchmarks.speed                                   # every preset, kodim01-12 + large
    python -m benchmarks.speed --presets medium --images kodim01,kodim05 --no-large
    python -m benchmarks.speed --presets medium --large-only --json results/speed_large.json

For each preset and picture, one fresh process encodes the picture with the shipped
settings of that preset (`EncodeSettings` as `gsvc encode --preset P` builds them) and
decodes the real stream at every layer count; it reports PSNR per layer (quantized),
encode seconds, and its peak RSS (ru_maxrss: the whole process, Python, torch and numba
included). "Large" pictures are kodim01 upscaled (bilinear) to 1920x1280 and 4000x3000
(12 MP), which tell how the cost grows with the pixel count. Every time is also given in
cal units (seconds / the output of ../shared/tools/calib.py, run before the first
encode), so that machines of different speed compare. Last, the forward and backward
render times at 9000 Gaussians, 768x512, from ``benchmarks.render``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
CALIB = ROOT.parent / "shared" / "tools" / "calib.py"
#: (label, width, height) of the upscaled pictures
LARGE = (("1920x1280", 1920, 1280), ("4000x3000", 4000, 3000))
LARGE_SOURCE = "kodim01"


def calibration() -> float | None:
    if not CALIB.exists():
        return None
    out = subprocess.run([sys.executable, str(CALIB)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().split()[-1])


def upscaled(rgb, width: int, height: int):
    """[H, W, 3] uint8 resized to height x width (bilinear, antialiased when shrinking)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy().copy(order="C").astype(np.uint8)


def worker(spec: dict) -> dict:
    """Encode one picture in this (fresh) process; returns the measurements."""
    if spec.get("threads"):
        from gsvc.scale_out import set_threads

        set_threads(spec["threads"])  # before torch and numba load
    from gsvc.decoder import decode_image
    from gsvc.encoder import EncodeSettings, encode_image
    from gsvc.media import read_image
    from gsvc.metrics import psnr
    from gsvc.presets import train_settings

    rgb = read_image(Path(spec["path"]))
    if spec.get("size"):
        rgb = upscaled(rgb, *spec["size"])
    h, w = rgb.shape[:2]
    settings = EncodeSettings(device="cpu", train=train_settings(spec["preset"], spec.get("iterations")))  # as `gsvc encode`
    steps = []  # iterations actually run (early stopping skips some)
    start = time.perf_counter()
    result = encode_image(rgb, settings, progress=lambda done, total, value: steps.append(done))
    seconds = time.perf_counter() - start
    layers = len(result.model.counts)
    psnrs = [psnr(decode_image(result.data, layers=k), rgb) for k in range(1, layers + 1)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"picture": spec["name"], "preset": spec["preset"], "width": w, "height": h,
            "gaussians": list(settings.counts_for(w, h)), "kept": list(result.model.counts), "iterations": settings.train.iterations,
            "iterations_run": len(steps),
            "seconds": seconds, "psnr": psnrs, "bytes": len(result.data), "peak_rss": rss,
            "threads": spec.get("threads")}


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return {"picture": spec["name"], "preset": spec["preset"], "error": tail[0][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def render_times() -> dict:
    """Forward and forward+backward of the numba backend at 9000 Gaussians, 768x512."""
    from benchmarks.render import _run_child

    return _run_child("numba", 512, 768, 9000, 10, 60.0, 600)


def fmt(values, spec=".2f") -> str:
    return " / ".join(format(v, spec) for v in values)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(KODAK))
    ap.add_argument("--presets", default="fast,medium,slow")
    ap.add_argument("--images", help="comma-separated stems (default: all in --data)")
    ap.add_argument("--iterations", type=int, help="override the presets' iteration counts (quick checks)")
    ap.add_argument("--no-large", action="store_true", help="skip the upscaled 1920x1280 and 4000x3000 pictures")
    ap.add_argument("--large-only", action="store_true", help="only the upscaled pictures")
    ap.add_argument("--large", default=",".join(label for label, _, _ in LARGE),
                    help="which upscaled pictures (default: %(default)s)")
    ap.add_argument("--no-render", action="store_true", help="skip the forward/backward timing")
    ap.add_argument("--threads", help="comma-separated thread counts to compare (e.g. 1,2); default: all cores")
    ap.add_argument("--json", type=Path, help="also write every row here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    data = Path(args.data)
    paths = sorted(data.glob("*.png"))
    if args.images:
        wanted = set(args.images.split(","))
        paths = [p for p in paths if p.stem in wanted]
    if not paths and not args.large_only:
        sys.exit(f"no pictures found in {data}")
    specs = []
    for preset in args.presets.split(","):
        if not args.large_only:
            specs += [{"name": p.stem, "path": str(p), "preset": preset} for p in paths]
        if not args.no_large:
            source = data / f"{LARGE_SOURCE}.png"
            specs += [{"name": label, "path": str(source), "size": [w, h], "preset": preset}
                      for label, w, h in LARGE if label in args.large.split(",")]
    if args.threads:
        specs = [{**spec, "threads": int(n)} for spec in specs for n in args.threads.split(",")]
    for spec in specs:
        if args.iterations:
            spec["iterations"] = args.iterations

    cal = calibration()
    print(f"calibration: {cal:.3f} s" if cal else "calibration: calib.py not found (no cal units)", flush=True)
    rows = []
    for spec in specs:
        row = run_worker(spec)
        rows.append(row)
        if "error" in row:
            print(f"{row['preset']:>6} {row['picture']:>10}: ERROR {row['error']}", flush=True)
            continue
        c = f"{row['seconds'] / cal:7.0f} cal" if cal else ""
        threads = f" {row['threads']} thread(s)" if row.get("threads") else ""
        print(f"{row['preset']:>6} {row['picture']:>10}{threads}: {row['seconds']:7.1f} s {c}  PSNR {fmt(row['psnr'])} dB  "
              f"{row['bytes']} B  peak RSS {row['peak_rss'] / 2**30:.2f} GiB  "
              f"{row['iterations_run']}/{row['iterations']} iterations run", flush=True)

    print("\n| preset | picture(s) | iterations | encode s | cal | PSNR dB L1 / L2 / L3 | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        kodak = [r for r in rows if r["preset"] == preset and "error" not in r and r["picture"].startswith("kodim")]
        if kodak:
            sec = statistics.mean(r["seconds"] for r in kodak)
            ps = [statistics.mean(r["psnr"][k] for r in kodak) for k in range(len(kodak[0]["psnr"]))]
            rss = max(r["peak_rss"] for r in kodak)
            print(f"| {preset} | Kodak mean of {len(kodak)} | {kodak[0]['iterations']} | {sec:.1f} | "
                  f"{sec / cal:.0f} |" if cal else f"| {preset} | Kodak mean of {len(kodak)} | "
                  f"{kodak[0]['iterations']} | {sec:.1f} | - |", end="")
            print(f" {fmt(ps)} | {rss / 2**30:.2f} |")
        for r in rows:
            if r["preset"] == preset and "error" not in r and not r["picture"].startswith("kodim"):
                cu = f"{r['seconds'] / cal:.0f}" if cal else "-"
                print(f"| {preset} | {r['picture']} | {r['iterations']} | {r['seconds']:.1f} | {cu} | "
                      f"{fmt(r['psnr'])} | {r['peak_rss'] / 2**30:.2f} |")
    render = None
    if not args.no_render:
        render = render_times()
        if "error" in render:
            print(f"\nrender timing: {render['error']}")
        else:
            print(f"\nrender, numba, 9000 Gaussians, 768x512: {json.dumps(render)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"calibration_s": cal, "rows": rows, "render": render}, indent=2) + "\n")


if __name__ == "__main__":
    main()
