"""Video streams (kind 1): the header chunks, one FRAM chunk per frame, and its layers.

    signature | GHDR (kind 1) | VHDR | { FRAM | LAYR x L } per frame, in display order

``FRAM`` lists the file bytes of the frame's L layer chunks, so a reader that wants
k layers reads the chunks of layers 1..k and moves past the others without reading a
byte of them (FORMAT.md, section 7). Frames are written as they are encoded; the
frame count in ``VHDR`` is patched in place when the encoder finishes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .container import (
    MAGIC,
    Chunk,
    StreamError,
    TruncatedStream,
    check_range,
    read_chunk,
    read_signature,
    skip_bytes,
    write_chunk,
    write_signature,
)
from .layout import HEADER, KIND_VIDEO, LAYER, REF_INTRA, REF_MOVED, REF_PREVIOUS, Header, LayerChunk
from .limits import MAX_CHUNK, MAX_FPS, MAX_FRAMES

VIDEO_HEADER = b"VHDR"
FRAME = b"FRAM"

FRAME_I = 0
FRAME_P = 1
FRAME_TYPES = {FRAME_I: "I", FRAME_P: "P"}


@dataclass(frozen=True)
class VideoHeader:
    """``VHDR``: frame count, frame rate (a fraction) and the longest GOP."""

    frames: int
    fps_num: int
    fps_den: int
    gop: int  # at most this many frames from one I-frame to the next

    SIZE = 16

    def check(self) -> None:
        """Raise StreamError unless every field is within the format's limits."""
        check_range("video header frame count", self.frames, 0, MAX_FRAMES)
        check_range("video header fps_num", self.fps_num, 1, 0xFFFFFFFF)
        check_range("video header fps_den", self.fps_den, 1, 0xFFFFFFFF)
        if not (self.fps_num <= MAX_FPS * self.fps_den and self.fps_den <= MAX_FPS * self.fps_num):
            raise StreamError(f"video header frame rate {self.fps_num}/{self.fps_den} is outside the "
                              f"format's range [1/{MAX_FPS}, {MAX_FPS}]")
        check_range("video header GOP length", self.gop, 1, MAX_FRAMES)

    def pack(self) -> bytes:
        self.check()
        return struct.pack(">IIII", self.frames, self.fps_num, self.fps_den, self.gop)

    @classmethod
    def unpack(cls, payload: bytes) -> "VideoHeader":
        if len(payload) != cls.SIZE:
            raise StreamError("corrupt stream: video header has the wrong size")
        video = cls(*struct.unpack(">IIII", payload))
        video.check()
        return video

    @property
    def fps(self) -> float:
        return self.fps_num / self.fps_den


@dataclass(frozen=True)
class FrameHeader:
    """``FRAM``: which frame, I or P, and the file bytes of each of its layer chunks."""

    frame: int
    type: int
    sizes: tuple[int, ...]  # [L] bytes of each LAYR chunk that follows, framing included

    #: a layer chunk's file bytes: framing (12) and the layer prefix at least
    MIN_LAYER_SIZE = 12 + LayerChunk.PREFIX
    MAX_LAYER_SIZE = 12 + MAX_CHUNK

    def check(self) -> None:
        """Raise StreamError unless every field is within the format's limits."""
        check_range("frame header frame index", self.frame, 0, MAX_FRAMES - 1)
        if self.type not in FRAME_TYPES:
            raise StreamError(f"corrupt stream: unknown frame type {self.type}")
        for layer, size in enumerate(self.sizes, start=1):
            check_range(f"frame header size of layer {layer}", size, self.MIN_LAYER_SIZE, self.MAX_LAYER_SIZE)

    def pack(self) -> bytes:
        self.check()
        return struct.pack(f">IBB{len(self.sizes)}I", self.frame, self.type, len(self.sizes), *self.sizes)

    @classmethod
    def unpack(cls, payload: bytes) -> "FrameHeader":
        try:
            frame, ftype, n = struct.unpack_from(">IBB", payload, 0)
            sizes = struct.unpack_from(f">{n}I", payload, 6)
        except struct.error:
            raise StreamError("corrupt stream: frame header too short") from None
        if len(payload) != 6 + 4 * n:
            raise StreamError("corrupt stream: frame header has the wrong size")
        header = cls(frame, ftype, tuple(sizes))
        header.check()
        return header


