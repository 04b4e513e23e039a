"""A camera pan and zoom over a still picture, written losslessly: a held-out video check.

    python -m benchmarks.synthetic_pan ../shared/data/kodak/kodim07.png -o /tmp/pan07.mkv
    python -m benchmarks.video --video /tmp/pan07.mkv --size 320x240 --skip-all-intra

A ``--window`` sized crop of the picture moves by ``--pan`` pixels (x, y) per frame
and shrinks by ``--zoom`` per frame (the camera zooms in about the crop's top-left
corner), is resampled bilinearly and area-shrunk to ``--size``, and written as FFV1
(exact pixels). Every frame is the same scene seen by a moving camera, so it isolates
what global motion does; real clips add parallax, objects and noise. ``--noise``
adds sensor noise, drawn afresh for every frame; with ``--pan 0,0 --zoom 0`` the
clip is a still shot from a still camera:

    python -m benchmarks.synthetic_pan ../shared/data/kodak/kodim09.png -o /tmp/still09.mkv \
        --pan 0,0 --zoom 0 --noise 1.5 --frames 16
"""
from __future__ import annotations

import argparse
from fractions import Fraction

import numpy as np
import torch

from gsvc.media import parse_size, read_image, video_output


def pan_frames(picture: np.ndarray, frames: int, window: tuple[int, int], size: tuple[int, int],
               pan: tuple[float, float], zoom: float, origin: tuple[float, float]) -> list[np.ndarray]:
    """[frames] x [H, W, 3] uint8 (``size`` = (W, H)) of ``picture`` [h, w, 3] uint8."""
    h, w = picture.shape[:2]
    image = torch.from_numpy(picture.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    out = []
    for t in range(frames):
        x0, y0 = origin[0] + pan[0] * t, origin[1] + pan[1] * t
        s = 1.0 + zoom * t
        cw, ch = window[0] / s, window[1] / s
        if x0 < 0 or y0 < 0 or x0 + cw > w - 1 or y0 + ch > h - 1:
            raise SystemExit(f"frame {t}: the window leaves the picture; fewer --frames or a slower --pan")
        ys = torch.linspace(y0, y0 + ch, window[1]) / (h - 1) * 2 - 1
        xs = torch.linspace(x0, x0 + cw, window[0]) / (w - 1) * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        crop = torch.nn.functional.grid_sample(image, torch.stack([gx, gy], -1)[None], mode="bilinear",
                                               align_corners=True)
        small = torch.nn.functional.interpolate(crop, size=(size[1], size[0]), mode="area")[0]
        out.append(np.clip(np.round(small.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8))
    return out


def with_noise(frames: list[np.ndarray], sigma: float, seed: int) -> list[np.ndarray]:
    """``frames`` plus independent Gaussian noise of ``sigma`` (8-bit levels) per sample."""
    rng = np.random.default_rng(seed)
    return [np.clip(np.rint(f + rng.normal(0.0, sigma, f.shape)), 0, 255).astype(np.uint8) for f in frames]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("picture")
    ap.add_argument("-o", "--output", required=True, help=".mkv (FFV1, lossless)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--window", default="480x360", help="the crop, pixels of the picture")
    ap.add_argument("--size", default="320x240", help="the frames' size")
    ap.add_argument("--pan", default="2.1,0.9", help="x,y pixels of the picture per frame")
    ap.add_argument("--zoom", type=float, default=0.004, help="zoom-in per frame (0.004: 0.4 %%)")
    ap.add_argument("--origin", default="20,30", help="the first crop's top-left corner")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--noise", type=float, default=0.0, help="sensor noise, standard deviation in 8-bit levels")
    ap.add_argument("--seed", type=int, default=0, help="of the noise")
    args = ap.parse_args()
    pan = tuple(float(v) for v in args.pan.split(","))
    origin = tuple(float(v) for v in args.origin.split(","))
    size = parse_size(args.size)
    frames = pan_frames(read_image(args.picture), args.frames, parse_size(args.window), size, pan, args.zoom, origin)
    if args.noise > 0:
        frames = with_noise(frames, args.noise, args.seed)
    with video_output(args.output, size[0], size[1], Fraction(args.fps)) as write:
        for f in frames:
            write(f)
    print(f"wrote {args.output}: {len(frames)} frames at {size[0]}x{size[1]}")


if __name__ == "__main__":
    main()
