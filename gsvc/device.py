"""Choosing the torch device from the user's --device word."""
from __future__ import annotations

import torch

from .errors import GsvcError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GsvcError("--device cuda: no CUDA device is available (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise GsvcError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)
