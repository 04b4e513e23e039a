"""Coding of one layer's integer parameters, in both directions, given its context.

A layer is an int64 array [N, 8] of quantized parameters (FORMAT.md order: x, y, a,
b, r, red, green, blue). This module owns the order Gaussians are coded in and the
symbol streams of a layer chunk's payload (FORMAT.md sections 3 and 7):

* **intra** (images, video I-frames): Gaussians sorted by (q_y, q_x); streams
  dy, x, a, b, r, red, green, blue.
* **predicted** (video P-frames): given the same layer of the previous decoded frame
  (M Gaussians), a keep flag per reference Gaussian, the differences of the K kept
  ones (reference order), then N - K new Gaussians coded as an intra layer. The
  decoded layer is the kept Gaussians in reference order followed by the new ones.

Every ``encode_*`` returns the payload and the layer exactly as the decoder will see
it, so an encoder keeps the decoder's view as the next frame's reference.
"""
from __future__ import annotations

import struct

import numpy as np

from bitstream import StreamError, decode_streams, encode_streams
from bitstream.container import check_range

NPARAMS = 8


def sort_intra(q: np.ndarray) -> np.ndarray:  # [N, 8] -> [N, 8]
    """The intra coding order: by q_y, then q_x (stable)."""
    order = np.lexsort((q[:, 0], q[:, 1]))
    return q[order]


def _intra_streams(q: np.ndarray) -> list[np.ndarray]:  # sorted [N, 8] -> 8 x [N]
    dy = np.diff(q[:, 1], prepend=0)
    return [dy, q[:, 0]] + [q[:, j] for j in range(2, NPARAMS)]


def _from_intra_streams(streams: list[np.ndarray]) -> np.ndarray:  # 8 x [N] -> [N, 8]
    dy, x, *rest = streams
    return np.stack([x, np.cumsum(dy)] + rest, axis=1).reshape(-1, NPARAMS)


def encode_intra(q: np.ndarray, geometric: bool = False) -> tuple[bytes, np.ndarray]:
    """Payload of an intra layer and the decoder's view (``q`` sorted)."""
    q = sort_intra(np.asarray(q, dtype=np.int64).reshape(-1, NPARAMS))
    return encode_streams(_intra_streams(q), geometric=geometric), q


def decode_intra(payload: bytes, count: int) -> np.ndarray:  # -> [count, 8]
    return _from_intra_streams(decode_streams(payload, [count] * NPARAMS))


def encode_predicted(
    reference: np.ndarray,  # [M, 8] the same layer of the previous decoded frame
    keep: np.ndarray,  # [M] bool
    kept: np.ndarray,  # [K, 8] new values of the kept Gaussians, reference order
    new: np.ndarray,  # [N - K, 8] Gaussians added in this frame
) -> tuple[bytes, np.ndarray]:
    """Payload of a predicted layer and the decoder's view ([K + (N - K), 8])."""
    keep = np.asarray(keep, dtype=bool)
    assert keep.shape == (reference.shape[0],) and kept.shape == (int(keep.sum()), NPARAMS), (
        keep.shape, kept.shape, reference.shape)
    new = sort_intra(np.asarray(new, dtype=np.int64).reshape(-1, NPARAMS))
    diff = kept - reference[keep]
    streams = [keep.astype(np.int64)] + [diff[:, j] for j in range(NPARAMS)] + _intra_streams(new)
    payload = struct.pack(">I", kept.shape[0]) + encode_streams(streams, geometric=True)
    return payload, np.concatenate([kept, new], axis=0)


def decode_predicted(payload: bytes, reference: np.ndarray, count: int) -> np.ndarray:  # -> [count, 8]
    if len(payload) < 4:
        raise StreamError("corrupt stream: predicted layer too short")
    (k,) = struct.unpack_from(">I", payload, 0)
    m = reference.shape[0]
    check_range("kept Gaussians of a predicted layer", k, 0, min(m, count))  # before any stream is decoded
    lengths = [m] + [k] * NPARAMS + [count - k] * NPARAMS
    streams = decode_streams(payload[4:], lengths)
    keep = streams[0]
    if np.any((keep != 0) & (keep != 1)) or int(keep.sum()) != k:
        raise StreamError("corrupt stream: keep flags disagree with the kept count")
    diff = np.stack(streams[1 : 1 + NPARAMS], axis=1).reshape(-1, NPARAMS)
    kept = reference[keep.astype(bool)] + diff
    new = _from_intra_streams(streams[1 + NPARAMS :])
    return np.concatenate([kept, new], axis=0)
