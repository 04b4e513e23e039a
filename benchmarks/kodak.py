"""Kodak benchmark of the default encoder: per-layer PSNR (quantized), bpp, time.

    python -m benchmarks.kodak [../shared/data/kodak] [--preset medium] [--images kodim01,kodim02]

For every image: encode with the default settings (3 layers, 5000/2000/2000 Gaussians
at 768x512), decode the real bytes at every layer count, and report PSNR after
quantization, cumulative bpp from the stream's bytes, the unquantized model's PSNR
(to show what quantization costs), the share of 8x8 tiles the base layer leaves far
from the target ("holes"), and encode seconds. Then the mean over images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from gsvc.codec import PRESETS, EncodeSettings, decode_image, encode_image, stream_info, to_uint8
from gsvc.media import read_image
from gsvc.metrics import hole_fraction, psnr
from gsvc.presets import train_settings


def run_image(path: Path, preset: str, iterations: int, seed: int, device: str) -> dict:
    rgb = read_image(path)
    settings = EncodeSettings(train=train_settings(preset, iterations, seed=seed), device=device)
    start = time.perf_counter()
    result = encode_image(rgb, settings)
    seconds = time.perf_counter() - start
    info = stream_info(result.data)
    layers = len(info["layers"])
    decoded = [decode_image(result.data, layers=k) for k in range(1, layers + 1)]
    with torch.no_grad():
        unquantized = [psnr(to_uint8(result.model.render(k, backend="numba" if device == "cpu" else "torch")), rgb)
                       for k in range(1, layers + 1)]
    return {
        "image": path.stem,
        "seconds": seconds,
        "gaussians": [l["gaussians"] for l in info["layers"]],
        "bpp": [l["cumulative_bpp"] for l in info["layers"]],
        "psnr": [psnr(d, rgb) for d in decoded],
        "psnr_unquantized": unquantized,
        "base_holes": hole_fraction(decoded[0], rgb),
        "bytes": info["total_bytes"],
    }


def fmt(values, spec=".2f") -> str:
    return " / ".join(format(v, spec) for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--iterations", type=int, help="overrides --preset")
    ap.add_argument("--images", help="comma-separated stems, e.g. kodim01,kodim05 (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write all rows to this file")
    args = ap.parse_args()
    paths = sorted(Path(args.data).glob("*.png"))
    if args.images:
        wanted = set(args.images.split(","))
        paths = [p for p in paths if p.stem in wanted]
    if not paths:
        sys.exit(f"no images found in {args.data}")
    iterations = args.iterations or PRESETS[args.preset].iterations
    print(f"# Kodak, {len(paths)} images, {iterations} iterations, seed {args.seed}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print("| image | encode s | bpp (cum.) L1/L2/L3 | PSNR dB L1/L2/L3 (quantized) | unquantized | base holes |")
    print("|---|---|---|---|---|---|")
    rows = []
    for path in paths:
        row = run_image(path, args.preset, iterations, args.seed, args.device)
        rows.append(row)
        print(f"| {row['image']} | {row['seconds']:.1f} | {fmt(row['bpp'], '.3f')} | {fmt(row['psnr'])} | "
              f"{fmt(row['psnr_unquantized'])} | {row['base_holes']:.3f} |", flush=True)
    mean = lambda key: list(np.mean([r[key] for r in rows], axis=0))  # noqa: E731
    mp, mu = mean("psnr"), mean("psnr_unquantized")
    print(f"| **mean** | {np.mean([r['seconds'] for r in rows]):.1f} | {fmt(mean('bpp'), '.3f')} | {fmt(mp)} | "
          f"{fmt(mu)} | {np.mean([r['base_holes'] for r in rows]):.3f} |")
    gains = np.diff(mp)
    print(f"\nmean gain per layer: {fmt(gains, '+.2f')} dB; quantization cost (full stream): "
          f"{mu[-1] - mp[-1]:.2f} dB; max encode time {max(r['seconds'] for r in rows):.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
