"""Encoder presets: points on the PSNR / encode-time curve, each a training schedule.

A preset fixes the iteration budget and how it is spent (Cool-chic's presets as
phases): coarse-to-fine phases at reduced size, then full size, with early stopping of
a phase whose PSNR has stopped improving (pictures have no quantization-aware share at
the end: ``TrainSettings.qat_share``).
Measured cost and quality of each preset: docs/results.md, "Encode speed"
(``python -m benchmarks.speed``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .geometry_rounding import GeometryRounding
from .train import TrainSettings


@dataclass(frozen=True)
class Preset:
    """A training schedule (the fields of TrainSettings it sets)."""

    #: optimizer steps at most (early stopping may use fewer)
    iterations: int
    #: (scale, share of the iterations) phases before the full-size ones
    coarse_phases: tuple[tuple[float, float], ...] = ()
    #: position learning rate x (1 / scale) ** power in the coarse phases
    coarse_lr_power: float = 1.0
    #: early stopping window (iterations; 0: off) and tolerance (dB per window)
    plateau_window: int = 100
    plateau_tol_db: float = 0.005
    #: passes of the geometry's rounding for the picture (``GeometryRounding.passes``)
    geometry_passes: int = 2


#: Measured on Kodak (docs/results.md, "Encode speed"): coarse phases saved ~20 % of the
#: time at a cost of ~0.15 dB, about what as many fewer full-size iterations cost, so no
#: preset uses them; early stopping only ends phases that have truly stopped improving
#: (flat or simple pictures), never a Kodak picture's. ``fast`` rounds its geometry in one
#: pass (kodim03 / 08 at --bpp 0.25,0.5,1.0, layer 3: +0.22 / +0.03 dB for 2.8 s, about a
#: tenth of its time; two passes took 5 s for +0.13 / +0.04).
PRESETS: dict[str, Preset] = {
    "fast": Preset(iterations=600, geometry_passes=1),
    "medium": Preset(iterations=2400),
    "slow": Preset(iterations=8000),
}
DEFAULT_PRESET = "medium"


def train_settings(preset: str = DEFAULT_PRESET, iterations: int | None = None, **fields) -> TrainSettings:
    """TrainSettings of ``preset``; ``iterations`` overrides its budget (the phases keep
    their shares), ``fields`` set any other TrainSettings field (mode, seed, ...)."""
    p = PRESETS[preset]
    base = dict(iterations=iterations or p.iterations, coarse_phases=p.coarse_phases,
                coarse_lr_power=p.coarse_lr_power, plateau_window=p.plateau_window,
                plateau_tol_db=p.plateau_tol_db, geometry_rounding=GeometryRounding(passes=p.geometry_passes))
    return TrainSettings(**{**base, **fields})
