"""Coding of one layer's integer parameters, in both directions, given its context.

A layer is an int64 array [N, 8] of quantized parameters (FORMAT.md order: x, y, a,
b, r, red, green, blue). This module owns the order Gaussians are coded in and the
symbol streams of a layer chunk's payload (FORMAT.md sections 3 and 7):

* **intra** (images, video I-frames): Gaussians sorted by (q_y, q_x); streams
  dy, x, a, b, r, then the colours: red, green, blue with coder 1; green, red - green,
  blue - green with coder 2 (the channels of a Gaussian move together: the differences
  cost 4-7 bits per Gaussian less on Kodak). Coder 3 codes the positions as a point
  set instead of dy and x (``PositionCode``: rows of 2^s position steps, the gaps
  between successive Gaussians in (row, x) order as a bit length and raw bits), then
  a, b, r and the colours as coder 2.
* **predicted** (video P-frames): given the same layer of the previous decoded frame
  (M Gaussians), a keep flag per reference Gaussian, the differences of the K kept
  ones (reference order), then N - K new Gaussians coded as an intra layer. The
  decoded layer is the kept Gaussians in reference order followed by the new ones.
  A **moved** predicted layer (reference 2) first moves the reference by a global
  motion (``GlobalMotion``: a camera pan, zoom and roll) written ahead of it. With
  coder 4 (video streams) each of its 16 streams may take its model from the same
  stream of the previous frame's same layer (its ``History``, which both directions
  hand on frame to frame) instead of writing one.

Every ``encode_*`` returns the payload and the layer exactly as the decoder will see
it, so an encoder keeps the decoder's view as the next frame's reference. Every
function takes the stream's coder id (the header's): no default, so a reader and a
writer can never disagree silently.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from bitstream import StreamError, decode_streams, encode_streams
from bitstream.container import check_range
from bitstream.entropy import (
    CODER_RANGE_V1,
    CODER_RANGE_V2,
    CODER_RANGE_V3,
    CODER_RANGE_V4,
    COMPACT_CODERS,
    INT32_MAX,
    INT32_MIN,
    RAW_MAX_WIDTH,
    read_svarints,
    read_uvarints,
    write_svarints,
    write_uvarints,
)

NPARAMS = 8
#: the coder new picture streams are written with (coder-1 and coder-2 streams keep
#: decoding); video streams write coder 4 (``video_encoder.CodingStructure.coder_for``)
DEFAULT_CODER = CODER_RANGE_V3


def sort_intra(q: np.ndarray) -> np.ndarray:  # [N, 8] -> [N, 8]
    """The intra coding order: by q_y, then q_x (stable)."""
    order = np.lexsort((q[:, 0], q[:, 1]))
    return q[order]


def colour_streams(q: np.ndarray, coder: int) -> list[np.ndarray]:  # [N, 8] -> 3 x [N]
    """The colour streams of a layer's parameters as ``coder`` codes them (linear in them)."""
    red, green, blue = q[:, 5], q[:, 6], q[:, 7]
    if coder == CODER_RANGE_V1:
        return [red, green, blue]
    return [green, red - green, blue - green]


def _from_colour_streams(streams: list[np.ndarray], coder: int) -> list[np.ndarray]:  # 3 x [N] -> r, g, b
    if coder == CODER_RANGE_V1:
        return list(streams)
    green, red, blue = streams
    return [red + green, green, blue + green]


def _intra_streams(q: np.ndarray, coder: int = CODER_RANGE_V1) -> list[np.ndarray]:  # sorted [N, 8] -> 8 x [N]
    dy = np.diff(q[:, 1], prepend=0)
    return [dy, q[:, 0]] + [q[:, j] for j in range(2, 5)] + colour_streams(q, coder)


def _from_intra_streams(streams: list[np.ndarray], coder: int = CODER_RANGE_V1) -> np.ndarray:  # 8 x [N] -> [N, 8]
    dy, x, a, b, r, *colours = streams
    columns = [x, np.cumsum(dy), a, b, r] + _from_colour_streams(colours, coder)
    return np.stack(columns, axis=1).reshape(-1, NPARAMS)


