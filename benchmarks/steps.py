"""Quantizer steps per picture: what choosing them per picture would buy, at equal bytes.

    python -m benchmarks.steps [PICTURE ...] [--preset fast] [--width 384] [--bpp 0.25,0.5,1.0]
                               [--proxy] [--json out.jsonl]

A PICTURE is a Kodak stem (``kodim03``, read from ../shared/data/kodak) or a video
frame ``clip.avi@N`` (frame N of ../shared/data/video/clip.avi); each is area-resized
to ``--width`` pixels wide. Every picture is encoded with size targets (``--bpp``), so
all variants land on the same bytes (rate control) and compare by PSNR alone: today's
steps, then one group at a time halved or doubled (position, log-scale, shear, colour).

``--proxy`` instead fits once with today's steps and re-quantizes that model with each
variant, pricing the change of the real coded bits at ``RateSettings.slope`` dB per
bit per pixel: the cheap search an encoder could run inside a fit. Comparing its
verdicts with the full encodes shows whether such a search can be trusted
(docs/results.md, "Quantizer steps per picture").
"""
from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import av
import numpy as np
import torch

from gsvc.codec import EncodeSettings, decode_image, encode_image
from gsvc.media import read_image, resize
from gsvc.metrics import psnr
from gsvc.model import LayeredImage
from gsvc.presets import train_settings
from gsvc.quantize import QuantSettings, fake_quantize
from gsvc.rate_control import RateSettings, byte_targets, layer_bytes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_PICTURES = ("kodim03", "kodim08", "kodim05", "Megamind.avi@40", "tree.avi@20")

#: (label, QuantSettings field, value): today's steps, then each group finer and coarser
#: (colour, the sensitive one, by a third; the others by half and double)
VARIANTS = [("today", None, None)] + [
    (f"{field} x{factor:.3g}", field, getattr(QuantSettings(), field) * factor)
    for field, factors in (("position_step", (0.5, 2.0)), ("log_scale_step", (0.5, 2.0)),
                           ("shear_step", (0.5, 2.0)), ("color_step", (2 / 3, 4 / 3)))
    for factor in factors
]


def load_picture(name: str, width: int) -> np.ndarray:  # [H, W, 3] uint8
    if "@" in name:
        clip, index = name.split("@")
        with av.open(str(SHARED / "video" / clip)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == int(index):
                    rgb = frame.to_ndarray(format="rgb24")
                    break
            else:
                raise SystemExit(f"{clip} has no frame {index}")
    else:
        rgb = read_image(SHARED / "kodak" / f"{name}.png")
    h, w = rgb.shape[:2]
    return resize(rgb, width, max(2, round(width * h / w / 2) * 2))


def full_encodes(name: str, rgb: np.ndarray, preset: str, bpp: tuple[float, ...]) -> list[dict]:
    h, w = rgb.shape[:2]
    targets = byte_targets(w, h, bpp=bpp)
    rows = []
    for label, field, value in VARIANTS:
        quant = QuantSettings(**({field: value} if field else {}))
        result = encode_image(rgb, EncodeSettings(train=train_settings(preset), quant=quant, targets=targets))
        layers = len(bpp)
        rows.append({
            "picture": name, "variant": label,
            "bytes": [int(b) for b in np.cumsum(result.sizes)[1:]],
            "psnr": [psnr(decode_image(io.BytesIO(result.data), layers=k), rgb) for k in range(1, layers + 1)],
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def proxy(name: str, rgb: np.ndarray, preset: str, bpp: tuple[float, ...]) -> list[dict]:
    h, w = rgb.shape[:2]
    target = torch.from_numpy(rgb.astype(np.float32) / 255.0)
    model = encode_image(rgb, EncodeSettings(train=train_settings(preset), targets=byte_targets(w, h, bpp=bpp))).model
    slope = RateSettings().slope

    def measure(quant: QuantSettings) -> tuple[list[float], int]:
        steps = quant.steps()
        quantized = LayeredImage(w, h, [fake_quantize(l, steps).detached() for l in model.layers])
        with torch.no_grad():
            mse = [float(((quantized.render(k, backend="numba") - target) ** 2).mean())
                   for k in range(1, len(model.layers) + 1)]
        return mse, sum(8 * layer_bytes(l, steps, EncodeSettings().coder) for l in model.layers)

    base_mse, base_bits = measure(QuantSettings())
    rows = []
    for label, field, value in VARIANTS[1:]:
        mse, bits = measure(QuantSettings(**{field: value}))
        gain = [10 * math.log10(a / b) for a, b in zip(base_mse, mse)]
        price = slope * (bits - base_bits) / (w * h)
        rows.append({"picture": name, "variant": label, "proxy_db": gain, "bits_per_pixel": (bits - base_bits) / (w * h),
                     "price_db": price, "net_db": float(np.mean(gain)) - price})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| picture | variant | dB at equal bytes, L1 / L2 / L3 | mean | bytes vs today |", "|---|---|---|---|---|"]
    today = {r["picture"]: r for r in rows if r["variant"] == "today"}
    for r in rows:
        t = today[r["picture"]]
        if r is t:
            out.append(f"| {r['picture']} | today | {' / '.join(f'{p:.2f}' for p in r['psnr'])} (dB) | | |")
            continue
        d = [a - b for a, b in zip(r["psnr"], t["psnr"])]
        db = 100 * (r["bytes"][-1] / t["bytes"][-1] - 1)
        out.append(f"| {r['picture']} | {r['variant']} | {' / '.join(f'{x:+.2f}' for x in d)} | {np.mean(d):+.2f} | "
                   f"{db:+.1f} % |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pictures", nargs="*", default=list(DEFAULT_PICTURES))
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--bpp", default="0.25,0.5,1.0")
    ap.add_argument("--proxy", action="store_true", help="re-quantize one fit instead of encoding each variant")
    ap.add_argument("--json", help="write every row here (JSON lines)")
    args = ap.parse_args()
    bpp = tuple(float(b) for b in args.bpp.split(","))
    rows = []
    for name in args.pictures:
        rgb = load_picture(name, args.width)
        rows += (proxy if args.proxy else full_encodes)(name, rgb, args.preset, bpp)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not args.proxy:
        print(table(rows))


if __name__ == "__main__":
    main()
