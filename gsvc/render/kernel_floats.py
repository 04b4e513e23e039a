"""The numbers both CPU draws of the render equation use (numba_kernels.py and its
bit-for-bit numpy twin numpy_forward.py), kept once so the two cannot drift apart.
numpy only: importing this loads neither numba nor torch.
"""
from __future__ import annotations

import numpy as np

from .geometry import Q_MAX

#: the cut-off q <= Q_MAX as the kernels compare it (float32 q against float32 Q_MAX)
Q32 = np.float32(Q_MAX)

# Pixel boxes use a slightly larger cut-off and a small margin (float64), so that they
# never drop a pixel whose float32 q passes the cut.
QBOX = Q_MAX * (1.0 + 1e-4)
BOX_MARGIN = 1e-2

#: culling: the float32 evaluation of q may fall below its exact value by at most
#: CULL_REL * (the sum of the magnitudes of q's terms) + CULL_ABS
CULL_REL = 2.0**-20
CULL_ABS = 1e-9

# Cephes expf: clamp, 2^n split with a two-part ln 2, degree-5 polynomial
EXP_LO = np.float32(-80.0)
LOG2E = np.float32(1.44269504088896341)
LN2_HI = np.float32(0.693359375)
LN2_LO = np.float32(-2.12194440e-4)
EXP_P = tuple(np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                      1.6666665459e-1, 5.0000001201e-1))


def box_work(boxes: np.ndarray) -> int:
    """Pixel-Gaussian pairs of [N, 4] (x0, x1, y0, y1) boxes (their summed area): a bound
    on a forward's work, which leaves out the tiles or cells a Gaussian's ellipse misses."""
    w = np.maximum(boxes[:, 1].astype(np.int64) - boxes[:, 0] + 1, 0)
    h = np.maximum(boxes[:, 3].astype(np.int64) - boxes[:, 2] + 1, 0)
    return int(np.dot(w, h))
