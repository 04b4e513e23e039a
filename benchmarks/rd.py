"""Rate-distortion of gsvc against baselines at the same per-layer byte budgets.

    python -m benchmarks.rd ../shared/data/kodak --out results/
    python -m benchmarks.rd DIR --out /tmp/rd --images kodim01,kodim05 --iterations 300 --max-side 256
    python -m benchmarks.rd DIR --out /tmp/rd --methods joint,jpeg2000
    python -m benchmarks.rd ../shared/data/kodak --out results/ --bpp 0.25,0.5,1.0 --methods joint,jpeg2000,jpeg,webp

Methods (``--methods``, default all), per image:

* ``joint``: gsvc as shipped (P-GSVC joint training; 3 layers, ``default_counts``),
  or, with ``--bpp``, rate-controlled to those cumulative bits per pixel after each
  layer (``gsvc encode --bpp``). Its cumulative bytes after layer 1, 2, .., L are the
  byte budgets of the baselines.
* ``sequential``: gsvc with LIG-style layer-wise training, same counts and iterations.
* ``monolithic``: gsvc with one layer of sum(counts) Gaussians, same iterations: the
  non-scalable reference point that measures the overhead of scalability.
* ``jpeg2000``: ONE JPEG 2000 stream (Pillow / OpenJPEG, 9/7 wavelet, colour
  transform on, LRCP progression) with L quality layers, rate-controlled to the
  budgets (``quality_mode="rates"``, compression ratio = raw bytes / budget,
  re-targeted a few times from the measured sizes). Layer k is decoded from the
  full stream with the decoder's layer limit set to k, and its bytes are MEASURED:
  the stream is written with PLT markers (every packet's length), so the byte
  offset where layer k's packets end is known; the PLT markers are then removed and
  the bytes of layer k are those of the codestream truncated after layer k's packets
  (plus the end marker). That truncated codestream is decoded too and must give the
  same picture as the layer-limited decode (checked, reported as ``verified``). If
  the codestream cannot be parsed, the row reports the target budget, marked
  ``bytes_source=target`` (the full file's size is still printed).
* ``jpeg``: a separate baseline JPEG file (Pillow / libjpeg, optimized Huffman
  tables, 4:2:0) per budget, at the quality (1..100, binary search) whose size is
  closest to the budget; the actual bytes are reported. Not scalable: L files.
* ``webp``: the same with lossy WebP (Pillow / libwebp, method 6).

With several methods, the summary gives each gsvc method's BD-rate (Bjøntegaard,
piecewise cubic: ``benchmarks.bjontegaard``) against each baseline: per image over its
layer points, then the mean over images.
gsvc methods are measured by ``gsvc.evaluate.evaluate_stream`` (real stream bytes,
RGB 8-bit PSNR, MS-SSIM). Outputs in --out, named after the data folder (e.g.
``rd_kodak``): ``.csv`` (one row per image x method x layer), ``.png`` (mean bpp vs
mean PSNR over images, one curve per method, layer points marked) and ``.md``
(per-layer means, scalability overhead, joint-vs-sequential gain). Needs the
``eval`` extra (pytorch-msssim, Pillow, matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import io
import shlex
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bjontegaard import bd_rate
from gsvc.codec import PRESETS, EncodeSettings, default_counts, encode_image
from gsvc.evaluate import evaluate_stream, ms_ssim, ms_ssim_weights
from gsvc.files import atomic_output
from gsvc.media import read_image
from gsvc.metrics import psnr
from gsvc.presets import train_settings

METHODS = ("joint", "sequential", "monolithic", "jpeg2000", "jpeg", "webp")
BUDGET_METHODS = ("jpeg2000", "jpeg", "webp")
IMAGE_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".jpg", ".jpeg", ".webp"}
CSV_FIELDS = ["image", "method", "layers", "bytes", "bpp", "psnr", "ms_ssim",
              "target_bytes", "bytes_source", "setting"]


# ---------------------------------------------------------------- inputs


def load_image(path: Path, max_side: int | None) -> np.ndarray:
    """8-bit RGB; downscaled (Lanczos) so that the long side is at most ``max_side``."""
    rgb = read_image(path)
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        from PIL import Image

        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb)


def find_images(data: Path, stems: str | None) -> list[Path]:
    paths = [data] if data.is_file() else sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if stems:
        wanted = set(stems.split(","))
        paths = [p for p in paths if p.stem in wanted]
    return paths


# ---------------------------------------------------------------- gsvc


def run_gsvc(rgb, counts, preset, iterations, mode, seed, device, targets=None) -> tuple[dict, float]:
    """Encode and evaluate; ``targets`` (cumulative bytes) replace ``counts`` when given."""
    settings = EncodeSettings(gaussians=None if targets else tuple(counts), targets=targets, device=device,
                              train=train_settings(preset, iterations, mode=mode, seed=seed))
    start = time.perf_counter()
    result = encode_image(rgb, settings)
    seconds = time.perf_counter() - start
    return evaluate_stream(result.data, rgb, repeats=1, device=device), seconds


# ---------------------------------------------------------------- JPEG 2000

SOC, SOT, SOD, EOC, SIZ, COD, PLT = 0x4F, 0x90, 0x93, 0xD9, 0x51, 0x52, 0x58
# main-header markers that would change the packet order / count assumed below
_UNSUPPORTED = {0x53: "COC", 0x5F: "POC", 0x60: "PPM", 0x61: "PPT"}


def j2k_encode(rgb: np.ndarray, ratios: list[float]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG2000", no_jp2=True, quality_mode="rates", quality_layers=ratios,
                              irreversible=True, mct=1, progression="LRCP", plt=True)
    return buf.getvalue()


def j2k_decode(data: bytes, layers: int | None = None, reduce: int = 0) -> np.ndarray:
    """Decode a codestream; with ``layers``, only its first quality layers; with
    ``reduce`` = r, at 1/2^r of its size (the r finest wavelet levels left out; each
    side becomes ceil(side / 2^r)).

    Pillow's ``im.layers = k`` is documented but (Pillow <= 13) only reaches the
    decoder when ``im.reduce`` is also set (then ``load`` passes both), so without a
    reduction the layer limit goes into the decoder arguments of the tile directly:
    (codec, reduce, layers, fd, length).
    """
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if reduce:
        im.reduce = reduce
        im.layers = layers or 0
    elif layers:
        im.layers = layers
        tile, = im.tile
        args = (tile[3][0], tile[3][1], layers, *tile[3][3:])
        im.tile = [tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)]
    im.load()
    return np.asarray(im.convert("RGB"))


def _segments(data: bytes, start: int, stop_markers: set[int]):
    """Marker segments (marker, offset, total length) from ``start`` until a stop marker."""
    i = start
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1]
        if marker in stop_markers:
            yield marker, i, 2
            return
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        yield marker, i, 2 + length
        i += 2 + length
    raise ValueError("codestream ends inside its header")


def j2k_layer_prefixes(data: bytes) -> list[bytes]:
    """Split a one-tile LRCP codestream with PLT markers into per-layer codestreams.

    Returns, for k = 1..L, the codestream without PLT markers truncated after the
    packets of layer k, with the tile-part length fixed and an end marker: a valid
    stream holding layers 1..k, whose length is the real cost of layer k.
    """
    if data[:2] != b"\xff\x4f":
        raise ValueError("not a JPEG 2000 codestream")
    main_end = comps = layers = levels = None
    for marker, off, n in _segments(data, 2, {SOT}):
        if marker == SOT:
            main_end = off
        elif marker == SIZ:
            comps = struct.unpack(">H", data[off + 38:off + 40])[0]
            xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack(">8I", data[off + 6:off + 38])
            if xt < xsiz - xto or yt < ysiz - yto:
                raise ValueError("more than one tile")
        elif marker == COD:
            scod, prog, layers = data[off + 4], data[off + 5], struct.unpack(">H", data[off + 6:off + 8])[0]
            levels = data[off + 9]
            if prog != 0:
                raise ValueError("progression order is not LRCP")
            if scod & 0x07:
                raise ValueError("precincts, SOP or EPH markers in use")
        elif marker in _UNSUPPORTED:
            raise ValueError(f"{_UNSUPPORTED[marker]} marker in the main header")
    if None in (main_end, comps, layers, levels):
        raise ValueError("main header lacks SIZ, COD or SOT")
    psot = struct.unpack(">I", data[main_end + 6:main_end + 10])[0]
    tile_end = main_end + psot if psot else len(data) - 2
    if data[tile_end:tile_end + 2] != b"\xff\xd9" or tile_end + 2 != len(data):
        raise ValueError("more than one tile-part")
    lengths: list[int] = []
    kept = []  # tile-part header segments other than SOT and PLT
    for marker, off, n in _segments(data, main_end, {SOD}):
        if marker == SOD:
            body = off + 2
        elif marker == PLT:
            value = 0
            for byte in data[off + 5:off + n]:
                value = (value << 7) | (byte & 0x7F)
                if not byte & 0x80:
                    lengths.append(value)
                    value = 0
        elif marker != SOT:
            kept.append(data[off:off + n])
    per_layer = (levels + 1) * comps  # one precinct per resolution level (default precincts)
    if len(lengths) != layers * per_layer or sum(lengths) != tile_end - body:
        raise ValueError(f"{len(lengths)} packets of {sum(lengths)} bytes, expected {layers * per_layer} "
                         f"of {tile_end - body}")
    sot = bytearray(data[main_end:main_end + 12])
    tile_header = b"".join(kept) + b"\xff\x93"
    prefixes = []
    for k in range(1, layers + 1):
        packets = data[body:body + sum(lengths[:k * per_layer])]
        sot[6:10] = struct.pack(">I", len(sot) + len(tile_header) + len(packets))
        prefixes.append(data[:main_end] + bytes(sot) + tile_header + packets + b"\xff\xd9")
    return prefixes


def j2k_rate_controlled(rgb: np.ndarray, budgets: list[int], rounds: int = 4):
    """One layered JPEG 2000 stream whose layer k ends as near as possible to the
    cumulative ``budgets[k - 1]``: (codestream, per-layer prefixes, their sizes,
    compression ratios, worst relative size error). Prefixes and sizes are None when the
    codestream cannot be split (the error is then its message)."""
    raw = rgb.size
    ratios = [max(1.0, raw / b) for b in budgets]
    best = None
    for _ in range(rounds):
        # OpenJPEG needs strictly decreasing ratios
        for i in range(1, len(ratios)):
            ratios[i] = max(1.0, min(ratios[i], ratios[i - 1] * 0.999))
        data = j2k_encode(rgb, ratios)
        try:
            prefixes = j2k_layer_prefixes(data)
            sizes = [len(p) for p in prefixes]
        except ValueError as e:
            prefixes, sizes, error = None, None, str(e)
        if sizes is None:
            best = (data, None, None, list(ratios), error)
            break
        err = max(abs(s - b) / b for s, b in zip(sizes, budgets))
        if best is None or err < best[-1]:
            best = (data, prefixes, sizes, list(ratios), err)
        if err < 0.01:
            break
        ratios = [r * s / b for r, s, b in zip(ratios, sizes, budgets)]
    return best


def run_jpeg2000(rgb: np.ndarray, budgets: list[int], rounds: int = 4) -> tuple[list[dict], dict]:
    """One layered JPEG 2000 stream rate-controlled to the cumulative ``budgets``."""
    data, prefixes, sizes, ratios, err = j2k_rate_controlled(rgb, budgets, rounds)
    rows, verified = [], True
    for k, budget in enumerate(budgets, start=1):
        decoded = j2k_decode(data, layers=k)
        if prefixes is not None:
            verified &= bool(np.array_equal(decoded, j2k_decode(prefixes[k - 1])))
        rows.append({"layers": k, "bytes": sizes[k - 1] if sizes else budget, "target_bytes": budget,
                     "bytes_source": "prefix" if sizes else "target", "setting": f"ratio={ratios[k - 1]:.2f}",
                     **_quality(decoded, rgb)})
    info = {"file_bytes": len(data), "file_bytes_without_plt": len(prefixes[-1]) if prefixes else None,
            "verified": verified if prefixes else None, "error": None if sizes else err}
    return rows, info


# ---------------------------------------------------------------- JPEG


def jpeg_encode(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def webp_encode(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def run_jpeg(rgb: np.ndarray, budgets: list[int], encode=jpeg_encode) -> list[dict]:
    """One file per budget (``encode``: jpeg_encode or webp_encode) at the quality whose
    size is closest to it."""
    from PIL import Image

    cache: dict[int, bytes] = {}

    def size(q: int) -> int:
        if q not in cache:
            cache[q] = encode(rgb, q)
        return len(cache[q])

    rows = []
    for k, budget in enumerate(budgets, start=1):
        lo, hi = 1, 100  # largest quality whose file fits the budget (size grows with quality)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid - 1)
        q = min({lo, min(lo + 1, 100)}, key=lambda c: (abs(size(c) - budget), c))
        decoded = np.asarray(Image.open(io.BytesIO(cache[q])).convert("RGB"))
        rows.append({"layers": k, "bytes": size(q), "target_bytes": budget, "bytes_source": "file",
                     "setting": f"quality={q}", **_quality(decoded, rgb)})
    return rows


def _quality(decoded: np.ndarray, rgb: np.ndarray) -> dict:
    return {"psnr": psnr(decoded, rgb), "ms_ssim": ms_ssim(decoded, rgb)[0]}


# ---------------------------------------------------------------- summaries


def mean_points(rows: list[dict]) -> dict[str, list[dict]]:
    """Per method and layer count: mean bytes, bpp, PSNR, MS-SSIM over images."""
    out: dict[str, list[dict]] = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        for k in sorted({r["layers"] for r in mine}):
            sel = [r for r in mine if r["layers"] == k]
            ms = [r["ms_ssim"] for r in sel if r["ms_ssim"] is not None]
            out.setdefault(method, []).append({
                "layers": k, "n": len(sel),
                "bytes": float(np.mean([r["bytes"] for r in sel])),
                "bpp": float(np.mean([r["bpp"] for r in sel])),
                "psnr": float(np.mean([r["psnr"] for r in sel])),
                "ms_ssim": float(np.mean(ms)) if len(ms) == len(sel) else None,
            })
    return out


def bd_rates(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(gsvc method, baseline) -> BD-rate per image (images whose curves overlap)."""
    out: dict[tuple[str, str], list[float]] = {}
    images = sorted({r["image"] for r in rows})
    for test in ("joint", "sequential"):
        for anchor in BUDGET_METHODS:
            for image in images:
                a = [r for r in rows if r["image"] == image and r["method"] == anchor]
                t = [r for r in rows if r["image"] == image and r["method"] == test]
                if len(a) < 2 or len(t) < 2:
                    continue
                value = bd_rate([r["bytes"] for r in a], [r["psnr"] for r in a],
                                [r["bytes"] for r in t], [r["psnr"] for r in t])
                if value is not None:
                    out.setdefault((test, anchor), []).append(value)
    return out


