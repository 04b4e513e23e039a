"""gsvc/heap.py: the C heap's policy for training (glibc's mallopt)."""
from __future__ import annotations

import ctypes.util
import sys

import pytest

from gsvc import heap


def test_applies_on_glibc_once_and_stays():
    if not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""):
        pytest.skip("glibc only")
    assert heap.keep_freed_blocks() is True
    assert heap.keep_freed_blocks() is True  # idempotent
    assert heap.MMAP_THRESHOLD == 32 << 20 and heap.TRIM_THRESHOLD >= heap.MMAP_THRESHOLD


def test_training_sets_it(monkeypatch):
    """fit (and refine) set the policy before their first iteration."""
    import numpy as np

    from gsvc.encoder import EncodeSettings, encode_image
    from gsvc.presets import train_settings

    calls = []
    monkeypatch.setattr("gsvc.train.keep_freed_blocks", lambda: calls.append(1) or True)
    rgb = (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)
    encode_image(rgb, EncodeSettings(gaussians=(8, 4), train=train_settings("fast", iterations=4)))
    assert calls
