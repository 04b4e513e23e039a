"""Sub-streams by copying chunks: fewer layers, and for videos a range of frames.

Nothing is decoded or re-encoded: the layer chunks' coded data are copied as they are,
under a header that says what the new stream holds (its layer counts, its frame count).
A k-layer extract therefore decodes to exactly the pixels of decoding the original
with k layers. A video's frame range starts at an I-frame (whole GOPs: a P-frame needs
the frames before it back to its I-frame), and its frames are renumbered from 0.
A source cut short gives what it holds completely.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

from .container import StreamError
from .layout import KIND_VIDEO, Header, LayerChunk, read_stream, write_stream
from .video import FRAME_I, VideoHeader, VideoWriter, open_video


@dataclass(frozen=True)
class Extracted:
    """What an extract holds."""

    layers: int  # layers kept
    layers_source: int  # layers the source was encoded with
    first_frame: int = 0  # video: the source's index of the extract's frame 0
    frames: int = 0  # video: frames kept
    frames_source: int = 0  # video: frames the source was encoded with


def _header_with(header: Header, layers: int) -> Header:
    return Header(header.width, header.height, header.counts[:layers], header.steps, header.kind, header.coder)


def _check_layers(layers: int | None, have: int, what: str) -> int:
    k = have if layers is None else layers
    if not 1 <= k <= have:
        raise StreamError(f"cannot extract {k} layers: the {what} holds {have}")
    return k


def extract_image(src: BinaryIO, out: BinaryIO, layers: int | None = None) -> Extracted:
    """Write the first ``layers`` layers (all when None) of the image stream ``src``."""
    stream = read_stream(src, layers, partial=True)
    k = _check_layers(layers, len(stream.layers), "stream" if not stream.cut else "stream (cut short)")
    write_stream(out, _header_with(stream.header, k), stream.layers[:k])
    return Extracted(k, len(stream.header.counts))


def extract_video(src: BinaryIO, out: BinaryIO, layers: int | None = None, first: int = 0,
                  last: int | None = None) -> Extracted:
    """Write frames ``first``..``last`` (inclusive; moved back to the I-frame at or before
    ``first``) of the video stream ``src`` with their first ``layers`` layers. ``out`` must
    be seekable (the frame count is written last)."""
    if last is not None and last < first:
        raise StreamError(f"frame range {first}-{last} is empty")
    source = open_video(src, layers, partial=True)
    k = _check_layers(layers, len(source.header.counts), "stream")
    kept: list[tuple[int, list[LayerChunk]]] = []  # (type, layers) from the last I-frame <= first
    start = 0
    seen = 0  # complete frames read
    for frame in source.frames():
        t = frame.header.frame
        if last is not None and t > last:
            break
        seen = t + 1
        if frame.header.type == FRAME_I and t <= first:
            kept, start = [], t  # a later I-frame at or before ``first``: start there
        kept.append((frame.header.type, frame.layers))
    if first >= seen:
        raise StreamError(f"frame {first} is past the end: the stream holds {seen} complete frames")
    writer = VideoWriter(out, _header_with(source.header, k),
                         VideoHeader(0, source.video.fps_num, source.video.fps_den, source.video.gop))
    for index, (frame_type, chunks) in enumerate(kept):
        writer.write_frame(frame_type, [LayerChunk(c.layer, c.count, c.data, index, c.reference) for c in chunks])
    writer.finish()
    return Extracted(k, len(source.header.counts), start, len(kept), source.video.frames)


def extract(data: bytes, layers: int | None = None, first: int = 0, last: int | None = None) -> tuple[bytes, Extracted]:
    """``extract_image`` or ``extract_video`` of an in-memory stream; returns the new bytes."""
    from .video import peek_kind

    out = io.BytesIO()
    if peek_kind(data[:32]) == KIND_VIDEO:
        summary = extract_video(io.BytesIO(data), out, layers, first, last)
    else:  # an image stream, or not a stream: its reader says what is wrong
        if first or last is not None:
            raise StreamError("a frame range applies to video streams only")
        summary = extract_image(io.BytesIO(data), out, layers)
    return out.getvalue(), summary
