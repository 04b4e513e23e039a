"""Header and layer chunks of a .gsv stream (byte layout: FORMAT.md)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from .container import (
    Chunk,
    MAGIC,
    StreamError,
    TruncatedStream,
    check_range,
    iter_chunks,
    read_signature,
    write_chunk,
    write_signature,
)
from .entropy import CODER_RANGE_V1, CODERS
from .limits import MAX_FRAMES, MAX_GAUSSIANS, MAX_LAYERS, MAX_PIXELS, MAX_SIDE, MAX_STEP, MIN_STEP

KIND_IMAGE = 0
KIND_VIDEO = 1
KINDS = {KIND_IMAGE: "image", KIND_VIDEO: "video"}

HEADER = b"GHDR"
LAYER = b"LAYR"

REF_INTRA = 0
#: video P-frames: the layer is predicted from the same layer of the previous frame
REF_PREVIOUS = 1
#: video P-frames: predicted from the same layer of the previous frame moved by a global
#: motion (a camera pan and zoom) that the payload carries first (FORMAT.md, section 7.4)
REF_MOVED = 2
REFERENCES = (REF_INTRA, REF_PREVIOUS, REF_MOVED)

#: quantizer steps in a header: one per Gaussian parameter (FORMAT.md, section 3)
NUM_STEPS = 8


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    counts: tuple[int, ...]  # Gaussians per layer, as encoded
    steps: tuple[float, ...]  # quantizer step per parameter (FORMAT.md order)
    kind: int = KIND_IMAGE
    coder: int = CODER_RANGE_V1

    def check(self) -> None:
        """Raise StreamError unless every field is within the format's limits."""
        if self.kind not in KINDS:
            raise StreamError(f"unsupported stream kind {self.kind}")
        if self.coder not in CODERS:
            raise StreamError(f"unsupported entropy coder {self.coder}")
        check_range("header width", self.width, 1, MAX_SIDE)
        check_range("header height", self.height, 1, MAX_SIDE)
        check_range("header pixels (width x height)", self.width * self.height, 1, MAX_PIXELS)
        check_range("header layer count", len(self.counts), 1, MAX_LAYERS)
        for layer, count in enumerate(self.counts, start=1):
            check_range(f"header Gaussian count of layer {layer}", count, 1, MAX_GAUSSIANS)
        check_range("header Gaussian count of all layers", sum(self.counts), 1, MAX_GAUSSIANS)
        check_range("header quantizer step count", len(self.steps), NUM_STEPS, NUM_STEPS)
        for j, step in enumerate(self.steps):  # NaN and infinities fail the range check
            check_range(f"header quantizer step {j}", step, MIN_STEP, MAX_STEP)

    def pack(self) -> bytes:
        self.check()
        out = struct.pack(">BIIB", self.kind, self.width, self.height, len(self.counts))
        out += struct.pack(f">{len(self.counts)}I", *self.counts)
        out += struct.pack(">BB", self.coder, len(self.steps))
        out += struct.pack(f">{len(self.steps)}f", *self.steps)
        return out

    @classmethod
    def unpack(cls, payload: bytes) -> "Header":
        try:
            kind, width, height, nlayers = struct.unpack_from(">BIIB", payload, 0)
            pos = 10
            counts = struct.unpack_from(f">{nlayers}I", payload, pos)
            pos += 4 * nlayers
            coder, nsteps = struct.unpack_from(">BB", payload, pos)
            pos += 2
            steps = struct.unpack_from(f">{nsteps}f", payload, pos)
            pos += 4 * nsteps
        except struct.error:
            raise StreamError("corrupt stream: header too short") from None
        if pos != len(payload):
            raise StreamError("corrupt stream: header has trailing bytes")
        header = cls(width, height, tuple(counts), tuple(steps), kind, coder)
        header.check()
        return header