#: row heights coder 3's encoder tries, as log2 of position steps (32: one row, always
#: possible); the cheapest is written
ROW_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 32)
#: the largest row shift a reader accepts
MAX_ROW_SHIFT = 32
#: cells of a position code's grid (rows x span) stay below this (positions are int32)
MAX_CELLS = 1 << 47
_POW2 = np.left_shift(1, np.arange(63, dtype=np.int64))  # 2^0 .. 2^62


def bit_lengths(v: np.ndarray) -> np.ndarray:  # [N] int64 >= 0 -> [N] int64
    """Python's int.bit_length of each value (0 for 0), exactly."""
    return np.searchsorted(_POW2, np.asarray(v, dtype=np.int64), side="right").astype(np.int64)


@dataclass(frozen=True)
class PositionCode:
    """A layer's positions as coder 3 codes them (FORMAT.md section 3.1): a point set.

    Rows are 2^shift position steps high, counted from ``y0``; a Gaussian's cell is
    c = row * span + (q_x - x0). Sorted by (c, y in its row), the gaps g_i = c_i -
    c_(i-1) (c_(-1) = 0) are coded as their bit lengths (a modelled stream) and their
    bits below the top one (raw), the y in the row as ``shift`` raw bits. Where
    Gaussians are dense the gaps are short: the code follows the picture's density,
    which a sorted (dy, x) pair of streams cannot (about 1 bit a Gaussian less on
    Kodak's enhancement layers)."""

    shift: int
    x0: int
    y0: int
    span: int
    order: np.ndarray  # [N] coding order of the layer's Gaussians
    classes: np.ndarray  # [N] bit lengths of the gaps
    raw_values: np.ndarray  # [2N] y in the row, then the gaps' low bits
    raw_widths: np.ndarray  # [2N]

    def prefix(self) -> bytes:
        return bytes([self.shift]) + write_svarints([self.x0, self.y0]) + write_uvarints([self.span - 1])

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, shift: int) -> "PositionCode | None":  # [N], [N]
        """The code of positions (x, y) with rows of 2^shift steps (None: too many cells)."""
        x0, y0, span = _grid(x, y)
        row, cell = _cells(x, y, shift, x0, y0, span)
        if cell is None:
            return None
        within = (y - y0) - (row << shift)
        order = np.lexsort((within, cell))
        gaps = np.diff(cell[order], prepend=0)
        classes = bit_lengths(gaps)
        top = np.where(classes > 0, _POW2[np.maximum(classes - 1, 0)], 0)
        raw_values = np.concatenate([within[order], gaps - top])
        raw_widths = np.concatenate([np.full(len(x), shift), np.maximum(classes - 1, 0)])
        return cls(shift, x0, y0, span, order, classes, raw_values, raw_widths)

    def bits(self) -> float:
        """Bits of the code: its classes coded alone (descriptor included), raw bits and prefix."""
        modelled = 8 * (len(encode_streams([self.classes], coder=CODER_RANGE_V3)) - 4)
        return modelled + float(self.raw_widths.sum()) + 8 * len(self.prefix())

    def estimate(self) -> float:
        """``bits`` without coding or prefix (the same for every row height): the
        classes' empirical entropy and the raw bits."""
        return _estimate(self.classes, self.shift)


def _estimate(classes: np.ndarray, shift: int) -> float:  # [N] -> bits
    counts = np.bincount(classes)
    counts = counts[counts > 0]
    entropy = -float((counts * np.log2(counts / classes.size)).sum())
    return entropy + float(np.maximum(classes - 1, 0).sum()) + shift * classes.size


