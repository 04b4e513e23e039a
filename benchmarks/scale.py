"""Scale-out benchmark: GOP units and picture batches on 1 and 2 worker processes (and Ray).

    python -m benchmarks.scale [--frames 30] [--pictures 6] [--size 64x48] [--gop 5]
                               [--gaussians 20,10] [--iterations 30] [--no-ray]
                               [--schedules jobs1,jobs1-1t,jobs2,ray] [--json out.json]

Encodes a synthetic clip (moving shapes, a scene cut two thirds in) and a batch of
synthetic pictures through the API that ``gsvc encode --jobs/--ray`` uses, once per
schedule: in-process (``--jobs 1``; also with 1 thread, to tell the cost of threads
from that of processes), 2 local worker processes, and a local Ray
instance (``ray.init(num_cpus=2)``) when Ray is installed. Reports wall time, CPU
utilisation (CPU seconds of this process and its reaped workers over wall x cores;
Ray's workers are not our children, so only the driver's share is seen there), the
speed-up over the first row (``--jobs 1``) and the overhead per task: the extra core-seconds each unit
cost over the serial run, (wall x workers - serial wall) / units. Checks that every
schedule writes the same bytes. Timings also in "cal" units (seconds /
``../shared/tools/calib.py``) when that script is there.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from gsvc.encoder import EncodeSettings
from gsvc.media import parse_size
from gsvc.scale_out import ImageUnit, Schedule, available_cores, encode_image_batch, run_units, set_threads
from gsvc.train import TrainSettings
from gsvc.video_encoder import CodingStructure, encode_video

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT.parent / "shared" / "tools" / "calib.py"


def calibrate() -> float | None:
    if not CALIB.exists():
        return None
    out = subprocess.run([sys.executable, str(CALIB)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def synthetic_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Moving discs and boxes on smooth backgrounds, [T, H, W, 3] uint8; the scene
    changes two thirds in (a scene cut)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    scenes = [rng.uniform(0.1, 0.9, (4, 3)) for _ in range(2)]
    out = []
    for t in range(count):
        colors = scenes[int(t >= 2 * count // 3)]
        bg = np.stack([colors[0, c] + 0.3 * (xx / width - yy / height) for c in range(3)], -1)
        cx, cy = width * (0.25 + 0.02 * t), height * (0.4 + 0.01 * t)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.15 * height) ** 2
        img = np.where(disc[..., None], colors[1], bg)
        box = (np.abs(xx - width * (0.7 - 0.015 * t)) < 0.1 * width) & (np.abs(yy - 0.3 * height) < 0.08 * height)
        img = np.where(box[..., None], colors[2], img)
        out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    return np.stack(out)


@dataclass
class Run:
    """One job under one schedule."""

    job: str  # "clip" or "batch"
    schedule: str  # "jobs 1", "jobs 1, 1 thr", "jobs 2", "ray (2 CPUs)"
    workers: int
    units: int
    frames: int  # frames or pictures
    wall_s: float
    cpu_s: float  # this process and its reaped children
    utilisation: float  # cpu_s / (wall_s x cores)
    speedup: float = 1.0
    overhead_per_task_s: float = 0.0
    same_bytes: bool = True


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(job: str, name: str, workers: int, units: int, frames: int, work: Callable[[], bytes]) -> tuple[Run, bytes]:
    cpu, wall = _cpu_seconds(), time.perf_counter()
    data = work()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return Run(job, name, workers, units, frames, wall, cpu, cpu / (wall * available_cores())), data


def clip_job(frames: np.ndarray, settings: EncodeSettings, structure: CodingStructure,
             schedule: Schedule) -> Callable[[], bytes]:
    def work() -> bytes:
        out = io.BytesIO()
        h, w = frames.shape[1:3]
        encode_video(iter(frames), out, w, h, Fraction(25), settings, structure, schedule=schedule)
        return out.getvalue()

    return work


def batch_job(pictures: np.ndarray, settings: EncodeSettings, schedule: Schedule) -> Callable[[], bytes]:
    def work() -> bytes:
        units = (ImageUnit(i, f"picture {i}", rgb, settings) for i, rgb in enumerate(pictures))
        return b"".join(done.result.data for done in encode_image_batch(units, schedule))

    return work


def warm_worker(_unit: int) -> float:
    """A trivial unit that loads what an encode loads (torch, numba, the render kernels)."""
    start = time.perf_counter()
    import gsvc.render.numba_cpu  # noqa: F401
    import gsvc.video_encoder  # noqa: F401

    return time.perf_counter() - start


def worker_start_seconds(jobs: int) -> float:
    """Wall time for a fresh pool of ``jobs`` workers to run one trivial unit each."""
    start = time.perf_counter()
    list(run_units(warm_worker, range(jobs), Schedule(jobs=jobs)))
    return time.perf_counter() - start


#: --schedules: key -> (row name, workers, schedule); Ray rows are added when installed
SCHEDULES = {
    "jobs1": ("jobs 1", 1, Schedule(jobs=1)),
    "jobs1-1t": ("jobs 1, 1 thr", 1, Schedule(jobs=1, threads=1)),
    "jobs2": ("jobs 2", 2, Schedule(jobs=2)),
}


def schedules(keys: list[str], use_ray: bool) -> list[tuple[str, int, Schedule]]:
    out = [SCHEDULES[k] for k in keys if k in SCHEDULES]
    if use_ray and "ray" in keys:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("Ray is not installed: its rows are left out (pip install 'gsvc[ray]')")
        else:
            out.append(("ray (2 CPUs)", 2, Schedule(ray="auto")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--pictures", type=int, default=6)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--gop", type=int, default=5)
    ap.add_argument("--gaussians", default="20,10")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--schedules", default="jobs1,jobs1-1t,jobs2,ray",
                    help="rows, in order (the first is the baseline): jobs1, jobs1-1t, jobs2, ray")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    width, height = parse_size(args.size)
    settings = EncodeSettings(gaussians=tuple(int(x) for x in args.gaussians.split(",")),
                              train=TrainSettings(iterations=args.iterations, seed=0), device="cpu")
    structure = CodingStructure(gop=args.gop)
    clip = synthetic_frames(args.frames, width, height)
    pictures = synthetic_frames(args.pictures * 5, width, height, seed=1)[::5]
    units = -(-args.frames // args.gop)
    cal = calibrate()
    print(f"{available_cores()} cores; clip {args.frames} frames {width}x{height}, GOP {args.gop} ({units} units); "
          f"batch {args.pictures} pictures; Gaussians {args.gaussians}, {args.iterations} iterations"
          + (f"; calib {cal:.3f} s" if cal else ""))

    start = worker_start_seconds(2)
    print(f"a fresh pool of 2 workers runs its first (trivial) units after {start:.2f} s"
          + (f" ({start / cal:.1f} cal)" if cal else ""))
    runs: list[Run] = []
    reference: dict[str, bytes] = {}  # each job's bytes under --jobs 1
    ray_started = False
    for name, workers, schedule in schedules(args.schedules.split(","), not args.no_ray):
        if schedule.ray is not None and not ray_started:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            ray_started = True
        for job, n_units, n_frames, work in (
            ("clip", units, args.frames, clip_job(clip, settings, structure, schedule)),
            ("batch", args.pictures, args.pictures, batch_job(pictures, settings, schedule)),
        ):
            if not schedule.parallel:  # in-process: the threads this row asks for
                set_threads(schedule.threads or available_cores())
            run, data = measure(job, name, workers, n_units, n_frames, work)
            base = next((r for r in runs if r.job == job), None)  # the first row is the baseline
            if base is None:
                reference[job] = data
            else:
                run.speedup = base.wall_s / run.wall_s
                run.overhead_per_task_s = (run.wall_s * run.workers - base.wall_s) / run.units
                run.same_bytes = data == reference[job]
            runs.append(run)
            print(f"{job:>5} {name:>14}: {run.wall_s:7.2f} s wall"
                  + (f" ({run.wall_s / cal:6.1f} cal)" if cal else "")
                  + f", {run.frames / run.wall_s:5.2f} frames/s, CPU {100 * run.utilisation:3.0f} %, "
                  f"speed-up {run.speedup:4.2f}, overhead/task {run.overhead_per_task_s:+6.2f} s, "
                  f"same bytes: {run.same_bytes}")
    if ray_started:
        import ray

        ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps({"calib_s": cal, "cores": available_cores(), "worker_start_s": start, "args": vars(args) | {"json": None},
                                         "runs": [asdict(r) for r in runs]}, indent=2))
    if not all(r.same_bytes for r in runs):
        sys.exit("the schedules wrote different bytes")


if __name__ == "__main__":
    main()
