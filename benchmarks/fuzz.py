"""Structure-aware fuzzing of the .gsv reader and decoder (docs/fuzz.md).

    python -m benchmarks.fuzz [--cases 100000] [--jobs 2] [--seed 0] [--json out.json]
                              [--timeout 30] [--memory-gib 4] [--failures fuzz-failures]
    python -m benchmarks.fuzz --replay fuzz-failures/case-123.json

Every case starts from a seed stream (the golden tests/data/tiny.gsv, tiny_video.gsv
and tiny_video_moved.gsv, and synthetic ones whose streams use categorical, geometric,
peaked and binned models), applies one to three mutations at the level of the format's fields (header
and chunk fields, model descriptors, count tables, coded words, chunk order,
truncation, bit flips), recomputes the chunk CRCs and, unless a mutation is about
them, the FRAM layer sizes, so that the bytes reach the parsers and the entropy
decoder. A worker process then runs ``stream_info`` and a decode (random layer count
and scale) under an address-space limit; the parent gives each step (the info, each
decoded picture) a timeout, and kills and restarts a worker that hangs or dies.
Outcomes: "decoded", "clean error" (StreamError or GsvcError), and failures (wrong
exception, MemoryError, bad output, crash, timeout), which must not happen. Failing
cases are saved (bytes and a JSON description) for ``--replay``.

The mutation engine takes its decisions from a ``Chooser``, so tests drive the same
engine from hypothesis (tests/test_hostile_streams.py).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from bitstream import MAGIC, iter_chunks
from bitstream.container import read_signature
from bitstream.entropy import (CODER_RANGE_V1, CODER_RANGE_V2, CODER_RANGE_V3, COMPACT_CODERS, MODEL_BINNED,
                               MODEL_CATEGORICAL, MODEL_GEOMETRIC, MODEL_PEAKED)
from bitstream.layout import REF_MOVED, REF_PREVIOUS

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = {"image": ROOT / "tests" / "data" / "tiny.gsv", "video": ROOT / "tests" / "data" / "tiny_video.gsv",
          "video-moved": ROOT / "tests" / "data" / "tiny_video_moved.gsv",  # P-frames with reference 2
          "video-inherited": ROOT / "tests" / "data" / "tiny_video_v4.gsv"}  # coder 4: inherited models

#: outcome classes; the first two are fine, every other one is a failure
DECODED, CLEAN = "decoded", "clean error"
WRONG_EXCEPTION, MEMORY, BAD_OUTPUT, CRASH, TIMEOUT = (
    "wrong exception", "MemoryError", "bad output", "crash", "timeout")
CLASSES = (DECODED, CLEAN, WRONG_EXCEPTION, MEMORY, BAD_OUTPUT, CRASH, TIMEOUT)
FAILURES = CLASSES[2:]

VARINT = "varint"  # a Field's format for a count-table entry
SLOWEST = 5  # slowest cases listed in the report


# ------------------------------------------------------------------------ choices
class Chooser(Protocol):
    """Where the engine's decisions come from (a seeded RNG, or hypothesis' ``data.draw``)."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""


class RandomChooser:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


def pick(chooser: Chooser, items: Sequence):
    return items[chooser.integer(0, len(items) - 1)]


def chance(chooser: Chooser, percent: int) -> bool:
    return chooser.integer(1, 100) <= percent


# ---------------------------------------------------------------- stream structure
@dataclass(frozen=True)
class Field:
    """One field of a chunk payload: where it is, how it is stored, which mutation kind owns it."""

    name: str
    kind: str
    offset: int
    fmt: str  # struct format (">B", ">H", ">I", ">i", ">f") or VARINT


@dataclass
class Piece:
    """A chunk being mutated: its type, payload and (while its layout is intact) its fields."""

    type: bytes
    payload: bytes
    fields: list[Field] = field(default_factory=list)


def parse_stream(data: bytes) -> list[Piece]:
    """The chunks of a valid stream with the fields of each (FORMAT.md layout)."""
    src = io.BytesIO(data)
    read_signature(src)
    pieces = []
    state: dict = {}  # "coder": the header's; layer -> Gaussians in the previous frame
    for chunk in iter_chunks(src, len(MAGIC) + 2):
        parse = _PARSERS.get(chunk.type)
        fields = parse(chunk.payload, state) if parse else []
        pieces.append(Piece(chunk.type, chunk.payload, fields))
    return pieces


def _header_fields(payload: bytes, state: dict) -> list[Field]:
    nlayers = payload[9]
    fields = [Field("GHDR.kind", "header", 0, ">B"), Field("GHDR.width", "header", 1, ">I"),
              Field("GHDR.height", "header", 5, ">I"), Field("GHDR.layers", "header", 9, ">B")]
    fields += [Field("GHDR.counts", "header-counts", 10 + 4 * i, ">I") for i in range(nlayers)]
    pos = 10 + 4 * nlayers
    fields += [Field("GHDR.coder", "header", pos, ">B"), Field("GHDR.nsteps", "header", pos + 1, ">B")]
    fields += [Field("GHDR.steps", "steps", pos + 2 + 4 * j, ">f") for j in range(payload[pos + 1])]
    state["coder"] = payload[pos]
    return fields