@dataclass
class VideoFrame:
    """One frame as read: its header, the layer chunks read (1..k) and byte counts."""

    header: FrameHeader
    layers: list[LayerChunk]  # [k] layers 1..k
    frame_bytes: int  # the FRAM chunk's file bytes

    @property
    def type(self) -> str:
        return FRAME_TYPES[self.header.type]


class VideoWriter:
    """Writes a video stream frame by frame to a seekable binary file."""

    def __init__(self, out: BinaryIO, header: Header, video: VideoHeader):
        assert header.kind == KIND_VIDEO, header.kind
        self.out = out
        self.header = header
        self.video = video
        self.header_bytes = write_signature(out) + write_chunk(out, HEADER, header.pack())
        self._vhdr_at = out.tell()
        self.header_bytes += write_chunk(out, VIDEO_HEADER, video.pack())
        self.frames = 0

    def write_frame(self, frame_type: int, layers: list[LayerChunk]) -> list[int]:
        """Write one frame; returns the bytes of each layer, the FRAM chunk counted in layer 1."""
        assert len(layers) == len(self.header.counts), (len(layers), self.header.counts)
        check_range("video frame count", self.frames + 1, 1, MAX_FRAMES)
        payloads = [layer.pack() for layer in layers]
        sizes = [12 + len(p) for p in payloads]
        fram = write_chunk(self.out, FRAME, FrameHeader(self.frames, frame_type, tuple(sizes)).pack())
        for p in payloads:
            write_chunk(self.out, LAYER, p)
        self.frames += 1
        return [sizes[0] + fram] + sizes[1:]

    def finish(self) -> None:
        """Patch the header's frame count in place."""
        end = self.out.tell()
        self.video = VideoHeader(self.frames, self.video.fps_num, self.video.fps_den, self.video.gop)
        self.out.seek(self._vhdr_at)
        write_chunk(self.out, VIDEO_HEADER, self.video.pack())
        self.out.seek(end)