def markdown(points, rows, args, images, shapes, iterations, j2k_info, seconds) -> str:
    num_layers = max((p["layers"] for m in points.values() for p in m), default=0)
    sizes = sorted({f"{w}x{h}" for h, w in shapes})
    lines = [
        f"# Rate-distortion: {Path(args.data).name}",
        "",
        f"{len(images)} image{'s' if len(images) != 1 else ''} ({', '.join(sizes)}), gsvc {iterations} iterations, "
        f"seed {args.seed}, device {args.device}. Made by:",
        "",
        "```",
        "python -m benchmarks.rd " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "```",
        "",
        "Mean over images per layer count k: cumulative bpp, PSNR (dB, RGB 8-bit), MS-SSIM. "
        "monolithic has one layer, shown under the last k (same total Gaussians); "
        "jpeg2000 and jpeg are matched to the joint stream's cumulative bytes at each k.",
        "",
        "| method | " + " | ".join(f"k={k} bpp | k={k} PSNR | k={k} MS-SSIM" for k in range(1, num_layers + 1)) + " |",
        "|---|" + "---|---|---|" * num_layers,
    ]
    for method, pts in points.items():
        by_k = {p["layers"]: p for p in pts}
        if method == "monolithic":
            by_k = {num_layers: pts[0]}
        cells = []
        for k in range(1, num_layers + 1):
            p = by_k.get(k)
            if p is None:
                cells += ["–"] * 3
            else:
                cells += [f"{p['bpp']:.4f}", f"{p['psnr']:.2f}",
                          "–" if p["ms_ssim"] is None else f"{p['ms_ssim']:.4f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    joint, mono, seq = points.get("joint"), points.get("monolithic"), points.get("sequential")
    if joint and mono:
        j, m = joint[-1], mono[0]
        lines += [
            "## Scalability overhead (monolithic vs joint, all layers)",
            "",
            f"joint, all {j['layers']} layers: {j['psnr']:.2f} dB at {j['bpp']:.4f} bpp ({j['bytes']:.0f} bytes); "
            f"monolithic: {m['psnr']:.2f} dB at {m['bpp']:.4f} bpp ({m['bytes']:.0f} bytes).",
            f"Overhead of scalability (monolithic minus joint): {m['psnr'] - j['psnr']:+.2f} dB PSNR "
            f"({100 * (m['psnr'] - j['psnr']) / m['psnr']:+.2f}% of the monolithic PSNR); the joint stream is "
            f"{100 * (j['bytes'] - m['bytes']) / m['bytes']:+.2f}% larger in bytes.",
            "",
        ]
    if joint and seq:
        lines += ["## Joint vs sequential (LIG-style) training", "",
                  "| k | joint bpp | sequential bpp | PSNR gain dB (joint - sequential) |", "|---|---|---|---|"]
        for a, b in zip(joint, seq):
            lines.append(f"| {a['layers']} | {a['bpp']:.4f} | {b['bpp']:.4f} | {a['psnr'] - b['psnr']:+.2f} |")
        lines.append("")
    bd = bd_rates(rows)
    if bd:
        lines += ["## BD-rate (Bjøntegaard, piecewise cubic) of gsvc against each baseline", "",
                  "Per image over its layer points, then the mean (and range) over the images where the "
                  "PSNR ranges overlap. Negative: gsvc needs fewer bits for the same PSNR.", "",
                  "| gsvc method | baseline | mean BD-rate | min | max | images |", "|---|---|---|---|---|---|"]
        for (test, anchor), values in bd.items():
            lines.append(f"| {test} | {anchor} | {np.mean(values):+.1f} % | {min(values):+.1f} % | "
                         f"{max(values):+.1f} % | {len(values)} |")
        lines.append("")
    lines += ["## Notes", ""]
    if "jpeg2000" in points:
        verified = [i["verified"] for i in j2k_info.values()]
        measured = all(v is not None for v in verified)
        lines.append(
            "* jpeg2000: one stream per image with one quality layer per gsvc layer (OpenJPEG via Pillow, "
            "9/7 wavelet, colour transform, LRCP, rate-controlled to the budgets). "
            + ("Bytes per layer are measured: the codestream (without its PLT markers) truncated after "
               "layer k's packets, plus the end marker; decoding that prefix gives the same picture as "
               "decoding layer k of the full stream: "
               + ("checked for every layer of every image." if all(verified) else "NOT the same for some images.")
               if measured else
               "For some images the layer boundaries could not be measured; their rows give the target "
               "budget (bytes_source=target in the CSV).")
            + " Full files (with PLT markers): mean "
            + f"{np.mean([i['file_bytes'] for i in j2k_info.values()]):.0f} bytes."
        )
    if "jpeg" in points:
        lines.append("* jpeg: a separate file per budget (not scalable), the quality (1..100) whose size is "
                     "closest to the budget; optimized Huffman tables, 4:2:0. Small budgets may be "
                     "unreachable even at quality 1 (see the CSV's target_bytes).")
    if "webp" in points:
        lines.append("* webp: as jpeg, with lossy WebP (libwebp via Pillow, method 6, 4:2:0).")
    scales = sorted({len(ms_ssim_weights(h, w)) for h, w in shapes})
    lines.append(f"* MS-SSIM scales used: {', '.join(map(str, scales))} (5 is standard; fewer means a picture "
                 "with a short side of 160 pixels or less, not comparable with 5-scale values).")
    if args.max_side:
        lines.append(f"* images downscaled (Lanczos) to a long side of at most {args.max_side} pixels.")
    lines.append(f"* total time {seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(points: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for method, pts in points.items():
        x = [p["bpp"] for p in pts]
        y = [p["psnr"] for p in pts]
        style = "*" if method == "monolithic" else "o"
        ax.plot(x, y, marker=style, markersize=10 if style == "*" else 6, label=method)
        for p in pts:
            ax.annotate(f"L{p['layers']}" if method != "monolithic" else "all", (p["bpp"], p["psnr"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("bits per pixel (mean over images)")
    ax.set_ylabel("PSNR, dB (RGB, mean over images)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="folder of images (e.g. ../shared/data/kodak) or one image")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--images", help="comma-separated stems, e.g. kodim01,kodim05 (default: all)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--iterations", type=int, help="gsvc training iterations (overrides --preset)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--max-side", type=int, help="downscale so the long side is at most this (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bpp", help="gsvc (joint) rate-controlled to these cumulative bits per pixel, e.g. 0.25,0.5,1.0")
    args = ap.parse_args(argv)
    bpp = None
    if args.bpp:
        try:
            bpp = tuple(float(v) for v in args.bpp.split(","))
        except ValueError:
            ap.error("--bpp takes comma-separated numbers")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        ap.error(f"--methods: unknown {','.join(unknown) or '(none)'}; choose from {','.join(METHODS)}")
    if args.iterations is not None and args.iterations < 1:
        ap.error("--iterations must be at least 1")
    if args.max_side is not None and args.max_side < 8:
        ap.error("--max-side must be at least 8")
    data = Path(args.data)
    if not data.exists():
        ap.error(f"{data}: no such file or folder")
    images = find_images(data, args.images)
    if not images:
        ap.error(f"no images found in {data}" + (f" matching --images {args.images}" if args.images else ""))
    if any(m in BUDGET_METHODS for m in methods) and "joint" not in methods:
        print("note: jpeg2000/jpeg budgets come from the joint stream: adding joint", file=sys.stderr)
        methods.insert(0, "joint")
    methods = [m for m in METHODS if m in methods]
    try:
        import matplotlib  # noqa: F401
        import pytorch_msssim  # noqa: F401
        from PIL import features
    except ImportError as e:
        ap.error(f"{e.name} is missing: install the eval extra (pip install -e '.[eval]')")
    if "jpeg2000" in methods and not features.check("jpg_2000"):
        ap.error("this Pillow has no JPEG 2000 (OpenJPEG) support: drop jpeg2000 from --methods")
    iterations = args.iterations or PRESETS[args.preset].iterations
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"rd_{data.name if data.is_dir() else data.stem}"

    start = time.perf_counter()
    rows, shapes, j2k_info = [], [], {}
    for path in images:
        rgb = load_image(path, args.max_side)
        h, w = rgb.shape[:2]
        shapes.append((h, w))
        counts = default_counts(w, h)
        pixels = w * h
        per_method: dict[str, list[dict]] = {}
        budgets = None
        for method in methods:
            t0 = time.perf_counter()
            if method in ("joint", "sequential", "monolithic"):
                mode = "sequential" if method == "sequential" else "joint"
                c = (sum(counts),) if method == "monolithic" else counts
                targets = None
                if bpp and method == "joint":
                    targets = tuple(int(b * pixels / 8) for b in bpp)
                result, secs = run_gsvc(rgb, c, args.preset, iterations, mode, args.seed, args.device, targets)
                setting = ("bpp=" + ",".join(map(str, bpp))) if targets else f"gaussians={','.join(map(str, c))}"
                per_method[method] = [{**r, "target_bytes": targets[i] if targets else "", "bytes_source": "stream",
                                       "setting": f"{setting} counts={r['gaussians']} seconds={secs:.1f}"}
                                      for i, r in enumerate(result["layers"])]
                if method == "joint":
                    budgets = [r["bytes"] for r in result["layers"]]
            elif method == "jpeg2000":
                per_method[method], j2k_info[path.stem] = run_jpeg2000(rgb, budgets)
            elif method == "webp":
                per_method[method] = run_jpeg(rgb, budgets, webp_encode)
            else:
                per_method[method] = run_jpeg(rgb, budgets)
            for r in per_method[method]:
                r["bpp"] = 8.0 * r["bytes"] / pixels
                rows.append({"image": path.stem, "method": method, **{k: r[k] for k in CSV_FIELDS[2:]}})
            desc = " ".join(f"{r['bpp']:.3f}/{r['psnr']:.2f}" for r in per_method[method])
            print(f"{path.stem} {w}x{h} {method:<10} bpp/PSNR {desc}  ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    csv_path, png_path, md_path = (args.out / f"{stem}{ext}" for ext in (".csv", ".png", ".md"))
    with atomic_output(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if r[k] is None else
                                     f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})
    points = mean_points(rows)
    plot(points, png_path, f"{Path(args.data).name}: {len(images)} image{'s' if len(images) != 1 else ''}, "
                           f"gsvc {iterations} iterations")
    text = markdown(points, rows, args, images, shapes, iterations, j2k_info, seconds)
    with atomic_output(md_path) as tmp:
        tmp.write_text(text)
    print(text)
    print(f"wrote {csv_path}, {png_path}, {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