def _grid(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:  # [N], [N] -> x0, y0, span
    x0 = int(x.min())
    return x0, int(y.min()), int(x.max()) - x0 + 1


def _cells(x: np.ndarray, y: np.ndarray, shift: int, x0: int, y0: int,
           span: int) -> tuple[np.ndarray, np.ndarray | None]:  # -> row [N], cell [N] (None: too many)
    """Each position's row (2^shift steps high, from y0) and cell, row * span + x - x0."""
    row = (y - y0) >> shift
    if (int(row.max()) + 1) * span >= MAX_CELLS:
        return row, None
    return row, row * span + (x - x0)


def position_code(q: np.ndarray) -> PositionCode:  # [N >= 1, 8]
    """The position code of a layer whose row height (over ``ROW_SHIFTS``) gives the
    shortest ``PositionCode.estimate`` (coding each would make the layer's coding ~10x
    slower, and rate control codes layers many times). The estimate needs only the
    sorted cells, so only the chosen code is built."""
    x, y = q[:, 0], q[:, 1]
    x0, y0, span = _grid(x, y)
    best = (math.inf, ROW_SHIFTS[-1])
    for shift in ROW_SHIFTS:
        _, cells = _cells(x, y, shift, x0, y0, span)
        if cells is not None:
            gaps = np.diff(np.sort(cells), prepend=0)
            best = min(best, (_estimate(bit_lengths(gaps), shift), shift))
    return PositionCode.of(x, y, best[1])


def read_position_prefix(payload: bytes, pos: int) -> tuple[tuple[int, int, int, int], int]:
    """(shift, x0, y0, span) of a coder-3 position code at ``payload[pos:]``, checked,
    and the position after it."""
    if pos >= len(payload):
        raise StreamError("corrupt stream: a position code runs past the end of its chunk")
    shift = payload[pos]
    check_range("row shift of a position code", shift, 0, MAX_ROW_SHIFT)
    (x0, y0), end = read_svarints(payload, pos + 1, 2, "the position code of a layer")
    (span1,), end = read_uvarints(payload, end, 1, "the position code of a layer")
    check_range("x origin of a position code", int(x0), INT32_MIN, INT32_MAX)
    check_range("y origin of a position code", int(y0), INT32_MIN, INT32_MAX)
    check_range("span of a position code", int(span1) + 1, 1, 1 << 32)
    return (shift, int(x0), int(y0), int(span1) + 1), end


def position_raw_widths(classes: np.ndarray, shift: int) -> np.ndarray:  # [N] -> [2N]
    """Widths of a position code's raw fields, from its decoded classes (checked)."""
    if classes.size and (classes.min() < 0 or classes.max() > RAW_MAX_WIDTH):
        raise StreamError(f"corrupt stream: a position gap is longer than {RAW_MAX_WIDTH} bits")
    return np.concatenate([np.full(classes.size, shift), np.maximum(classes - 1, 0)])


def positions_from_code(head: tuple[int, int, int, int], classes: np.ndarray,
                        raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # -> x [N], y [N]
    """The positions a coder-3 position code describes, in its order (checked)."""
    shift, x0, y0, span = head
    n = classes.size
    within, low = raw[:n], raw[n:]
    gaps = np.where(classes > 0, _POW2[np.maximum(classes - 1, 0)], 0) + low
    if float(gaps.sum(dtype=np.float64)) >= MAX_CELLS:
        raise StreamError("corrupt stream: a position code leaves its grid")
    cell = np.cumsum(gaps)
    row = cell // span
    x = x0 + (cell - row * span)
    y = y0 + (row << shift) + within
    if n and (int(x.max()) > INT32_MAX or int(y.max()) > INT32_MAX):
        raise StreamError("corrupt stream: a position code leaves the 32-bit range")
    return x, y


def _encode_intra_v3(q: np.ndarray) -> tuple[bytes, list[np.ndarray], tuple, np.ndarray]:
    """Coder 3's intra layer: (position prefix, modelled streams, raw fields, q in coding
    order); an empty layer codes nothing."""
    if len(q) == 0:
        return b"", [], (np.zeros(0, np.int64), np.zeros(0, np.int64)), q
    code = position_code(q)
    q = q[code.order]
    streams = [code.classes] + _intra_streams(q, CODER_RANGE_V2)[2:]
    return code.prefix(), streams, (code.raw_values, code.raw_widths), q


def _decode_intra_v3(head, streams: list[np.ndarray], raw: np.ndarray) -> np.ndarray:  # -> [N, 8]
    classes, a, b, r, *colours = streams
    x, y = positions_from_code(head, classes, raw)
    columns = [x, y, a, b, r] + _from_colour_streams(colours, CODER_RANGE_V2)
    return np.stack(columns, axis=1).reshape(-1, NPARAMS)


def position_bits(q: np.ndarray, coder: int) -> float:  # [N, 8] -> bits of all positions
    """Bits a layer's positions cost under ``coder`` (its position streams coded alone)."""
    if len(q) == 0:
        return 0.0
    if coder in COMPACT_CODERS:
        return position_code(q).bits()
    streams = _intra_streams(sort_intra(q), coder)[:2]
    return float(sum(8 * (len(encode_streams([s], coder=coder)) - 4) for s in streams))


def encode_intra(q: np.ndarray, coder: int, geometric: bool = False) -> tuple[bytes, np.ndarray]:
    """Payload of an intra layer and the decoder's view (``q`` in the coding order: sorted
    by (q_y, q_x), or coder 3's position code's order). ``geometric``: coder 1 may use
    its geometric model (video streams)."""
    q = np.asarray(q, dtype=np.int64).reshape(-1, NPARAMS)
    if coder in COMPACT_CODERS:
        prefix, streams, raw, q = _encode_intra_v3(q)
        return prefix + encode_streams(streams, coder=coder, raw=raw), q
    q = sort_intra(q)
    return encode_streams(_intra_streams(q, coder), geometric=geometric, coder=coder), q


def decode_intra(payload: bytes, count: int, coder: int) -> np.ndarray:  # -> [count, 8]
    if coder in COMPACT_CODERS:
        head, pos = read_position_prefix(payload, 0)
        *streams, raw = decode_streams(payload[pos:], [count] * (NPARAMS - 1),
                                       raw_widths=lambda s: position_raw_widths(s[0], head[0]), coder=coder)
        return _decode_intra_v3(head, streams, raw)
    return _from_intra_streams(decode_streams(payload, [count] * NPARAMS), coder)


#: the unit of ``GlobalMotion.zc`` and ``zs`` (zoom times cosine and sine): 2^16 = 1
ZOOM_ONE = 1 << 16
#: ranges a moved layer's motion may take (FORMAT.md, section 8): zc in 0.5 .. 2, |zs| <= 1
#: (zoom 0.5x .. 2x, rotation under 60 degrees), |ds| <= 2^15
ZC_RANGE = (ZOOM_ONE // 2, 2 * ZOOM_ONE)
ZS_LIMIT = ZOOM_ONE
DS_LIMIT = 1 << 15


@dataclass(frozen=True)
class GlobalMotion:
    """How a moved predicted layer (reference 2, FORMAT.md section 7.4) moves its
    reference before the differences apply, in integers both sides compute alike
    (x, y in position steps; a, b in log-scale steps; >> an arithmetic shift):
    ``x' = tx + ((x * zc - y * zs + 2^15) >> 16)``,
    ``y' = ty + ((x * zs + y * zc + 2^15) >> 16)``, ``a' = a + ds``, ``b' = b + ds``;
    r and the colours unchanged. (zc, zs) / 2^16 = zoom (cos, sin) of a rotation; a
    motion about the picture's centre is folded into tx, ty."""

    tx: int = 0
    ty: int = 0
    zc: int = ZOOM_ONE
    zs: int = 0
    ds: int = 0

    @property
    def identity(self) -> bool:
        return (self.tx, self.ty, self.zc, self.zs, self.ds) == (0, 0, ZOOM_ONE, 0, 0)

    def apply(self, q: np.ndarray) -> np.ndarray:  # [M, 8] -> [M, 8]
        out = np.array(q, dtype=np.int64, copy=True).reshape(-1, NPARAMS)
        x, y = out[:, 0].copy(), out[:, 1].copy()
        half = ZOOM_ONE >> 1
        out[:, 0] = self.tx + ((x * self.zc - y * self.zs + half) >> 16)
        out[:, 1] = self.ty + ((x * self.zs + y * self.zc + half) >> 16)
        out[:, 2:4] += self.ds
        return out

    def camera(self, width: int, height: int, steps: tuple[float, ...]) -> dict:
        """The motion as a camera's, about the picture's centre C: ``pan`` (pixels C
        moves, x and y), ``zoom`` and ``rotation`` (degrees, clockwise on screen: image
        y points down). C moves to A C + t (``motion.to_global_motion`` folds it in)."""
        a, b = self.zc / ZOOM_ONE, self.zs / ZOOM_ONE
        cx, cy = width / 2.0, height / 2.0
        pan = [self.tx * steps[0] + (a - 1.0) * cx - b * cy, self.ty * steps[1] + b * cx + (a - 1.0) * cy]
        return {"pan": pan, "zoom": math.hypot(a, b), "rotation": math.degrees(math.atan2(b, a))}

    def to_bytes(self) -> bytes:
        return write_svarints([self.tx, self.ty, self.zc - ZOOM_ONE, self.zs, self.ds])

    @classmethod
    def read(cls, payload: bytes, pos: int = 0) -> tuple["GlobalMotion", int]:
        """The motion at ``payload[pos:]`` (range-checked) and the position after it."""
        (tx, ty, dzc, zs, ds), end = read_svarints(payload, pos, 5, "the global motion of a moved layer")
        check_range("zoom (zc) of a moved layer", int(dzc) + ZOOM_ONE, *ZC_RANGE)
        check_range("rotation (zs) of a moved layer", int(zs), -ZS_LIMIT, ZS_LIMIT)
        check_range("size change of a moved layer", int(ds), -DS_LIMIT, DS_LIMIT)
        return cls(int(tx), int(ty), int(dzc) + ZOOM_ONE, int(zs), int(ds)), end


#: per stream of a predicted layer (coders 3 and 4: keep flags, 8 differences, the new
#: Gaussians' 7, empty when there are none), the values of the same stream in the
#: previous frame: stream i inherits its model from stream i (coder 4)
History = list[np.ndarray]


@dataclass(frozen=True)
class PredictedCode:
    """A predicted layer as coded: payload, the decoder's view, and its streams (the
    ``History`` of the next frame's same layer)."""

    payload: bytes
    q: np.ndarray  # [N, 8] the kept Gaussians in reference order, then the new ones
    streams: History


def code_predicted(
    reference: np.ndarray,  # [M, 8] the same layer of the previous decoded frame
    keep: np.ndarray,  # [M] bool
    kept: np.ndarray,  # [K, 8] new values of the kept Gaussians, reference order
    new: np.ndarray,  # [N - K, 8] Gaussians added in this frame
    coder: int,
    motion: GlobalMotion | None = None,
    history: History | None = None,
) -> PredictedCode:
    """A predicted layer's payload, the decoder's view ([K + (N - K), 8]) and streams.

    ``motion``: a moved layer (reference 2): ``reference`` is the previous frame's layer
    as decoded, and the differences of ``kept`` are to it after ``motion.apply``.
    ``history`` (coder 4): the previous frame's streams of this layer (``PredictedCode
    .streams``), or None after an I-frame."""
    if motion is not None:
        code = code_predicted(motion.apply(reference), keep, kept, new, coder, history=history)
        return PredictedCode(motion.to_bytes() + code.payload, code.q, code.streams)
    keep = np.asarray(keep, dtype=bool)
    assert keep.shape == (reference.shape[0],) and kept.shape == (int(keep.sum()), NPARAMS), (
        keep.shape, kept.shape, reference.shape)
    new = np.asarray(new, dtype=np.int64).reshape(-1, NPARAMS)
    diff = kept - reference[keep]
    diff_streams = [diff[:, j] for j in range(5)] + colour_streams(diff, coder)
    head = struct.pack(">I", kept.shape[0])
    if coder in COMPACT_CODERS:
        prefix, new_streams, raw, new = _encode_intra_v3(new)
        empty = np.zeros(0, dtype=np.int64)
        streams = [keep.astype(np.int64)] + diff_streams + (new_streams or [empty] * (NPARAMS - 1))
        known = history if coder == CODER_RANGE_V4 and history is not None else None
        payload = head + prefix + encode_streams(streams, coder=coder, raw=raw, history=known)
        return PredictedCode(payload, np.concatenate([kept, new], axis=0), streams)
    if history is not None:
        raise ValueError(f"coder {coder} inherits no models")
    new = sort_intra(new)
    streams = [keep.astype(np.int64)] + diff_streams + _intra_streams(new, coder)
    payload = head + encode_streams(streams, geometric=True, coder=coder)
    return PredictedCode(payload, np.concatenate([kept, new], axis=0), streams)


def encode_predicted(reference: np.ndarray, keep: np.ndarray, kept: np.ndarray, new: np.ndarray, coder: int,
                     motion: GlobalMotion | None = None) -> tuple[bytes, np.ndarray]:
    """``code_predicted`` without a history: (payload, decoder's view)."""
    code = code_predicted(reference, keep, kept, new, coder, motion)
    return code.payload, code.q


@dataclass(frozen=True)
class PredictedParts:
    """What a predicted layer's payload says, before the layer is assembled."""

    reference: np.ndarray  # [M, 8] the reference the differences apply to (moved, for a moved layer)
    keep: np.ndarray  # [M] bool
    diff: np.ndarray  # [K, 8] differences of the kept Gaussians, reference order
    new: np.ndarray  # [N - K, 8] Gaussians added in this frame, sorted
    streams: History  # as decoded: the next frame's history (``code_predicted``)

    def layer(self) -> np.ndarray:  # [N, 8]
        """The decoded layer: the kept Gaussians in reference order, then the new ones."""
        return np.concatenate([self.reference[self.keep] + self.diff, self.new], axis=0)


def predicted_parts(payload: bytes, reference: np.ndarray, count: int, coder: int,
                    moved: bool = False, history: History | None = None) -> PredictedParts:
    """The parts of a predicted layer; ``moved``: a moved one (reference 2), whose
    payload starts with its ``GlobalMotion``; ``history``: as ``code_predicted``'s."""
    if moved:
        motion, pos = GlobalMotion.read(payload)
        return predicted_parts(payload[pos:], motion.apply(reference), count, coder, history=history)
    if len(payload) < 4:
        raise StreamError("corrupt stream: predicted layer too short")
    (k,) = struct.unpack_from(">I", payload, 0)
    m = reference.shape[0]
    check_range("kept Gaussians of a predicted layer", k, 0, min(m, count))  # before any stream is decoded
    if coder in COMPACT_CODERS:
        pos, head, fresh = 4, None, count - k
        if fresh:
            head, pos = read_position_prefix(payload, 4)
        lengths = [m] + [k] * NPARAMS + [fresh] * (NPARAMS - 1)
        widths = (lambda s: position_raw_widths(s[1 + NPARAMS], head[0])) if fresh else (lambda s: [])
        known = history if coder == CODER_RANGE_V4 else None
        *streams, raw = decode_streams(payload[pos:], lengths, raw_widths=widths, coder=coder, history=known)
        new = (_decode_intra_v3(head, streams[1 + NPARAMS :], raw) if fresh
               else np.zeros((0, NPARAMS), dtype=np.int64))
    else:
        lengths = [m] + [k] * NPARAMS + [count - k] * NPARAMS
        streams = decode_streams(payload[4:], lengths)
        new = _from_intra_streams(streams[1 + NPARAMS :], coder)
    keep = streams[0]
    if np.any((keep != 0) & (keep != 1)) or int(keep.sum()) != k:
        raise StreamError("corrupt stream: keep flags disagree with the kept count")
    diff_streams = streams[1:6] + _from_colour_streams(streams[6 : 1 + NPARAMS], coder)
    diff = np.stack(diff_streams, axis=1).reshape(-1, NPARAMS)
    return PredictedParts(reference, keep.astype(bool), diff, new, streams)


def read_predicted(payload: bytes, reference: np.ndarray, count: int, coder: int, moved: bool = False,
                   history: History | None = None) -> tuple[np.ndarray, History]:  # -> [count, 8], streams
    """A predicted layer and its streams (the next frame's history); ``moved``: a moved
    one (reference 2), whose payload starts with its ``GlobalMotion``."""
    parts = predicted_parts(payload, reference, count, coder, moved, history)
    return parts.layer(), parts.streams


def decode_predicted(payload: bytes, reference: np.ndarray, count: int, coder: int,
                     moved: bool = False) -> np.ndarray:  # -> [count, 8]
    """``read_predicted`` without a history: the layer."""
    return read_predicted(payload, reference, count, coder, moved)[0]
