"""Header and layer chunks of a .gsv stream (byte layout: FORMAT.md)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from .container import (
    MAGIC,
    StreamError,
    iter_chunks,
    read_signature,
    write_chunk,
    write_signature,
)
from .entropy import CODER_RANGE_V1

KIND_IMAGE = 0
KIND_VIDEO = 1
KINDS = {KIND_IMAGE: "image", KIND_VIDEO: "video"}

HEADER = b"GHDR"
LAYER = b"LAYR"

REF_INTRA = 0
#: video P-frames: the layer is predicted from the same layer of the previous frame
REF_PREVIOUS = 1


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    counts: tuple[int, ...]  # Gaussians per layer, as encoded
    steps: tuple[float, ...]  # quantizer step per parameter (FORMAT.md order)
    kind: int = KIND_IMAGE
    coder: int = CODER_RANGE_V1

    def pack(self) -> bytes:
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
        if kind not in KINDS:
            raise StreamError(f"unsupported stream kind {kind}")
        if coder != CODER_RANGE_V1:
            raise StreamError(f"unsupported entropy coder {coder}")
        if width < 1 or height < 1 or nlayers < 1 or min(counts) < 1:
            raise StreamError("corrupt stream: empty image or layer in header")
        return cls(width, height, tuple(counts), tuple(steps), kind, coder)


@dataclass(frozen=True)
class LayerChunk:
    layer: int  # 1-based
    count: int  # Gaussians in this layer
    data: bytes  # entropy-coded parameter streams (bitstream.entropy)
    frame: int = 0
    reference: int = REF_INTRA

    def pack(self) -> bytes:
        return struct.pack(">IBBI", self.frame, self.layer, self.reference, self.count) + self.data

    @classmethod
    def unpack(cls, payload: bytes) -> "LayerChunk":
        if len(payload) < 10:
            raise StreamError("corrupt stream: layer chunk too short")
        frame, layer, reference, count = struct.unpack_from(">IBBI", payload, 0)
        return cls(layer, count, payload[10:], frame, reference)


@dataclass
class Stream:
    """What a reader took from a file: the header and the first layers."""

    header: Header
    layers: list[LayerChunk]
    header_bytes: int  # signature + header chunk
    layer_bytes: list[int] = field(default_factory=list)  # file bytes of each layer chunk
    available: int = 0  # layer chunks present in the file (counted only if all were read)

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + sum(self.layer_bytes)


def write_stream(out: BinaryIO, header: Header, layers: list[LayerChunk]) -> list[int]:
    """Write a whole stream; returns [header bytes, layer 1 bytes, ...]."""
    sizes = [write_signature(out) + write_chunk(out, HEADER, header.pack())]
    for layer in layers:
        sizes.append(write_chunk(out, LAYER, layer.pack()))
    return sizes


def read_stream(src: BinaryIO, max_layers: int | None = None) -> Stream:
    """Read the header and at most ``max_layers`` layer chunks (all when None).

    Stops reading the file as soon as ``max_layers`` layers are in hand.
    """
    read_signature(src)
    chunks = iter_chunks(src, len(MAGIC) + 2)
    try:
        first = next(chunks)
    except StopIteration:
        raise StreamError("truncated stream: no header") from None
    if first.type != HEADER:
        raise StreamError("corrupt stream: first chunk is not a header")
    header = Header.unpack(first.payload)
    if header.kind != KIND_IMAGE:
        raise StreamError("this is a video stream: read it with bitstream.video")
    stream = Stream(header, [], len(MAGIC) + 2 + first.size)
    if max_layers == 0:
        return stream
    for chunk in chunks:
        if chunk.type != LAYER:
            if chunk.type[:1].islower():  # ancillary chunk: safe to skip (PNG rule)
                continue
            raise StreamError(f"unsupported critical chunk {chunk.type.decode('ascii')}")
        layer = LayerChunk.unpack(chunk.payload)
        k = len(stream.layers) + 1
        if layer.layer != k or layer.frame != 0 or layer.reference != REF_INTRA:
            raise StreamError(f"corrupt stream: layer chunk #{k} is out of order")
        if k > len(header.counts) or layer.count != header.counts[k - 1]:
            raise StreamError(f"corrupt stream: layer {k} does not match the header")
        stream.layers.append(layer)
        stream.layer_bytes.append(chunk.size)
        if max_layers is not None and len(stream.layers) >= max_layers:
            return stream
    stream.available = len(stream.layers)
    return stream