def _video_header_fields(payload: bytes, _) -> list[Field]:
    names = ("frames", "fps_num", "fps_den", "gop")
    return [Field(f"VHDR.{name}", "video-header", 4 * i, ">I") for i, name in enumerate(names)]


def _frame_fields(payload: bytes, _) -> list[Field]:
    fields = [Field("FRAM.frame", "frame-header", 0, ">I"), Field("FRAM.type", "frame-header", 4, ">B"),
              Field("FRAM.layers", "frame-header", 5, ">B")]
    return fields + [Field("FRAM.sizes", "frame-header", 6 + 4 * i, ">I") for i in range(payload[5])]


def _position_fields(payload: bytes, pos: int) -> tuple[list[Field], int]:
    """A coder-3 position code header (FORMAT.md 3.1) at ``pos``: its fields and end."""
    fields = [Field("LAYR.positions.shift", "positions", pos, ">B")]
    pos += 1
    for name in ("x0", "y0", "span1"):
        fields.append(Field(f"LAYR.positions.{name}", "positions", pos, VARINT))
        _, pos = _varint_at(payload, pos)
    return fields, pos


def _layer_fields(payload: bytes, state: dict) -> list[Field]:
    _, layer, reference, count = struct.unpack_from(">IBBI", payload, 0)
    coder = state.get("coder")
    fields = [Field("LAYR.frame", "layer-prefix", 0, ">I"), Field("LAYR.layer", "layer-prefix", 4, ">B"),
              Field("LAYR.reference", "layer-prefix", 5, ">B"), Field("LAYR.count", "layer-prefix", 6, ">I")]
    if reference in (REF_PREVIOUS, REF_MOVED):
        pos = 10
        if reference == REF_MOVED:  # the global motion: five zigzag varints (FORMAT.md 7.4)
            for name in ("tx", "ty", "dzc", "zs", "ds"):
                fields.append(Field(f"LAYR.motion.{name}", "motion", pos, VARINT))
                _, pos = _varint_at(payload, pos)
        (kept,) = struct.unpack_from(">I", payload, pos)
        fields.append(Field("LAYR.kept", "layer-prefix", pos, ">I"))
        fresh, pos = count - kept, pos + 4
        lengths = [state[layer]] + [kept] * 8 + [fresh] * (7 if coder in COMPACT_CODERS else 8)
    else:
        fresh, pos = count, 10
        lengths = [count] * (7 if coder in COMPACT_CODERS else 8)
    if coder in COMPACT_CODERS and fresh:
        more, pos = _position_fields(payload, pos)
        fields += more
    state[layer] = count
    return fields + _entropy_fields(payload, pos, lengths, coder in COMPACT_CODERS)


def _compact_head(payload: bytes, pos: int) -> tuple[int, int, list[Field], int]:
    """kind, size, fields and end of a coder-3 descriptor's head (varints, FORMAT.md 4.3)."""
    fields = [Field("model.kind", "model-kind", pos, ">B"), Field("model.min", "model-min", pos + 1, VARINT)]
    kind = payload[pos]
    _, pos = _varint_at(payload, pos + 1)
    fields.append(Field("model.size", "model-size", pos, VARINT))
    size, pos = _varint_at(payload, pos)
    return kind, size, fields, pos


