"""Side-by-side crops: original, gsvc, JPEG, JPEG 2000 and WebP at the same bytes.

    python -m benchmarks.crops ../shared/data/kodak/kodim08.png --bpp 0.25,0.5,1.0 \
        --crop 0,0,192,128 --zoom 2 --out docs/crops_kodim08.png

Encodes the picture with ``gsvc encode --bpp`` (default preset), decodes ``--layers``
(default all), and codes the baselines at that many bytes (JPEG and WebP: the quality
whose file is closest to the gsvc stream's cumulative size; JPEG 2000: one
single-layer stream rate-controlled to it). Writes one PNG: the crop (x, y, w, h)
of each, left to right, enlarged ``--zoom`` times (nearest neighbour), and prints
bytes and PSNR (whole picture) of each. Needs the ``eval`` extra (Pillow).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rd import j2k_decode, j2k_rate_controlled, jpeg_encode, run_jpeg, webp_encode
from gsvc.codec import EncodeSettings, decode_image, encode_image
from gsvc.media import read_image, write_image
from gsvc.metrics import psnr
from gsvc.presets import DEFAULT_PRESET, train_settings


def _decode_pil(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--bpp", default="0.25,0.5,1.0", help="gsvc size targets (cumulative bpp per layer)")
    ap.add_argument("--layers", type=int, help="layers to show (default: all)")
    ap.add_argument("--crop", default="0,0,192,128", help="x,y,w,h of the crop")
    ap.add_argument("--zoom", type=int, default=2)
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rgb = read_image(args.image)
    h, w = rgb.shape[:2]
    bpp = tuple(float(v) for v in args.bpp.split(","))
    x, y, cw, ch = (int(v) for v in args.crop.split(","))
    if not (0 <= x < x + cw <= w and 0 <= y < y + ch <= h):
        ap.error(f"--crop {args.crop} leaves the {w}x{h} picture")
    start = time.perf_counter()
    settings = EncodeSettings(gaussians=None, targets=tuple(int(b * w * h / 8) for b in bpp),
                              train=train_settings(args.preset))
    result = encode_image(rgb, settings)
    seconds = time.perf_counter() - start
    k = args.layers or len(bpp)
    budget = sum(result.sizes[: k + 1])  # header and layers 1..k
    pictures = {"original": rgb, f"gsvc ({k} layers)": decode_image(result.data, layers=k)}
    sizes = {f"gsvc ({k} layers)": budget}
    for name, encode in (("jpeg", jpeg_encode), ("webp", webp_encode)):
        row = run_jpeg(rgb, [budget], encode)[0]
        quality = int(row["setting"].split("=")[1])
        data = encode(rgb, quality)
        pictures[f"{name} (q {quality})"] = _decode_pil(data)
        sizes[f"{name} (q {quality})"] = len(data)
    full, prefixes, *_ = j2k_rate_controlled(rgb, [budget])
    data = prefixes[0] if prefixes else full  # without its PLT markers when they can be cut
    pictures["jpeg2000"] = j2k_decode(data)
    sizes["jpeg2000"] = len(data)
    tiles = [np.kron(p[y : y + ch, x : x + cw], np.ones((args.zoom, args.zoom, 1), dtype=np.uint8))
             for p in pictures.values()]
    gap = np.full((ch * args.zoom, 4, 3), 255, dtype=np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    write_image(args.out, row)
    print(f"{args.image.name} {w}x{h}, crop x={x} y={y} {cw}x{ch} zoom {args.zoom}, gsvc encode {seconds:.0f} s")
    print("left to right: " + " | ".join(pictures))
    for name, picture in pictures.items():
        if name != "original":
            print(f"  {name:<18} {sizes[name]:7d} bytes {8 * sizes[name] / (w * h):.3f} bpp  "
                  f"PSNR {psnr(picture, rgb):.2f} dB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
