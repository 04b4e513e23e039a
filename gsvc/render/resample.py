"""Area resampling (box filter) of a picture to a smaller size, numpy or torch.

Output pixel i along an axis of n_in input pixels shrunk to n_out covers the input
interval [i * n_in / n_out, (i + 1) * n_in / n_out) and is the mean of the input over
it, partial pixels weighted by their overlap: what image editors call "area" or "box"
resizing. Computed from the running integral of each axis (a cumulative sum in float64,
read at fractional positions), so it costs O(pixels) for any ratio and is exact for
integer ones (the plain mean of m x m blocks). Differentiable on torch tensors.
"""
from __future__ import annotations

import numpy as np


def _lib(x):
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def _integral_at(cum, pos: np.ndarray, values, axis: int, lib):
    """The running integral C(pos) along ``axis``: C(k) = sum of the first k values, linear
    in between (the signal is constant over each pixel)."""
    k = np.minimum(np.floor(pos).astype(np.int64), values.shape[axis] - 1)
    frac = pos - k  # [n] in [0, 1]
    shape = [1] * values.ndim
    shape[axis] = -1
    if lib is np:
        frac_b = frac.reshape(shape)
        return np.take(cum, k, axis=axis) + frac_b * np.take(values, k, axis=axis)
    idx = lib.as_tensor(k, device=values.device)
    frac_b = lib.as_tensor(frac, dtype=cum.dtype, device=values.device).reshape(shape)
    return cum.index_select(axis, idx) + frac_b * values.index_select(axis, idx)


#: Non-integer ratios go through float64 running sums in blocks of about this many values.
_BLOCK_VALUES = 1 << 22


def area_shrink_axis(img, n_out: int, axis: int):
    """``img`` resampled along ``axis`` (0 or 1 of [H, W, C]) to ``n_out`` <= its length."""
    lib = _lib(img)
    n_in = img.shape[axis]
    if n_out == n_in:
        return img
    assert 1 <= n_out < n_in and axis in (0, 1), (n_out, n_in, axis)
    if n_in % n_out == 0:  # m x 1 blocks: a plain mean, no running sums
        m = n_in // n_out
        shape = (n_out, m) + tuple(img.shape[1:]) if axis == 0 else (img.shape[0], n_out, m) + tuple(img.shape[2:])
        return img.reshape(shape).mean(axis + 1)
    if lib is not np:
        return _shrink_block(img, n_out, axis, lib)
    other = img.shape[1 - axis]
    step = max(1, _BLOCK_VALUES // max(1, n_in * img.shape[2]))
    parts = []
    for lo in range(0, other, step):  # blocks across the other axis bound the float64 temporaries
        block = img[:, lo : lo + step] if axis == 0 else img[lo : lo + step]
        parts.append(_shrink_block(block, n_out, axis, np))
    return np.concatenate(parts, axis=1 - axis)


def _shrink_block(img, n_out: int, axis: int, lib):
    n_in = img.shape[axis]
    values = img.astype(np.float64) if lib is np else img.to(lib.float64)
    zero_shape = list(values.shape)
    zero_shape[axis] = 1
    if lib is np:
        cum = np.concatenate([np.zeros(zero_shape), np.cumsum(values, axis=axis)], axis=axis)
    else:
        cum = lib.cat([values.new_zeros(zero_shape), lib.cumsum(values, dim=axis)], dim=axis)
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)  # [n_out + 1]
    edges[-1] = n_in
    at = _integral_at(cum, edges, values, axis, lib)
    lo = [slice(None)] * values.ndim
    hi = [slice(None)] * values.ndim
    lo[axis], hi[axis] = slice(0, n_out), slice(1, n_out + 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    widths = np.diff(edges).reshape(shape)
    out = (at[tuple(hi)] - at[tuple(lo)]) / (widths if lib is np else lib.as_tensor(widths, device=values.device))
    return out.astype(img.dtype) if lib is np else out.to(img.dtype)


def area_shrink(img, height: int, width: int):
    """[H, W, C] picture resampled to [height, width, C] (each side no larger than before)."""
    return area_shrink_axis(area_shrink_axis(img, height, 0), width, 1)