def _entropy_fields(payload: bytes, pos: int, lengths: list[int], compact: bool = False) -> list[Field]:
    """Fields of the streams payload at ``pos``: descriptors, count tables, word count,
    words (``compact``: coder 3's descriptors)."""
    fields = []
    for n in lengths:
        if n == 0:
            continue
        if compact:
            kind, size, head, pos = _compact_head(payload, pos)
            fields += head
        else:
            kind, _, size = struct.unpack_from(">BiI", payload, pos)
            fields += [Field("model.kind", "model-kind", pos, ">B"), Field("model.min", "model-min", pos + 1, ">i"),
                       Field("model.size", "model-size", pos + 5, ">I")]
            pos += 9
        if compact and kind == MODEL_PEAKED:
            fields.append(Field("model.mode", "peaked", pos, VARINT))
            _, pos = _varint_at(payload, pos)
            fields += [Field(f"model.{name}", "peaked", pos + 2 * i, ">H")
                       for i, name in enumerate(("centre", "left", "left_theta", "right_theta"))]
            pos += 8
        elif compact and kind == MODEL_BINNED:
            fields.append(Field("model.width", "binned", pos, VARINT))
            width, pos = _varint_at(payload, pos)
            for _ in range(-(-size // max(width, 1))):
                fields.append(Field("model.bin", "bin-table", pos, VARINT))
                _, pos = _varint_at(payload, pos)
        elif kind == MODEL_CATEGORICAL:
            for _ in range(size):
                fields.append(Field("model.count", "count-table", pos, VARINT))
                _, pos = _varint_at(payload, pos)
        elif kind == MODEL_GEOMETRIC:
            fields += [Field("model.theta", "geometric", pos, ">H"), Field("model.centre", "geometric", pos + 2, ">H")]
            pos += 4
        elif kind == MODEL_PEAKED:
            fields += [Field("model.mode", "peaked", pos, ">i")]
            fields += [Field(f"model.{name}", "peaked", pos + 4 + 2 * i, ">H")
                       for i, name in enumerate(("centre", "left", "left_theta", "right_theta"))]
            pos += 12
        elif kind == MODEL_BINNED:
            (width,) = struct.unpack_from(">I", payload, pos)
            fields.append(Field("model.width", "binned", pos, ">I"))
            pos += 4
            for _ in range(-(-size // width)):
                fields.append(Field("model.bin", "bin-table", pos, VARINT))
                _, pos = _varint_at(payload, pos)
    (nwords,) = struct.unpack_from(">I", payload, pos)
    fields.append(Field("nwords", "word-count", pos, ">I"))
    return fields + [Field("word", "words", pos + 4 + 4 * i, ">I") for i in range(nwords)]


_PARSERS: dict[bytes, Callable[[bytes, dict], list[Field]]] = {
    b"GHDR": _header_fields, b"VHDR": _video_header_fields, b"FRAM": _frame_fields, b"LAYR": _layer_fields}


def pack_stream(pieces: list[Piece]) -> bytes:
    """Signature, version 1 and the chunks, each with a fresh CRC (any 4-byte type)."""
    out = bytearray(MAGIC + struct.pack(">H", 1))
    for p in pieces:
        body = p.type + p.payload
        out += struct.pack(">I", len(p.payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(out)


def fix_frame_sizes(pieces: list[Piece]) -> None:
    """Set every well-formed FRAM's sizes to the file bytes of the LAYR chunks after it."""
    for i, p in enumerate(pieces):
        if p.type != b"FRAM" or len(p.payload) < 6 or len(p.payload) != 6 + 4 * p.payload[5]:
            continue
        following = [q for q in pieces[i + 1 : i + 1 + p.payload[5]] if q.type == b"LAYR"]
        sizes = [12 + len(q.payload) for q in following] + list(struct.unpack_from(f">{p.payload[5]}I", p.payload, 6))
        p.payload = p.payload[:6] + struct.pack(f">{p.payload[5]}I", *sizes[: p.payload[5]])


# ---------------------------------------------------------------- field values
_POWERS = [1 << k for k in (7, 8, 12, 15, 16, 20, 22, 23, 24, 26, 28, 30, 31)]
_U32_EDGES = [0, 1, 2, 3, 4, 0xFFFFFFFF, 0xFFFFFFFE] + [v + d for v in _POWERS for d in (-1, 0, 1)]
_INTERESTING = {
    ">B": [0, 1, 2, 3, 7, 8, 9, 0x7F, 0x80, 0xFE, 0xFF],
    ">H": [0, 1, 2, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF],
    ">I": _U32_EDGES,
    ">i": [0, 1, -1, 2, -2, (1 << 31) - 1, -(1 << 31), (1 << 31) - 2, -(1 << 31) + 1]
          + [s * v + d for v in _POWERS[:-1] for s in (1, -1) for d in (-1, 0, 1)],
    ">f": [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e-45, 1e-38, 2.0**-24, 2.0**-25,
           2.0**15, 2.0**15 + 1.0, 2.0**16, 3.4e38, 1.0 / 16, 1.0 / 128],
    VARINT: [0, 1, 2, 127, 128, (1 << 24) - 1, (1 << 32) - 1, 1 << 32, (1 << 35) - 1, 1 << 35, 1 << 42],
}
_RANGES = {">B": (0, 0xFF), ">H": (0, 0xFFFF), ">I": (0, 0xFFFFFFFF), ">i": (-(1 << 31), (1 << 31) - 1),
           VARINT: (0, (1 << 35) - 1)}


_F32_MAX = 3.4028234663852886e38


def _pack_value(fmt: str, value) -> bytes:
    if fmt == VARINT:
        return _varint(value)
    if fmt == ">f" and abs(value) > _F32_MAX:  # beyond float32: its infinity (NaN stays NaN)
        value = math.copysign(math.inf, value)
    return struct.pack(fmt, value)


def _varint(value: int) -> bytes:
    """LEB128 of any size (the library's writer stops at 35 bits: longer ones are hostile)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field_value(chooser: Chooser, fmt: str, current):
    """An interesting, nearby or random value for a field of format ``fmt``."""
    how = chooser.integer(0, 9)
    if fmt == ">f":
        if how < 6:
            return pick(chooser, _INTERESTING[fmt])
        if how < 8:
            return current * pick(chooser, [0.5, 2.0, -1.0, 1e6, 1e-6])
        return struct.unpack(">f", struct.pack(">I", chooser.integer(0, 0xFFFFFFFF)))[0]
    lo, hi = _RANGES[fmt]
    if how < 6:
        return pick(chooser, _INTERESTING[fmt])
    if how < 8:
        return min(max(current + chooser.integer(-3, 3), lo), hi)
    return chooser.integer(lo, hi)


def _varint_at(payload: bytes, pos: int) -> tuple[int, int]:
    """The LEB128 varint at ``pos`` and its end; tolerant: stops at the payload's end."""
    value = shift = 0
    while pos < len(payload):
        byte = payload[pos]
        value |= (byte & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if byte < 0x80:
            break
    return value, pos


def _read_field(payload: bytes, f: Field):
    if f.fmt == VARINT:
        return _varint_at(payload, f.offset)
    return struct.unpack_from(f.fmt, payload, f.offset)[0], f.offset + struct.calcsize(f.fmt)


def set_field(piece: Piece, f: Field, value) -> None:
    """Write ``value`` into field ``f``; a size change (varint) invalidates the piece's fields."""
    _, end = _read_field(piece.payload, f)
    raw = _pack_value(f.fmt, value)
    if len(raw) != end - f.offset:
        piece.fields = []
    piece.payload = piece.payload[: f.offset] + raw + piece.payload[end:]


# ---------------------------------------------------------------- mutations
Mutation = Callable[[list[Piece], Chooser], bool]  # mutates in place; False: not applicable


def _fields_of_kind(pieces: list[Piece], kind: str) -> list[tuple[Piece, Field]]:
    return [(p, f) for p in pieces for f in p.fields if f.kind == kind]


def _field_mutation(kind: str) -> Mutation:
    def mutate(pieces: list[Piece], chooser: Chooser) -> bool:
        candidates = _fields_of_kind(pieces, kind)
        if not candidates:
            return False
        piece, f = pick(chooser, candidates)
        set_field(piece, f, _field_value(chooser, f.fmt, _read_field(piece.payload, f)[0]))
        return True

    return mutate


def _consistent_counts(pieces: list[Piece], chooser: Chooser) -> bool:
    """One layer's Gaussian count set to the same value in the header and every LAYR chunk."""
    header = _fields_of_kind(pieces, "header-counts")
    if not header:
        return False
    layer = chooser.integer(1, len(header))
    value = pick(chooser, [1, 2, 1000, (1 << 20) + 1, (1 << 22) - 1, 1 << 22, (1 << 22) + 1, (1 << 24) + 1,
                           0xFFFFFFFF])
    set_field(*header[layer - 1], value)
    for p in pieces:
        if p.type == b"LAYR" and p.fields and len(p.payload) >= 10 and p.payload[4] == layer:
            set_field(p, p.fields[3], value)  # LAYR.count
    return True


#: (width, height) pairs: degenerate, odd, above the limits, and (rarely) a largest legal
#: picture, which takes seconds to draw
_SIZES = [(1, 1), (1, 12), (16, 1), (1 << 15, 1), ((1 << 15) + 1, 1), (0, 12), (16, 0), (12000, 12000),
          (1 << 15, 1 << 15), (1 << 16, 1 << 10), (0xFFFFFFFF, 0xFFFFFFFF), (0x80000000, 2), (1000, 1000),
          (1 << 13, 1 << 13)]


def _consistent_size(pieces: list[Piece], chooser: Chooser) -> bool:
    """Header width and height set together (large, odd or degenerate pictures)."""
    header = [p for p in pieces if p.type == b"GHDR" and p.fields]
    if not header:
        return False
    width, height = pick(chooser, _SIZES)
    set_field(header[0], header[0].fields[1], width)
    set_field(header[0], header[0].fields[2], height)
    return True


def _resize_count_table(pieces: list[Piece], chooser: Chooser) -> bool:
    """A categorical table grown or shrunk together with its size field: a valid shape, odd
    content (fixed-size descriptors: coder 3's encoder writes no categorical model)."""
    tables = [(p, f) for p, f in _fields_of_kind(pieces, "model-size")
              if f.fmt == ">I" and p.payload[f.offset - 5] == MODEL_CATEGORICAL]
    if not tables:
        return False
    piece, f = pick(chooser, tables)
    size = struct.unpack_from(">I", piece.payload, f.offset)[0]
    counts, end = [], f.offset + 4
    while len(counts) < size and end < len(piece.payload):  # the table as it stands
        value, end = _varint_at(piece.payload, end)
        counts.append(value)
    new_size = max(0, size + pick(chooser, [-size, -1, 1, 2, 100, 4096, 1 - size, 1 << 16]))
    counts = counts[:new_size] + [pick(chooser, [0, 1, 0xFFFFFFFF, 1 << 35])] * max(0, new_size - len(counts))
    table = b"".join(_varint(c) for c in counts)
    size_field = struct.pack(">I", min(new_size, 0xFFFFFFFF))
    piece.payload = piece.payload[: f.offset] + size_field + table + piece.payload[end:]
    piece.fields = []
    return True


def _resize_words(pieces: list[Piece], chooser: Chooser) -> bool:
    """Coded words added (copies of one random word) or removed, together with the word count."""
    counts = _fields_of_kind(pieces, "word-count")
    if not counts:
        return False
    piece, f = pick(chooser, counts)
    present = (len(piece.payload) - f.offset - 4) // 4
    new = max(0, present + pick(chooser, [-present, -1, 1, 2, 64, 1000]))
    word = struct.pack(">I", chooser.integer(0, 0xFFFFFFFF))
    words = piece.payload[f.offset + 4 : f.offset + 4 + 4 * new] + word * max(0, new - present)
    piece.payload = piece.payload[: f.offset] + struct.pack(">I", new) + words
    piece.fields = []
    return True


def _drop_chunk(pieces: list[Piece], chooser: Chooser) -> bool:
    del pieces[chooser.integer(0, len(pieces) - 1)]
    return True


def _duplicate_chunk(pieces: list[Piece], chooser: Chooser) -> bool:
    p = pick(chooser, pieces)
    pieces.insert(chooser.integer(0, len(pieces)), Piece(p.type, p.payload, list(p.fields)))
    return True


def _swap_chunks(pieces: list[Piece], chooser: Chooser) -> bool:
    i, j = chooser.integer(0, len(pieces) - 1), chooser.integer(0, len(pieces) - 1)
    pieces[i], pieces[j] = pieces[j], pieces[i]
    return True


def _insert_chunk(pieces: list[Piece], chooser: Chooser) -> bool:
    """A chunk of an odd type (ancillary, unknown critical, known with junk, not letters)."""
    ctype = pick(chooser, [b"tEXt", b"zzzz", b"ABCD", b"GHDR", b"VHDR", b"FRAM", b"LAYR", b"GH1R", b"\x00\x00\x00\x00"])
    payload = bytes(chooser.integer(0, 255) for _ in range(chooser.integer(0, 24)))
    pieces.insert(chooser.integer(0, len(pieces)), Piece(ctype, payload))
    return True


def _flip_bits(pieces: list[Piece], chooser: Chooser) -> bool:
    """A few bits of one payload flipped (the CRC is recomputed)."""
    candidates = [p for p in pieces if p.payload]
    if not candidates:
        return False
    p = pick(chooser, candidates)
    data = bytearray(p.payload)
    for _ in range(chooser.integer(1, 4)):
        data[chooser.integer(0, len(data) - 1)] ^= 1 << chooser.integer(0, 7)
    p.payload = bytes(data)
    return True


def _splice_payload(pieces: list[Piece], chooser: Chooser) -> bool:
    """One LAYR's coded streams replaced by another's (I-frame data in a P-frame, ...)."""
    layers = [p for p in pieces if p.type == b"LAYR" and len(p.payload) > 10]
    if len(layers) < 2:
        return False
    target, source = pick(chooser, layers), pick(chooser, layers)
    target.payload = target.payload[:10] + source.payload[10:]
    target.fields = []
    return True


#: mutations on chunks; "frame-header" mutations keep their FRAM sizes as set
MUTATIONS: dict[str, Mutation] = {
    kind: _field_mutation(kind)
    for kind in ("header", "header-counts", "steps", "video-header", "frame-header", "layer-prefix", "motion",
                 "positions", "model-kind", "model-min", "model-size", "count-table", "geometric", "peaked", "binned", "bin-table",
                 "word-count", "words")
}
MUTATIONS.update({
    "consistent-counts": _consistent_counts,
    "consistent-size": _consistent_size,
    "count-table-resize": _resize_count_table,
    "word-count-resize": _resize_words,
    "chunk-drop": _drop_chunk,
    "chunk-duplicate": _duplicate_chunk,
    "chunk-swap": _swap_chunks,
    "chunk-insert": _insert_chunk,
    "bit-flip": _flip_bits,
    "splice": _splice_payload,
})
#: mutations of the final bytes (CRCs are not recomputed after these)
BYTE_MUTATIONS = ("truncate", "raw-bit-flip")
KINDS = tuple(MUTATIONS) + BYTE_MUTATIONS


def _mutate_bytes(data: bytes, kind: str, chooser: Chooser) -> bytes:
    if kind == "truncate":
        return data[: chooser.integer(0, len(data) - 1)]
    flipped = bytearray(data)
    flipped[chooser.integer(0, len(data) - 1)] ^= 1 << chooser.integer(0, 7)
    return bytes(flipped)


def mutate(data: bytes, chooser: Chooser) -> tuple[bytes, list[str]]:
    """One to three mutations of a valid stream: the new bytes and the mutation kinds applied."""
    pieces = parse_stream(data)
    applied: list[str] = []
    for _ in range(pick(chooser, [1, 1, 1, 2, 3])):
        kind = pick(chooser, tuple(MUTATIONS))
        if pieces and MUTATIONS[kind](pieces, chooser):
            applied.append(kind)
    if "frame-header" not in applied and chance(chooser, 90):
        fix_frame_sizes(pieces)
    out = pack_stream(pieces)
    if not applied or chance(chooser, 10):  # byte mutations come last, on the packed bytes
        kind = pick(chooser, BYTE_MUTATIONS)
        out = _mutate_bytes(out, kind, chooser)
        applied.append(kind)
    return out, applied


# ---------------------------------------------------------------- seed streams
def seed_streams() -> dict[str, bytes]:
    """Valid streams the cases start from: the golden ones (uniform and constant models
    only) and synthetic 16x12 ones whose streams get categorical tables (image, coder 1),
    geometric models (video P-frames, coder 1), peaked and binned models (coder 2,
    "-v2") and position codes with raw fields (coder 3, "-v3"), so that every
    descriptor field is reached."""
    seeds = {name: path.read_bytes() for name, path in GOLDEN.items()}
    for coder, suffix in ((CODER_RANGE_V1, "-rich"), (CODER_RANGE_V2, "-v2"), (CODER_RANGE_V3, "-v3")):
        rng = np.random.default_rng(2024)
        layers = [_synthetic_layer(rng, 120), _synthetic_layer(rng, 40)]
        seeds["image" + suffix] = _image_stream(layers, coder)
        seeds["video" + suffix] = _video_stream(rng, layers, coder)
    return seeds


def _synthetic_layer(rng: np.random.Generator, n: int) -> np.ndarray:  # [n, 8] quantized parameters
    """Centres anywhere in 16x12 pixels (steps 1/16), peaked sizes, shears and colours."""
    centre = [rng.integers(0, 256, n), rng.integers(0, 192, n)]
    peaked = [np.round(rng.normal(mean, sd, n)) for mean, sd in ((20, 1), (20, 2), (0, 1), (40, 1), (40, 2), (40, 3))]
    return np.stack(centre + peaked, axis=1).astype(np.int64)


def _image_stream(layers: list[np.ndarray], coder: int) -> bytes:
    from bitstream import Header, LayerChunk, write_stream
    from gsvc.layer_codec import encode_intra

    chunks = [LayerChunk(l, len(q), encode_intra(q, coder)[0]) for l, q in enumerate(layers, start=1)]
    out = io.BytesIO()
    write_stream(out, Header(16, 12, tuple(len(q) for q in layers), _STEPS, coder=coder), chunks)
    return out.getvalue()


def _video_stream(rng: np.random.Generator, layers: list[np.ndarray], coder: int) -> bytes:
    """An I-frame of ``layers``, then two P-frames: most Gaussians kept, sparse wide changes, a few new."""
    from bitstream import Header, LayerChunk
    from bitstream.layout import KIND_VIDEO
    from bitstream.video import FRAME_I, FRAME_P, VideoHeader, VideoWriter
    from gsvc.layer_codec import encode_intra, encode_predicted

    coded = [encode_intra(q, coder, geometric=True) for q in layers]
    frames = [(FRAME_I, [LayerChunk(l, len(q), p) for l, (p, q) in enumerate(coded, start=1)])]
    reference = [q for _, q in coded]
    for t in (1, 2):
        chunks, decoded = [], []
        for l, ref in enumerate(reference, start=1):
            keep = rng.random(len(ref)) < 0.9
            change = (rng.random((int(keep.sum()), 8)) < 0.2) * np.round(rng.normal(0, 6, (int(keep.sum()), 8)))
            payload, q = encode_predicted(ref, keep, ref[keep] + change.astype(np.int64), _synthetic_layer(rng, 8),
                                          coder)
            chunks.append(LayerChunk(l, len(q), payload, frame=t, reference=REF_PREVIOUS))
            decoded.append(q)
        frames.append((FRAME_P, chunks))
        reference = decoded
    counts = tuple(max(chunks[l].count for _, chunks in frames) for l in range(len(layers)))
    out = io.BytesIO()
    writer = VideoWriter(out, Header(16, 12, counts, _STEPS, kind=KIND_VIDEO, coder=coder), VideoHeader(0, 25, 1, 30))
    for frame_type, chunks in frames:
        writer.write_frame(frame_type, chunks)
    writer.finish()
    return out.getvalue()


#: the golden streams' quantizer steps (gsvc.quantize.QuantSettings)
_STEPS = (0.0625, 0.0625, 0.03125, 0.03125, 0.03125, 0.0078125, 0.0078125, 0.0078125)


# ---------------------------------------------------------------- cases and targets
@dataclass
class Case:
    index: int
    base: str  # a seed_streams() name: "image", "video", "video-moved", "image-rich", "video-rich", "image-v2", ...
    data: bytes
    mutations: list[str]
    layers: int | None  # decode request
    scale: float


def make_case(index: int, base: str, golden: bytes, chooser: Chooser) -> Case:
    data, applied = mutate(golden, chooser)
    layers = pick(chooser, [None, None, 1, 2, 3])
    scale = pick(chooser, [1.0] * 6 + [0.5, 2.0, 1e-3, 5000.0])
    return Case(index, base, data, applied, layers, scale)


def run_targets(case: Case, progress: Callable[[], None] = lambda: None) -> tuple[str, str]:
    """Run ``stream_info`` and a decode on the case's bytes: (outcome class, detail).

    ``progress`` is called after each step (the info, each decoded picture): the parent
    times steps, not cases, as a legal video may hold many frames of the largest size.
    """
    from bitstream import StreamError
    from gsvc.errors import GsvcError

    outcome, detail = DECODED, ""
    for name, target in (("info", _info), ("decode", _decode)):
        try:
            target(case, progress)
        except (StreamError, GsvcError) as e:
            outcome, detail = CLEAN, f"{name}: {e}"
        except MemoryError:
            return MEMORY, f"{name}: MemoryError\n{traceback.format_exc()}"
        except _BadOutput as e:
            return BAD_OUTPUT, f"{name}: {e}"
        except Exception as e:
            return WRONG_EXCEPTION, f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
    return outcome, detail


class _BadOutput(Exception):
    """A decode that returned, but returned something a caller cannot use."""


def _info(case: Case, progress: Callable[[], None]) -> None:
    """``stream_info``, whose result must be strict JSON (``gsvc info --json``)."""
    from gsvc.decoder import stream_info

    info = stream_info(case.data)
    try:
        json.dumps(info, allow_nan=False)
    except ValueError as e:
        raise _BadOutput(f"info is not strict JSON: {e}") from None
    progress()


def _decode(case: Case, progress: Callable[[], None]) -> None:
    """``decode_image``, or a video's frames one at a time (what ``decode_video`` does)."""
    from gsvc.decoder import decode_image, open_video

    if case.base.startswith("image"):
        _check_picture(decode_image(case.data, layers=case.layers, scale=case.scale))
        progress()
        return
    with open_video(case.data, case.layers) as reader:
        for frame in reader.frames(case.scale):
            _check_picture(frame.rgb)
            progress()


def _check_picture(rgb) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise _BadOutput(f"decoded picture is {type(rgb).__name__} {getattr(rgb, 'shape', '')}")


# ---------------------------------------------------------------- worker processes
def _worker(conn, memory_bytes: int) -> None:
    """Runs cases sent by the parent under an address-space limit; replies (index, class, detail)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    np.seterr(all="ignore")  # hostile parameters overflow exp() on purpose: no warning per case
    for name, data in seed_streams().items():  # warm up (imports, compiled kernels) before the first case
        outcome, detail = run_targets(Case(-1, name, data, [], None, 1.0))
        assert outcome == DECODED, (name, outcome, detail)
    conn.send(("ready",))
    while True:
        case = conn.recv()
        if case is None:
            return
        start = time.perf_counter()
        outcome, detail = run_targets(case, lambda: conn.send(("progress",)))
        conn.send((case.index, outcome, detail, time.perf_counter() - start))


class _Worker:
    """One worker process and the case it is running."""

    def __init__(self, ctx, memory_bytes: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, memory_bytes), daemon=True)
        self.process.start()
        child.close()
        self.case: Case | None = None
        self.timeout = self.deadline = self.started = math.inf
        self.ready = False

    @property
    def idle(self) -> bool:
        return self.ready and self.case is None

    def send(self, case: Case, timeout: float) -> None:
        self.case, self.timeout, self.started = case, timeout, time.monotonic()
        self.deadline = self.started + timeout
        self.conn.send(case)

    def take(self) -> Case:
        case, self.case, self.deadline = self.case, None, math.inf
        return case

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
            self.process.join(5)


def _poll(w: _Worker, readable: list) -> tuple[Case, str, str, float] | None:
    """A finished case of worker ``w`` as (case, class, detail, seconds), or None. A worker that
    died or ran past its deadline is killed and its case charged with a crash or timeout."""
    if w.conn in readable:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):  # the process is gone
            return _charge(w, CRASH)
        if message == ("ready",):
            w.ready = True
            return None
        if message == ("progress",):  # one step done: the next one gets its own timeout
            w.deadline = time.monotonic() + w.timeout
            return None
        _, outcome, detail, seconds = message
        return w.take(), outcome, detail, seconds
    if w.case is not None and time.monotonic() > w.deadline:
        return _charge(w, TIMEOUT)
    return None


def _charge(w: _Worker, outcome: str) -> tuple[Case, str, str, float]:
    seconds = time.monotonic() - w.started
    w.kill()
    if outcome == TIMEOUT:
        detail = f"a step ran past {w.timeout:g} s"
    else:
        detail = f"worker died (exit code {w.process.exitcode})"
    if w.case is None:
        raise RuntimeError(f"a fuzz worker failed before its first case: {detail}")
    return w.take(), outcome, detail, seconds


@dataclass
class Tally:
    """Outcome counts overall and per mutation kind, and the failures."""

    classes: Counter = field(default_factory=Counter)
    per_kind: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: list = field(default_factory=list)
    slowest: list = field(default_factory=list)  # (seconds, case, class, mutations) of the slowest cases

    @property
    def failure_count(self) -> int:
        return sum(self.classes[c] for c in FAILURES)

    def add(self, case: Case, outcome: str, detail: str, seconds: float, failures_dir: Path | None) -> None:
        self.classes[outcome] += 1
        self.slowest = sorted(self.slowest + [(round(seconds, 3), case.index, outcome, case.mutations)],
                              reverse=True)[:SLOWEST]
        for kind in set(case.mutations):
            self.per_kind[kind][outcome] += 1
        if outcome in FAILURES:
            self.failures.append({"case": case.index, "class": outcome, "mutations": case.mutations,
                                  "detail": detail.splitlines()[0] if detail else ""})
            if failures_dir is not None:
                save_case(failures_dir, case, outcome, detail)


def save_case(folder: Path, case: Case, outcome: str, detail: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"case-{case.index}.gsv").write_bytes(case.data)
    meta = {"case": case.index, "base": case.base, "mutations": case.mutations, "layers": case.layers,
            "scale": case.scale, "class": outcome, "detail": detail, "stream": f"case-{case.index}.gsv"}
    (folder / f"case-{case.index}.json").write_text(json.dumps(meta, indent=1))


def generate_cases(count: int, seed: int):
    """Case i depends on (seed, i) only, whatever the scheduling."""
    seeds = seed_streams()
    names = sorted(seeds)
    for i in range(count):
        chooser = RandomChooser(random.Random(f"{seed}:{i}"))
        base = names[i % len(names)]
        yield make_case(i, base, seeds[base], chooser)


def run_fuzz(cases: int, jobs: int, seed: int, timeout: float, memory_bytes: int,
             failures_dir: Path | None, progress: bool = True) -> Tally:
    """Run ``cases`` cases on ``jobs`` watched worker processes."""
    ctx = mp.get_context("fork")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # parallelism comes from the jobs
    pending = generate_cases(cases, seed)
    workers = [_Worker(ctx, memory_bytes) for _ in range(jobs)]
    tally = Tally()
    done, last_report = 0, time.monotonic()
    while done < cases:
        for w in workers:
            if w.idle:
                case = next(pending, None)
                if case is not None:
                    w.send(case, timeout)
        now = time.monotonic()
        next_deadline = min([w.deadline for w in workers] + [now + 1.0])  # warming workers: poll each second
        readable = wait([w.conn for w in workers], timeout=max(0.0, next_deadline - now))
        for i, w in enumerate(workers):
            result = _poll(w, readable)
            if result is None:
                continue
            tally.add(*result, failures_dir)
            done += 1
            if not w.process.is_alive():
                workers[i] = _Worker(ctx, memory_bytes)
        if progress and time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            print(f"  {done} / {cases} cases, {tally.failure_count} failures", file=sys.stderr)
    for w in workers:
        w.stop()
    return tally


# ---------------------------------------------------------------- report
def summary_table(tally: Tally, seconds: float, cases: int) -> str:
    short = {DECODED: "decoded", CLEAN: "clean", WRONG_EXCEPTION: "wrongexc", MEMORY: "memory",
             BAD_OUTPUT: "badout", CRASH: "crash", TIMEOUT: "timeout"}
    head = f"{'mutation kind':<22}{'cases':>8}" + "".join(f"{short[c]:>10}" for c in CLASSES)
    lines = [head, "-" * len(head)]
    for kind in KINDS:
        row = tally.per_kind.get(kind, Counter())
        lines.append(f"{kind:<22}{sum(row.values()):>8}" + "".join(f"{row[c]:>10}" for c in CLASSES))
    lines.append("-" * len(head))
    lines.append(f"{'all cases':<22}{cases:>8}" + "".join(f"{tally.classes[c]:>10}" for c in CLASSES))
    lines.append(f"\n{cases} cases in {seconds:.1f} s ({cases / max(seconds, 1e-9):.0f} cases/s): "
                 f"{tally.classes[DECODED]} decoded, {tally.classes[CLEAN]} clean errors, "
                 f"{tally.failure_count} failures")
    return "\n".join(lines)


def replay(path: Path) -> int:
    """Run a saved case in this process and print what happens."""
    meta = json.loads(path.read_text())
    data = (path.parent / meta["stream"]).read_bytes()
    case = Case(meta["case"], meta["base"], data, meta["mutations"], meta["layers"], meta["scale"])
    outcome, detail = run_targets(case)
    print(f"case {case.index} ({', '.join(case.mutations)}; layers={case.layers}, scale={case.scale}): {outcome}")
    print(detail)
    return 1 if outcome in FAILURES else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds per step of a case: the info, each decoded picture (default 30)")
    ap.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit per worker (default 4)")
    ap.add_argument("--failures", type=Path, default=Path("fuzz-failures"),
                    help="folder for failing cases (default fuzz-failures)")
    ap.add_argument("--json", type=Path, help="write counts per class and per mutation kind here")
    ap.add_argument("--replay", type=Path, help="run one saved case (its .json) in this process")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    start = time.perf_counter()
    tally = run_fuzz(args.cases, args.jobs, args.seed, args.timeout, int(args.memory_gib * (1 << 30)), args.failures)
    seconds = time.perf_counter() - start
    print(summary_table(tally, seconds, args.cases))
    for took, index, outcome, mutations in tally.slowest:
        print(f"  slow: case {index} took {took:.2f} s ({outcome}; {', '.join(mutations)})")
    for failure in tally.failures[:20]:
        print(f"  case {failure['case']}: {failure['class']} ({', '.join(failure['mutations'])}): {failure['detail']}")
    if tally.failures:
        print(f"failing cases saved in {args.failures}/ (replay: python -m benchmarks.fuzz --replay FILE.json)")
    if args.json:
        args.json.write_text(json.dumps({
            "cases": args.cases, "jobs": args.jobs, "seed": args.seed, "seconds": seconds,
            "timeout_s": args.timeout, "memory_gib": args.memory_gib,
            "classes": {c: tally.classes[c] for c in CLASSES},
            "per_kind": {k: {c: tally.per_kind.get(k, Counter())[c] for c in CLASSES} for k in KINDS},
            "failures": tally.failures, "slowest": tally.slowest,
        }, indent=1))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
