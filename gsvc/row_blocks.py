"""Blocks of Gaussians that draw on disjoint rows: passes of coordinate descent over
a large picture (``colour_rounding``, ``geometry_rounding``) run them side by side,
each block in its own order, and come out the same on any number of threads."""
from __future__ import annotations

import numpy as np


def row_blocks(boxes: np.ndarray, keep: np.ndarray, band: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Gaussians that draw something, as phases of blocks [(order, starts)]: in
    each phase the blocks' Gaussians draw on disjoint rows, so the blocks can run side by
    side. band 0: one block, every Gaussian in its order. Otherwise the Gaussians whose
    rows lie within one band of ``band`` rows, band by band; then those within one band
    of the grid shifted by half a band; then the rest, one block. Fixed by the boxes
    alone: the same on any number of threads."""
    live = np.flatnonzero(keep & (boxes[:, 0] <= boxes[:, 1]))
    if band <= 0:
        return [(live, np.array([0, len(live)], dtype=np.int64))]
    y0, y1 = boxes[live, 2].astype(np.int64), boxes[live, 3].astype(np.int64)
    phases, left = [], np.ones(len(live), dtype=bool)
    for shift in (0, band // 2):
        first, last = (y0 + shift) // band, (y1 + shift) // band
        local = left & (first == last)
        ids, keys = live[local], first[local]
        sort = np.lexsort((ids, keys))
        _, counts = np.unique(keys, return_counts=True)
        phases.append((ids[sort], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)))
        left &= ~local
    phases.append((live[left], np.array([0, int(left.sum())], dtype=np.int64)))
    return phases
