"""gsvc: a scalable image codec built on layered 2D Gaussian splatting (P-GSVC)."""
import os as _os

__version__ = "0.1.0"

# torch and numba each keep an OpenMP thread pool. With OpenMP's default wait policy
# the threads of one pool spin for a while after every parallel region, and on a machine
# with few cores they then steal the cores from the other pool: each small torch op
# after a numba kernel waited a scheduler tick (a training iteration ran 2x slower on
# 2 cores, see docs/results.md "Encode speed"). Passive waiting yields the core at once.
# Set before torch or numba load their OpenMP runtime; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
