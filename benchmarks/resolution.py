"""Resolution scalability: every layer of one stream decoded at 1/4, 1/2 and full size.

    python -m benchmarks.resolution [DATA] [--images kodim01,kodim02] [--preset medium]
        [--iterations N] [--resolution-layers [--resolution-full-weight W]] [--json out.json]

For every image (default: all of ../shared/data/kodak): encode with the default
settings and, with ``--resolution-layers``, also with resolution layers
(``TrainSettings.resolution_scales = RESOLUTION_LAYERS``: layer 1 trained as a
quarter-size thumbnail, layers 1-2 at half size; ``--resolution-full-weight`` sets
``resolution_full_weight``, 0 for thumbnails alone). For each layer count k, decode the
stream with ``decode_image(layers=k, scale=s)`` for s = 1/4, 1/2, 1 and measure PSNR
against the original shrunk to that size with the area filter (``gsvc.media.resize``);
bytes are the stream's cumulative bytes of layers 1..k (``stream_info``).

Next to it, JPEG 2000 (Pillow / OpenJPEG, as in ``benchmarks.rd``): one stream with one
quality layer per gsvc layer, rate-controlled to the default stream's cumulative bytes,
its layer k decoded at reduced resolution (``im.reduce`` = 2 for 1/4, 1 for 1/2) and
measured against the same area-downscaled original. Its wavelet's low-pass band is not
an area filter, so even a stream at no rate limit decoded at 1/4 differs from the
area-downscaled original: the "ceiling" line gives that (irreversible 9/7), the best a
reduced JPEG 2000 decode can do on this measure. The "full, area-shrunk" row decodes
layer k at full size and shrinks it with the area filter (the same bytes; all of the
decoding work of a full-size picture).

Encode times are given in seconds and in "cal" units (seconds / ../shared/tools/calib.py,
run at the start).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from gsvc.codec import PRESETS, EncodeSettings, decode_image, encode_image, stream_info
from gsvc.decoder import output_size
from gsvc.media import read_image, resize
from gsvc.metrics import psnr
from gsvc.presets import train_settings as preset_settings
from gsvc.train import RESOLUTION_LAYERS, TrainSettings

from .rd import find_images, j2k_decode, j2k_rate_controlled
from .video import calibrate

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.25, 0.5, 1.0)
LABELS = {"default": "gsvc default", "resolution": "gsvc resolution layers",
          "jpeg2000": "jpeg2000 (reduce)", "jpeg2000_area": "jpeg2000 (full, area-shrunk)"}


def references(rgb: np.ndarray) -> dict[float, np.ndarray]:
    """The original at each scale, shrunk with the area filter to the decoder's size."""
    h, w = rgb.shape[:2]
    refs = {}
    for s in SCALES:
        out = output_size(w, h, s)
        refs[s] = resize(rgb, out.width, out.height)
    return refs


def train_settings(variant: str, args, iterations: int) -> TrainSettings:
    """The default training, or ("resolution") with resolution layers."""
    if variant == "default":
        return preset_settings(args.preset, iterations, seed=args.seed)
    return preset_settings(args.preset, iterations, seed=args.seed, resolution_scales=RESOLUTION_LAYERS,
                           resolution_full_weight=args.resolution_full_weight)


def run_gsvc(rgb: np.ndarray, refs: dict, train: TrainSettings, device: str) -> dict:
    """Encode, then PSNR of every layer count at every scale; cumulative bytes per layer."""
    start = time.perf_counter()
    data = encode_image(rgb, EncodeSettings(train=train, device=device)).data
    seconds = time.perf_counter() - start
    layers = stream_info(data)["layers"]
    quality = {s: [psnr(decode_image(data, layers=k, scale=s), refs[s]) for k in range(1, len(layers) + 1)]
               for s in SCALES}
    return {"seconds": seconds, "bytes": [l["cumulative_bytes"] for l in layers], "psnr": quality}


def _reduction(scale: float) -> int:
    """JPEG 2000 resolution reduction r for ``scale`` = 2^-r."""
    r = round(-math.log2(scale))
    assert 2.0**-r == scale, scale
    return r


def _j2k_psnr(data: bytes, refs: dict, layers: int | None = None) -> dict[float, float | None]:
    """PSNR of ``data`` decoded at each scale (None where its size is not the reference's)."""
    out = {}
    for s in SCALES:
        decoded = j2k_decode(data, layers=layers, reduce=_reduction(s))
        out[s] = psnr(decoded, refs[s]) if decoded.shape == refs[s].shape else None
    return out


def _shrunk_psnr(full: np.ndarray, refs: dict) -> dict[float, float]:
    """PSNR of a full-size decode shrunk with the area filter to each scale."""
    return {s: psnr(resize(full, ref.shape[1], ref.shape[0]), ref) for s, ref in refs.items()}


def _by_scale(per_layer: list[dict], nbytes: list[int]) -> dict:
    return {"bytes": nbytes, "psnr": {s: [q[s] for q in per_layer] for s in SCALES}}


def run_jpeg2000(rgb: np.ndarray, refs: dict, budgets: list[int]) -> dict[str, dict]:
    """One layered stream at the cumulative ``budgets``: decoded at reduced resolution
    ("jpeg2000"), and decoded at full size then area-shrunk ("jpeg2000_area"); and the
    no-rate-limit stream decoded at reduced resolution ("j2k_ceiling")."""
    from PIL import Image

    data, _, sizes, _, _ = j2k_rate_controlled(rgb, budgets)
    layers = range(1, len(budgets) + 1)
    nbytes = sizes or budgets
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG2000", no_jp2=True, irreversible=True, mct=1)
    return {
        "jpeg2000": _by_scale([_j2k_psnr(data, refs, k) for k in layers], nbytes),
        "jpeg2000_area": _by_scale([_shrunk_psnr(j2k_decode(data, layers=k), refs) for k in layers], nbytes),
        "j2k_ceiling": _by_scale([_j2k_psnr(buf.getvalue(), refs)], [len(buf.getvalue())]),
    }