@dataclass
class VideoStream:
    """A video stream opened for reading: its headers; frames come from ``frames()``."""

    src: BinaryIO
    header: Header
    video: VideoHeader
    header_bytes: int
    max_layers: int  # layers read per frame (the others are skipped unread)
    #: a file cut short ends the frames quietly (``cut_at`` tells where) instead of raising
    partial: bool = False
    #: frames complete (at max_layers) before the file ends; None while it has not ended early
    cut_at: int | None = None

    def frames(self) -> Iterator[VideoFrame]:
        """Yield the frames in order, each with layers 1..max_layers; checks the structure."""
        offset = self.header_bytes
        for t in range(self.video.frames):
            try:
                frame, offset = self._read_frame(t, offset)
            except TruncatedStream:
                if not self.partial:
                    raise
                self.cut_at = t
                return
            yield frame
        self._check_end(offset)

    def _read_frame(self, t: int, offset: int) -> tuple[VideoFrame, int]:
        """Frame t (its FRAM chunk at or after ``offset``) and the offset after its layers."""
        chunk = self._frame_chunk(t, offset)
        offset = chunk.offset + chunk.size
        fh = self._frame_header(t, chunk)
        references = (REF_INTRA,) if fh.type == FRAME_I else (REF_PREVIOUS, REF_MOVED)
        layers = []
        for l, size in enumerate(fh.sizes, start=1):
            if l <= self.max_layers:
                layers.append(self._layer(t, l, size, references, offset))
            else:
                skip_bytes(self.src, size)  # not read: the decoder does not need it
            offset += size
        return VideoFrame(fh, layers, chunk.size), offset

    def _frame_chunk(self, t: int, offset: int) -> Chunk:
        """The ``FRAM`` chunk of frame t at ``offset``, past any ancillary chunks."""
        chunk = read_chunk(self.src, offset)
        while chunk is not None and chunk.type != FRAME and chunk.type[:1].islower():
            offset += chunk.size  # ancillary chunks may stand between frames
            chunk = read_chunk(self.src, offset)
        if chunk is None:
            raise TruncatedStream(f"truncated stream: it holds {t} of {self.video.frames} frames")
        if chunk.type != FRAME:
            raise StreamError(f"corrupt stream: expected the header of frame {t}, found {_name(chunk.type)}")
        return chunk

    def _frame_header(self, t: int, chunk: Chunk) -> FrameHeader:
        fh = FrameHeader.unpack(chunk.payload)
        if fh.frame != t:
            raise StreamError(f"corrupt stream: frame header #{t} holds frame index {fh.frame}")
        if len(fh.sizes) != len(self.header.counts):
            raise StreamError(f"corrupt stream: frame header #{t} lists {len(fh.sizes)} layers, "
                              f"the stream has {len(self.header.counts)}")
        if fh.type == FRAME_P and t == 0:
            raise StreamError("corrupt stream: the first frame is not an I-frame")
        return fh

    def _layer(self, t: int, l: int, size: int, references: tuple[int, ...], offset: int) -> LayerChunk:
        """Layer l of frame t: a ``LAYR`` chunk of ``size`` file bytes at ``offset``."""
        chunk = read_chunk(self.src, offset)
        if chunk is None:
            raise TruncatedStream(f"truncated stream: frame {t} ends before layer {l}")
        if chunk.type != LAYER or chunk.size != size:
            raise StreamError(f"corrupt stream: layer {l} of frame {t} does not match its frame header")
        layer = LayerChunk.unpack(chunk.payload)
        if (layer.frame, layer.layer) != (t, l) or layer.reference not in references:
            raise StreamError(f"corrupt stream: layer chunk {l} of frame {t} is out of order")
        if layer.count > self.header.counts[l - 1]:
            raise StreamError(f"corrupt stream: layer {l} of frame {t} exceeds the header's count")
        return layer

    def _check_end(self, offset: int) -> None:
        """After the last frame: ancillary chunks only."""
        while True:
            chunk = read_chunk(self.src, offset)
            if chunk is None:
                return
            if not chunk.type[:1].islower():
                raise StreamError(f"corrupt stream: {_name(chunk.type)} chunk after the last frame")
            offset += chunk.size


def _name(ctype: bytes) -> str:
    return ctype.decode("ascii", "replace")


def open_video(src: BinaryIO, max_layers: int | None = None, partial: bool = False) -> VideoStream:
    """Read the signature, ``GHDR`` (kind 1) and ``VHDR`` of a video stream (a cut inside
    them is an error); ``partial``: frames end quietly where the file is cut short."""
    read_signature(src)
    offset = len(MAGIC) + 2
    first = read_chunk(src, offset)
    if first is None:
        raise TruncatedStream("truncated stream: no header")
    if first.type != HEADER:
        raise StreamError("corrupt stream: first chunk is not a header")
    header = Header.unpack(first.payload)
    if header.kind != KIND_VIDEO:
        raise StreamError("not a video stream")
    offset += first.size
    second = read_chunk(src, offset)
    if second is None or second.type != VIDEO_HEADER:
        raise StreamError("truncated stream: no video header" if second is None
                          else "corrupt stream: the video header does not follow the header")
    video = VideoHeader.unpack(second.payload)
    offset += second.size
    nlayers = len(header.counts)
    k = nlayers if max_layers is None else max_layers
    return VideoStream(src, header, video, offset, k, partial)


def peek_kind(data_head: bytes) -> int | None:
    """The stream kind from the first bytes of a file (None if they do not tell)."""
    at = len(MAGIC) + 2 + 8  # signature, version, chunk length and type
    if len(data_head) > at and data_head[: len(MAGIC)] == MAGIC and data_head[at - 4 : at] == HEADER:
        return data_head[at]
    return None
