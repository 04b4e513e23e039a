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
    """One small 3-layer encode shared by the codec tests."""
    from gsvc.codec import EncodeSettings, encode_image
    from gsvc.train import TrainSettings

    settings = EncodeSettings(
        gaussians=(60, 30, 30), train=TrainSettings(iterations=240, seed=0), device="cpu"
    )
    return encode_image(crop, settings)