def run_image(path: Path, args, iterations: int) -> dict:
    rgb = read_image(path)
    refs = references(rgb)
    row = {"image": path.stem, "width": rgb.shape[1], "height": rgb.shape[0]}
    variants = ["default"] + (["resolution"] if args.resolution_layers else [])
    for name in variants:
        row[name] = run_gsvc(rgb, refs, train_settings(name, args, iterations), args.device)
    row.update(run_jpeg2000(rgb, refs, row["default"]["bytes"]))
    return row


# ---------------------------------------------------------------- tables


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def table_row(label: str, result: dict, cal: float | None) -> str:
    seconds = result.get("seconds")
    cells = ["–" if seconds is None else f"{seconds:.0f}" + (f" ({seconds / cal:.0f})" if cal else "")]
    for k, nbytes in enumerate(result["bytes"]):
        cells += [f"{nbytes:.0f}", " / ".join(_fmt(result["psnr"][s][k]) for s in SCALES)]
    return f"| {label} | " + " | ".join(cells) + " |"


def table(rows: list[dict], methods: list[str], cal: float | None) -> list[str]:
    """One row per image and method, then the means."""
    layers = len(rows[0]["default"]["bytes"])
    head = " | ".join(f"k={k} bytes | k={k} PSNR 1/4 / 1/2 / 1" for k in range(1, layers + 1))
    lines = [f"| image | method | encode s{' (cal)' if cal else ''} | {head} |",
             "|---|---|---|" + "---|---|" * layers]
    for r in rows:
        lines += [table_row(f"{r['image']} | {LABELS[m]}", r[m], cal) for m in methods]
    lines += [table_row(f"**mean** | {LABELS[m]}", mean_result([r[m] for r in rows]), cal) for m in methods]
    return lines


def mean_result(results: list[dict]) -> dict:
    out = {"bytes": list(np.mean([r["bytes"] for r in results], axis=0)),
           "psnr": {s: [_mean([r["psnr"][s][k] for r in results]) for k in range(len(results[0]["bytes"]))]
                    for s in SCALES}}
    if all("seconds" in r for r in results):
        out["seconds"] = float(np.mean([r["seconds"] for r in results]))
    return out


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def gains(rows: list[dict]) -> list[str]:
    """Resolution layers minus default: mean PSNR change per layer and scale, and on how
    many images it is positive."""
    layers = len(rows[0]["default"]["bytes"])
    lines = ["| k | " + " | ".join(f"ΔPSNR at {s:g} (images up)" for s in SCALES) + " | Δbytes |",
             "|---|" + "---|" * (len(SCALES) + 1)]
    for k in range(layers):
        cells = []
        for s in SCALES:
            d = [r["resolution"]["psnr"][s][k] - r["default"]["psnr"][s][k] for r in rows]
            cells.append(f"{np.mean(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)})")
        db = np.mean([r["resolution"]["bytes"][k] - r["default"]["bytes"][k] for r in rows])
        lines.append(f"| {k + 1} | " + " | ".join(cells) + f" | {db:+.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--images", help="comma-separated stems, e.g. kodim01,kodim05 (default: all)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--iterations", type=int, help="training iterations (overrides --preset)")
    ap.add_argument("--resolution-layers", action="store_true",
                    help="also encode with resolution layers and compare with the default")
    ap.add_argument("--resolution-full-weight", type=float, default=TrainSettings.resolution_full_weight,
                    help="TrainSettings.resolution_full_weight of the resolution-layers encode (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    args = ap.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        ap.error("--iterations must be at least 1")
    from PIL import features

    if not features.check("jpg_2000"):
        ap.error("this Pillow has no JPEG 2000 (OpenJPEG) support")
    data = Path(args.data)
    if not data.exists():
        ap.error(f"{data}: no such file or folder")
    paths = find_images(data, args.images)
    if not paths:
        ap.error(f"no images found in {data}" + (f" matching --images {args.images}" if args.images else ""))
    iterations = args.iterations or PRESETS[args.preset].iterations
    cal = calibrate()
    command = "python -m benchmarks.resolution " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"# {command}\n# {len(paths)} images, {iterations} iterations, seed {args.seed}, device {args.device}"
          + (f", calib {cal:.3f} s" if cal else ""), flush=True)
    rows = []
    for path in paths:
        rows.append(run_image(path, args, iterations))
        r = rows[-1]
        summary = "  ".join(f"{m} L1@1/4 {r[m]['psnr'][0.25][0]:.2f} all@1 {r[m]['psnr'][1.0][-1]:.2f}"
                            for m in ("default", "resolution") if m in r)
        print(f"{path.stem}: {summary}", file=sys.stderr, flush=True)
    methods = ["default"] + (["resolution"] if args.resolution_layers else []) + ["jpeg2000", "jpeg2000_area"]
    lines = ["", "PSNR (dB) against the original shrunk with the area filter; bytes cumulative (layers 1..k).", ""]
    lines += table(rows, methods, cal)
    ceiling = mean_result([r["j2k_ceiling"] for r in rows])
    lines += ["", f"JPEG 2000 ceiling (9/7, no rate limit, {ceiling['bytes'][0]:.0f} bytes): "
              + " / ".join(f"{_fmt(ceiling['psnr'][s][0])} dB at {s:g}" for s in SCALES) + " (mean)."]
    if args.resolution_layers:
        lines += ["", "Resolution layers minus default (mean over images):", ""] + gains(rows)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "iterations": iterations, "calib_s": cal,
                                         "scales": SCALES, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
