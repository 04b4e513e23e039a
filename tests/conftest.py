from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kodim03_384x256.png"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def example_rgb() -> np.ndarray:
    from gsvc.media import read_image

    return read_image(EXAMPLE)


@pytest.fixture(scope="session")
def crop(example_rgb) -> np.ndarray:
    """A small real image: 48x32 pixels of the bundled Kodak example (detail + flat)."""
    return np.ascontiguousarray(example_rgb[96:128, 160:208])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture(scope="session")
def encoded(crop):
    """One small 3-layer encode shared by the codec tests (70 Gaussians for the crop's
    1536 pixels: with the background Gaussian, 60 + 30 + 30 drew it at 36 dB and left
    layer 3 little to add)."""
    from gsvc.codec import EncodeSettings, encode_image
    from gsvc.train import TrainSettings

    settings = EncodeSettings(
        gaussians=(30, 20, 20), train=TrainSettings(iterations=240, seed=0), device="cpu"
    )
    return encode_image(crop, settings)



def synthetic_clip(frames: int = 8, cut_at: int | None = 5, width: int = 64, height: int = 48) -> np.ndarray:
    """Moving shapes on a smooth background, [T, H, W, 3] uint8; a scene cut at ``cut_at``
    (different background, different shapes) when given."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for t in range(frames):
        second = cut_at is not None and t >= cut_at
        if not second:
            bg = np.stack([0.2 + 0.4 * xx / width, 0.3 + 0.3 * yy / height, 0.6 + 0 * xx], -1)
            cx, cy = 16 + 1.0 * t, 20 + 0.5 * t
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 64
            img = np.where(disc[..., None], [0.9, 0.8, 0.1], bg)
            box = (np.abs(xx - (48 - 0.75 * t)) < 5) & (np.abs(yy - 12) < 4)
            img = np.where(box[..., None], [0.8, 0.1, 0.2], img)
        else:
            s = t - (cut_at or 0)
            bg = np.stack([0.9 - 0.5 * yy / height, 0.2 + 0 * xx, 0.3 + 0.4 * xx / width], -1)
            ring = np.abs(np.hypot(xx - 40 + 0.75 * s, yy - 26) - 9) < 2.5
            img = np.where(ring[..., None], [0.1, 0.9, 0.9], bg)
        out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    return np.stack(out)


def encode_clip(clip: np.ndarray, settings, structure, fps: int = 12) -> tuple[bytes, list]:
    """``clip`` [T, H, W, 3] encoded as a video stream in memory: (bytes, frame reports)."""
    import io
    from fractions import Fraction

    from gsvc.video_encoder import encode_video

    out, reports = io.BytesIO(), []
    encode_video(iter(clip), out, clip.shape[2], clip.shape[1], Fraction(fps), settings, structure,
                 on_frame=reports.append)
    return out.getvalue(), reports


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory) -> Path:
    """The synthetic clip as a lossless FFV1 .mkv at 12 fps."""
    from fractions import Fraction

    from gsvc.media import video_output

    path = tmp_path_factory.mktemp("clip") / "shapes.mkv"
    frames = synthetic_clip()
    with video_output(path, frames.shape[2], frames.shape[1], Fraction(12)) as write:
        for f in frames:
            write(f)
    return path
