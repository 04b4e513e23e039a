"""Video benchmark: layered P-frame coding against our all-I coding and x264.

    python -m benchmarks.video [--video ../shared/data/video/Megamind.avi] [--frames 30]
                               [--size 360x264] [--preset medium] [--json out.json]
                               [--all-intra-scale 0.33] [--all-intra-from earlier.json]
                               [--p-rate-slope 4.5] [--p-share 0.13] [--p-log-rate 3,0.25] [--p-log-layers 3]
                               [--no-inherit]

Encodes the clip's first frames with the default settings (GOP 30) and with ``--gop 1``
(every frame an I-frame; ``--all-intra-scale`` scales its Gaussian counts, so that its
bytes reach down to the P-frame stream's and the two can be compared at equal bytes
and at equal PSNR), decodes every layer count and reports per layer: bpp, mean
and worst PSNR over frames, MS-SSIM; I- vs P-frame bytes and encode seconds; decode
fps. Then x264 (libx264 through PyAV, preset medium, yuv420p) at a CRF chosen so its
file matches each layer's cumulative bytes, measured the same way (RGB PSNR of the
decoded frames against the source frames). Timings are also given in "cal" units
(seconds / ``../shared/tools/calib.py``) when that script is there.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from gsvc.decoder import stream_info
from gsvc.encoder import PRESETS, EncodeSettings
from gsvc.evaluate import evaluate_video, ms_ssim
from gsvc.media import parse_size, probe_video, read_video
from gsvc.metrics import mse, psnr, psnr_from_mse
from gsvc.presets import train_settings
from gsvc.video_encoder import CodingStructure, encode_video

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT.parent / "shared" / "tools" / "calib.py"


def calibrate() -> float | None:
    if not CALIB.exists():
        return None
    out = subprocess.run([sys.executable, str(CALIB)], capture_output=True, text=True)
    try:
        return float(out.stdout.strip().split()[-1])
    except (ValueError, IndexError):
        return None


def encode(frames: list[np.ndarray], fps: Fraction, settings: EncodeSettings, structure: CodingStructure) -> dict:
    h, w = frames[0].shape[:2]
    out = io.BytesIO()
    start = time.perf_counter()
    reports = []

    def on_frame(r) -> None:
        reports.append(r)
        print(f"  frame {r.index:3d} {r.type} {r.psnr:6.2f} dB {sum(r.bytes):7d} B {r.seconds:6.1f} s"
              + (" (cut)" if r.cut else ""), flush=True)

    encode_video(iter(frames), out, w, h, fps, settings, structure, on_frame=on_frame)
    seconds = time.perf_counter() - start
    data = out.getvalue()
    result = evaluate_video(data, lambda: iter(frames))
    by_type = {t: [r for r in reports if r.type == t] for t in ("I", "P")}
    result["encode_seconds"] = seconds
    result["frame_reports"] = [
        {"index": r.index, "type": r.type, "psnr": r.psnr, "bytes": r.bytes, "seconds": r.seconds, "cut": r.cut}
        for r in reports
    ]
    for t, rs in by_type.items():
        result[f"{t}_frames"] = len(rs)
        result[f"mean_{t}_bytes"] = statistics.fmean(sum(r.bytes) for r in rs) if rs else None
        result[f"mean_{t}_seconds"] = statistics.fmean(r.seconds for r in rs) if rs else None
    # flicker: per-frame PSNR (all layers) standard deviation within each GOP without a cut
    full = [r["psnr"] for r in result["frame_rows"] if r["layers"] == result["layers"][-1]["layers"]]
    gops, current = [], []
    for r, value in zip(reports, full):
        if r.type == "I" and current:
            gops.append(current)
            current = []
        current.append((r, value))
    gops.append(current)
    result["gop_psnr_stdev"] = [statistics.pstdev(v for _, v in g) for g in gops if len(g) > 1
                                and not any(r.cut for r, _ in g[1:])]
    del result["frame_rows"]
    return result


def x264(frames: list[np.ndarray], fps: Fraction, crf: float) -> bytes:
    import av

    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps, options={"crf": f"{crf:.2f}", "preset": "medium"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def x264_at_bytes(frames, fps, target: int) -> dict:
    """Bisect the CRF (0..51, continuous) so the file lands at ``target`` bytes (just under)."""
    import av

    lo, hi = 0.0, 51.0
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        data = x264(frames, fps, mid)
        if len(data) > target:
            lo = mid
        else:
            hi = mid
            best = (mid, data)
    if best is None:
        best = (51.0, x264(frames, fps, 51.0))
    crf, data = best
    with av.open(io.BytesIO(data)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    values = [psnr(a, b) for a, b in zip(decoded, frames)]
    ssims = [ms_ssim(a, b)[0] for a, b in zip(decoded, frames)]
    h, w = frames[0].shape[:2]
    return {"crf": crf, "bytes": len(data), "bpp": 8 * len(data) / (w * h * len(frames)),
            "psnr": statistics.fmean(values), "worst_psnr": min(values),
            "global_psnr": psnr_from_mse(statistics.fmean(mse(a, b) for a, b in zip(decoded, frames))), "ms_ssim": statistics.fmean(ssims)}


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear y(x) over sorted points; None outside their range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "video" / "Megamind.avi"))
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--start", type=float, default=0.0)
    ap.add_argument("--size", default="360x264")
    ap.add_argument("--preset", default="medium", choices=sorted(PRESETS))
    ap.add_argument("--skip-all-intra", action="store_true")
    ap.add_argument("--all-intra-scale", type=float, default=1.0,
                    help="Gaussian counts of the all-I encode, as a share of the default (e.g. 0.33)")
    ap.add_argument("--no-global-motion", action="store_true",
                    help="P-frames predict from the unmoved previous frame (CodingStructure.global_motion)")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--all-intra-from", metavar="JSON",
                    help="take the all-I half from an earlier run's --json (same clip, frames, size and "
                         "preset) instead of encoding it again: P-frame changes leave it as it was")
    ap.add_argument("--p-log-rate", default=",".join(str(v) for v in CodingStructure.log_rate),
                    help="C,KNEE: the P-frames' log rate proxy (CodingStructure.log_rate)")
    ap.add_argument("--p-log-layers", type=int, default=CodingStructure.log_rate_layers,
                    help="layers priced by the log proxy (CodingStructure.log_rate_layers; 0: all L1)")
    ap.add_argument("--no-inherit", action="store_true",
                    help="P-frames write every model (coder 3; CodingStructure.inherit_models off)")
    ap.add_argument("--p-rate-slope", type=float, default=CodingStructure.rate_slope,
                    help="P-frames' rate term, dB per bpp (CodingStructure.rate_slope)")
    ap.add_argument("--p-share", type=float, default=CodingStructure.p_share,
                    help="P-frame iterations as a share of the I-frame ones (CodingStructure.p_share)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="Gaussian counts of the I/P encode, as a share of the default (e.g. 1.5)")
    args = ap.parse_args()

    cal = calibrate()
    info = probe_video(args.video)
    frames = list(read_video(info, start=args.start, max_frames=args.frames, size=parse_size(args.size)))
    h, w = frames[0].shape[:2]
    print(f"{args.video}: {len(frames)} frames at {w}x{h}, {float(info.fps):.3f} fps, preset {args.preset}"
          + (f", calib {cal:.3f} s" if cal else ""), flush=True)
    from gsvc.encoder import default_counts

    counts = None if args.scale == 1.0 else tuple(max(4, round(c * args.scale)) for c in default_counts(w, h))
    settings = EncodeSettings(gaussians=counts, train=train_settings(args.preset), device="cpu")
    results = {"video": args.video, "frames": len(frames), "size": [w, h], "preset": args.preset, "calib": cal,
               "scale": args.scale,
               "p_rate_slope": args.p_rate_slope, "p_share": args.p_share, "global_motion": not args.no_global_motion}
    log_rate = tuple(float(v) for v in args.p_log_rate.split(","))
    results.update(p_log_rate=list(log_rate), p_log_layers=args.p_log_layers)
    print("P-frame coding (default, GOP 30):", flush=True)
    structure = CodingStructure(rate_slope=args.p_rate_slope, p_share=args.p_share,
                                global_motion=not args.no_global_motion,
                                log_rate=log_rate, log_rate_layers=args.p_log_layers,
                                inherit_models=not args.no_inherit)
    results["gsvc"] = encode(frames, info.fps, settings, structure)
    if args.all_intra_from:
        earlier = json.loads(Path(args.all_intra_from).read_text())
        same = {k: earlier.get(k) for k in ("frames", "size", "preset")}
        same["video"] = Path(earlier.get("video", "")).name
        if (same != {"frames": len(frames), "size": [w, h], "preset": args.preset, "video": Path(args.video).name}
                or "gsvc_all_intra" not in earlier):
            sys.exit(f"{args.all_intra_from}: no all-I run of these frames ({same})")
        print(f"all-I coding: from {args.all_intra_from}", flush=True)
        results["all_intra_from"] = args.all_intra_from
        results["all_intra_counts"] = earlier.get("all_intra_counts")
        results["all_intra_calib"] = earlier.get("calib")  # its seconds are that run's
        results["gsvc_all_intra"] = earlier["gsvc_all_intra"]
    elif not args.skip_all_intra:
        print("all-I coding (--gop 1):", flush=True)
        counts = tuple(max(4, round(c * args.all_intra_scale)) for c in default_counts(w, h))
        intra = EncodeSettings(gaussians=counts, train=train_settings(args.preset), device="cpu")
        results["all_intra_counts"] = counts
        results["gsvc_all_intra"] = encode(frames, info.fps, intra, CodingStructure(gop=1))
    results["x264"] = [x264_at_bytes(frames, info.fps, row["bytes"]) for row in results["gsvc"]["layers"]]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def report(r: dict) -> None:
    cal = r.get("calib")

    def secs(v):
        return f"{v:.1f} s" + (f" ({v / cal:.0f} cal)" if cal else "")

    print("\n| method | layers | bytes | bpp | PSNR mean / worst (dB) | global PSNR (dB) | MS-SSIM |")
    print("|---|---|---|---|---|---|---|")
    for name in ("gsvc", "gsvc_all_intra"):
        if name in r:
            for row in r[name]["layers"]:
                print(f"| {name} | {row['layers']} | {row['bytes']} | {row['bpp']:.4f} | "
                      f"{row['psnr']:.2f} / {row['worst_psnr']:.2f} | {row['global_psnr']:.2f} | {row['ms_ssim']:.4f} |")
    for k, row in enumerate(r["x264"], start=1):
        print(f"| x264 (CRF {row['crf']:.1f}) | ~{k} | {row['bytes']} | {row['bpp']:.4f} | "
              f"{row['psnr']:.2f} / {row['worst_psnr']:.2f} | {row['global_psnr']:.2f} | {row['ms_ssim']:.4f} |")
    g = r["gsvc"]
    rows = g["layers"]
    gains = [b["psnr"] - a["psnr"] for a, b in zip(rows, rows[1:])]
    print(f"\nPSNR gain per layer: {', '.join(f'{x:+.2f}' for x in gains)} dB (target >= 0.4)")
    if g["mean_P_bytes"]:
        print(f"mean I-frame {g['mean_I_bytes']:.0f} B, mean P-frame {g['mean_P_bytes']:.0f} B: "
              f"ratio {g['mean_P_bytes'] / g['mean_I_bytes']:.3f} (target <= 0.333)")
        print(f"encode: I-frame {secs(g['mean_I_seconds'])}, P-frame {secs(g['mean_P_seconds'])}: "
              f"ratio {g['mean_P_seconds'] / g['mean_I_seconds']:.3f} (target <= 0.25); "
              f"whole clip {secs(g['encode_seconds'])}")
    print(f"I-frames: {g['I_frames']} of {r['frames']} "
          f"(cuts at {[f['index'] for f in g['frame_reports'] if f['cut']]})")
    print(f"per-frame PSNR stdev within GOPs without cuts: "
          f"{', '.join(f'{x:.2f}' for x in g['gop_psnr_stdev'])} dB (target <= 1)")
    fps = ", ".join(f"{row['decode_fps']:.1f}" for row in rows)
    print(f"decode: {fps} fps at 1..{len(rows)} layers")
    if "gsvc_all_intra" in r:
        a = r["gsvc_all_intra"]
        pts = [(row["bytes"], row["psnr"]) for row in a["layers"]]
        inv = [(row["psnr"], row["bytes"]) for row in a["layers"]]
        for row in rows:
            at_bytes = interpolate(pts, row["bytes"])
            at_psnr = interpolate(inv, row["psnr"])
            print(f"layers 1..{row['layers']}: all-I at the same bytes "
                  + (f"{at_bytes:.2f} dB ({row['psnr'] - at_bytes:+.2f} dB for P-frames)" if at_bytes else "n/a (outside its range)")
                  + "; all-I bytes for the same PSNR "
                  + (f"{at_psnr:.0f} (P-frames use {row['bytes'] / at_psnr:.2f}x)" if at_psnr else "n/a (outside its range)"))
        counts = r.get("all_intra_counts")
        seconds, source = secs(a["encode_seconds"]), ""
        if "all_intra_from" in r:  # another run's: its seconds in its own cal units
            then = r.get("all_intra_calib")
            seconds = f"{a['encode_seconds']:.1f} s" + (f" ({a['encode_seconds'] / then:.0f} cal)" if then else "")
            source = f" (from {r['all_intra_from']})"
        print(f"all-I encode{source} {seconds}, mean {a['mean_I_bytes']:.0f} B per frame"
              + (f", Gaussians per layer {','.join(map(str, counts))}" if counts else ""))
    for row, x in zip(rows, r["x264"]):
        print(f"layers 1..{row['layers']} vs x264 at {x['bytes']} B: {row['psnr'] - x['psnr']:+.2f} dB PSNR "
              f"({row['global_psnr'] - x['global_psnr']:+.2f} dB global), "
              f"{row['ms_ssim'] - x['ms_ssim']:+.4f} MS-SSIM")


if __name__ == "__main__":
    main()