@dataclass(frozen=True)
class LayerChunk:
    layer: int  # 1-based
    count: int  # Gaussians in this layer
    data: bytes  # entropy-coded parameter streams (bitstream.entropy)
    frame: int = 0
    reference: int = REF_INTRA

    PREFIX = 10  # frame, layer, reference, count

    def check(self) -> None:
        """Raise StreamError unless the prefix fields are within the format's limits."""
        check_range("layer chunk frame index", self.frame, 0, MAX_FRAMES - 1)
        check_range("layer chunk layer index", self.layer, 1, MAX_LAYERS)
        if self.reference not in REFERENCES:
            raise StreamError(f"corrupt stream: layer chunk has unknown reference {self.reference}")
        check_range("layer chunk Gaussian count", self.count, 1, MAX_GAUSSIANS)

    def pack(self) -> bytes:
        self.check()
        return struct.pack(">IBBI", self.frame, self.layer, self.reference, self.count) + self.data

    @classmethod
    def unpack(cls, payload: bytes) -> "LayerChunk":
        if len(payload) < cls.PREFIX:
            raise StreamError("corrupt stream: layer chunk too short")
        frame, layer, reference, count = struct.unpack_from(">IBBI", payload, 0)
        chunk = cls(layer, count, payload[cls.PREFIX :], frame, reference)
        chunk.check()
        return chunk


@dataclass
class Stream:
    """What a reader took from a file: the header and the first layers."""

    header: Header
    layers: list[LayerChunk]
    header_bytes: int  # signature + header chunk
    layer_bytes: list[int] = field(default_factory=list)  # file bytes of each layer chunk
    available: int = 0  # layer chunks present in the file (counted only if all were read)
    cut: bool = False  # the file ends inside a layer chunk (read with partial=True)

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + sum(self.layer_bytes)


def write_stream(out: BinaryIO, header: Header, layers: list[LayerChunk]) -> list[int]:
    """Write a whole stream; returns [header bytes, layer 1 bytes, ...]."""
    sizes = [write_signature(out) + write_chunk(out, HEADER, header.pack())]
    for layer in layers:
        sizes.append(write_chunk(out, LAYER, layer.pack()))
    return sizes


def read_stream(src: BinaryIO, max_layers: int | None = None, partial: bool = False) -> Stream:
    """Read the header and at most ``max_layers`` layer chunks (all when None).

    Stops reading the file as soon as ``max_layers`` layers are in hand. ``partial``: a
    file cut short inside a layer chunk gives the complete layers before the cut
    (``Stream.cut``); a cut inside the header is an error either way.
    """
    read_signature(src)
    chunks = iter_chunks(src, len(MAGIC) + 2)
    try:
        first = next(chunks)
    except StopIteration:
        raise TruncatedStream("truncated stream: no header") from None
    if first.type != HEADER:
        raise StreamError("corrupt stream: first chunk is not a header")
    header = Header.unpack(first.payload)
    if header.kind != KIND_IMAGE:
        raise StreamError("this is a video stream: read it with bitstream.video")
    stream = Stream(header, [], len(MAGIC) + 2 + first.size)
    if max_layers == 0:
        return stream
    try:
        for chunk in chunks:
            if _take_layer(stream, chunk) and max_layers is not None and len(stream.layers) >= max_layers:
                return stream
    except TruncatedStream:
        if not partial:
            raise
        stream.cut = True
    stream.available = len(stream.layers)
    return stream


def _take_layer(stream: Stream, chunk: Chunk) -> bool:
    """Add ``chunk`` to ``stream`` if it is the next layer (True); skip an ancillary chunk."""
    if chunk.type != LAYER:
        if chunk.type[:1].islower():  # ancillary chunk: safe to skip (PNG rule)
            return False
        raise StreamError(f"unsupported critical chunk {chunk.type.decode('ascii', 'replace')}")
    layer = LayerChunk.unpack(chunk.payload)
    k = len(stream.layers) + 1
    if layer.layer != k or layer.frame != 0 or layer.reference != REF_INTRA:
        raise StreamError(f"corrupt stream: layer chunk #{k} is out of order")
    if k > len(stream.header.counts) or layer.count != stream.header.counts[k - 1]:
        raise StreamError(f"corrupt stream: layer {k} does not match the header")
    stream.layers.append(layer)
    stream.layer_bytes.append(chunk.size)
    return True
