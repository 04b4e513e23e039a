#!/usr/bin/env python
"""Time the render backends side by side.

For every image size x Gaussian count, each backend renders the same random scene
(uniform positions, log-Cholesky a, b ~ N(1.2, 0.3), r ~ N(0, 0.3): sigmas of a few
pixels) and reports the median wall time of

* fwd:     a forward render under torch.no_grad(),
* fwd+bwd: a forward with gradients on means/conics/colors plus out.backward(g),

and the peak memory of one fwd+bwd: for CPU backends the growth of the process's
peak RSS (ru_maxrss) over its state after a tiny warm-up, for CUDA the growth of
torch.cuda.max_memory_allocated. Each (backend, size, count) runs in a fresh
subprocess so that peaks do not leak between rows.

    python -m benchmarks.render --counts 9000 --sizes 768x512
    python -m benchmarks.render --backends numba,torch --repeats 10 --max-seconds 30
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: backend label -> (registry name, device)
BACKENDS = {"numba": ("numba", "cpu"), "torch": ("torch", "cpu"), "torch-cuda": ("torch", "cuda")}


def _scene(n: int, height: int, width: int, device):
    import torch

    from gsvc.render import conics_from_chol

    g = torch.Generator().manual_seed(0)
    means = torch.rand(n, 2, generator=g) * torch.tensor([float(width), float(height)])
    ab = torch.randn(n, 2, generator=g) * 0.3 + 1.2
    r = torch.randn(n, 1, generator=g) * 0.3
    conics = conics_from_chol(torch.cat([ab, r], dim=1))
    colors = torch.rand(n, 3, generator=g)
    grad = torch.randn(height, width, 3, generator=g)
    return [t.to(device) for t in (means, conics, colors, grad)]


def _worker(label: str, height: int, width: int, n: int, repeats: int, budget: float) -> dict:
    """Measure one (backend, size, count) in this process; returns a JSON-able dict."""
    import torch

    from gsvc.render import get_backend

    name, dev = BACKENDS[label]
    device = torch.device(dev)
    fn = get_backend(name)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fwd(m, c, col):
        with torch.no_grad():
            fn(m, c, col, height, width)
        sync()

    def fwd_bwd(m, c, col, grad):
        m, c, col = (t.detach().requires_grad_(True) for t in (m, c, col))
        out = fn(m, c, col, grad.shape[0], grad.shape[1])
        out.backward(grad)
        sync()

    # warm-up on a tiny scene (JIT compile / cache load, CUDA context), then the baseline
    fwd_bwd(*_scene(16, 32, 48, device))
    means, conics, colors, grad = _scene(n, height, width, device)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t0 = time.perf_counter()
    fwd_bwd(means, conics, colors, grad)  # first full-size run: warm-up and memory peak
    first = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base

    # as many repeats as fit in the budget (at least one of each)
    reps = max(1, min(repeats, int(budget / max(first, 1e-9) / 1.5)))
    t_fwd, t_fb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fwd(means, conics, colors)
        t_fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fwd_bwd(means, conics, colors, grad)
        t_fb.append(time.perf_counter() - t0)
    return {
        "fwd_ms": 1e3 * statistics.median(t_fwd),
        "fb_ms": 1e3 * statistics.median(t_fb),
        "peak_mib": peak / 2**20,
        "runs": reps,
        "first_s": first,
    }


def _available(labels):
    import torch

    out = []
    for label in labels:
        if label not in BACKENDS:
            raise SystemExit(f"unknown backend {label!r} (choose from {', '.join(BACKENDS)})")
        if BACKENDS[label][1] == "cuda" and not torch.cuda.is_available():
            print(f"# {label}: CUDA not available, skipped", file=sys.stderr)
            continue
        out.append(label)
    return out


def _run_child(label, height, width, n, repeats, budget, timeout):
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        f"{label}:{width}x{height}:{n}:{repeats}:{budget}",
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:80]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="768x512,1920x1080", help="comma-separated WxH")
    p.add_argument("--counts", default="1000,9000,50000", help="comma-separated Gaussian counts")
    p.add_argument(
        "--backends", default="torch,numba,torch-cuda",
        help=f"comma-separated, from {', '.join(BACKENDS)} (unavailable ones are skipped)",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median)")
    p.add_argument(
        "--max-seconds", type=float, default=60.0,
        help="time budget per (backend, size, count): fewer repeats when slow, and a "
        "combination predicted (from the smaller counts) to need more than this for one "
        "fwd+bwd is skipped",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        label, size, n, reps, budget = args.worker.split(":")
        w, h = (int(v) for v in size.split("x"))
        print(json.dumps(_worker(label, h, w, int(n), int(reps), float(budget))))
        return

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    labels = _available([b.strip() for b in args.backends.split(",") if b.strip()])

    results = {}
    for w, h in sizes:
        for label in labels:
            last = None  # (count, fwd+bwd seconds) of the previous count, for prediction
            for n in counts:
                if last is not None and last[1] * n / last[0] > args.max_seconds:
                    results[(w, h, n, label)] = {"error": "skipped (too slow)"}
                    continue
                timeout = 4 * args.max_seconds + 120
                r = _run_child(label, h, w, n, args.repeats, args.max_seconds, timeout)
                results[(w, h, n, label)] = r
                if "error" not in r:
                    last = (n, r["fb_ms"] / 1e3)
                print(f"# {label:10s} {w}x{h} N={n}: {r}", file=sys.stderr, flush=True)

    import numba
    import torch

    print()
    print(
        f"CPU threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; "
        f"fwd = forward under no_grad, fwd+bwd = forward with grads + backward; "
        f"median ms; peak = extra peak memory of one fwd+bwd (CPU: RSS, CUDA: allocated)."
    )
    print()
    head = ["size", "N"]
    for label in labels:
        head += [f"{label} fwd ms", f"{label} fwd+bwd ms", f"{label} peak MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * len(head)) + "|")
    for w, h in sizes:
        for n in counts:
            row = [f"{w}x{h}", str(n)]
            for label in labels:
                r = results[(w, h, n, label)]
                if "error" in r:
                    row += [r["error"], "", ""]
                else:
                    runs = "" if r["runs"] >= args.repeats else f" ({r['runs']} runs)"
                    row += [f"{r['fwd_ms']:.1f}{runs}", f"{r['fb_ms']:.1f}", f"{r['peak_mib']:.0f}"]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
