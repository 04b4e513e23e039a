"""Decoding: .gsv bytes in, pictures out. Imports no training code.

Images: ``decode_image(source, layers=k)`` reads the header and the first k layer
chunks only, and renders them. Videos: ``open_video(source, layers=k)`` reads the
headers; its ``frames()`` yields one decoded frame at a time, holding only the
previous frame's Gaussians (layers 1..k) as the reference, and moves past the chunks
of layers > k without reading them. ``stream_info`` describes either kind.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator

import numpy as np
import torch

from bitstream import FORMAT_VERSION, StreamError
from bitstream.layout import KIND_IMAGE, KIND_VIDEO, KINDS, Stream, read_stream
from bitstream.video import FRAME_I, VideoFrame, VideoStream, open_video as _open_video, peek_kind

from .device import resolve_device
from .errors import GsvcError
from .layer_codec import decode_intra, decode_predicted
from .model import GaussianLayer, LayeredImage, concat
from .quantize import PARAMS, dequantize
from .render import default_backend, render

CODER_NAME = "constriction-range-v1"
Source = bytes | str | os.PathLike | BinaryIO


def _open(source: Source):
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        from .files import check_input_file

        return open(check_input_file(source), "rb")
    return source


def _named(source: Source, e: StreamError) -> StreamError:
    """The same error naming the file it comes from (one-line CLI errors)."""
    if isinstance(source, (str, os.PathLike)):
        return StreamError(f"{source}: {e}")
    return e


def stream_kind(source: Source) -> int:
    """KIND_IMAGE or KIND_VIDEO from the first bytes (StreamError if not a stream)."""
    f = _open(source)
    try:
        pos = f.tell() if f is source else 0
        head = f.read(32)
        if f is source:
            f.seek(pos)
    finally:
        if f is not source:
            f.close()
    kind = peek_kind(head)
    if kind is None:
        # let the real reader say what is wrong (signature, version, truncation)
        try:
            read_stream(io.BytesIO(head), 0)
        except StreamError as e:
            raise _named(source, e) from None
        raise _named(source, StreamError("corrupt stream: no header"))
    if kind not in KINDS:
        raise _named(source, StreamError(f"unsupported stream kind {kind}"))
    return kind


def read(source: Source, layers: int | None = None) -> Stream:
    """Parse an image stream's header and first ``layers`` layer chunks (all when None)."""
    if stream_kind(source) == KIND_VIDEO:
        raise GsvcError(f"{_label(source)}is a video stream: decode it to a video or to frames")
    f = _open(source)
    try:
        stream = read_stream(f, layers)
    except StreamError as e:
        raise _named(source, e) from None
    finally:
        if f is not source:
            f.close()
    if layers is not None and len(stream.layers) < layers:
        have = len(stream.layers)
        total = len(stream.header.counts)
        raise GsvcError(
            f"stream holds {have} layer{'s' if have != 1 else ''}"
            + (f" (of {total} encoded)" if have != total else "")
            + f", cannot decode {layers}"
        )
    return stream


def _label(source: Source) -> str:
    return f"{source}: " if isinstance(source, (str, os.PathLike)) else ""


def _check_steps(steps: tuple[float, ...]) -> None:
    if len(steps) != len(PARAMS):
        raise StreamError(f"corrupt stream: {len(steps)} quantizer steps, expected {len(PARAMS)}")


def stream_to_model(stream: Stream) -> LayeredImage:
    """Entropy-decode and dequantize every layer chunk of an image stream."""
    steps = stream.header.steps
    _check_steps(steps)
    layers = [dequantize(decode_intra(chunk.data, chunk.count), steps) for chunk in stream.layers]
    return LayeredImage(stream.header.width, stream.header.height, layers)


def _check_request(layers: int | None, scale: float) -> None:
    if layers is not None and layers < 1:
        raise GsvcError(f"--layers must be at least 1 (got {layers})")
    if not (scale > 0 and math.isfinite(scale)):
        raise GsvcError(f"scale must be a positive number (got {scale})")


def render_layers(layers: list[GaussianLayer], width: int, height: int, scale: float,
                  device: torch.device, backend: str) -> np.ndarray:  # [H', W', 3] uint8
    g = concat([l.to(device) for l in layers])
    h, w = round(height * scale), round(width * scale)
    with torch.no_grad():
        img = render(g.means, g.chol, g.colors, h, w, backend=backend, scale=scale).clamp(0.0, 1.0)
    return to_uint8(img)


def decode_image(
    source: Source,
    layers: int | None = None,
    scale: float = 1.0,
    device: str = "cpu",
    backend: str | None = None,
) -> np.ndarray:
    """Decode the first ``layers`` layers (all when None) of an image stream to [H, W, 3] uint8."""
    _check_request(layers, scale)
    stream = read(source, layers)
    if not stream.layers:
        raise GsvcError("stream holds no layers")
    model = stream_to_model(stream)
    dev = resolve_device(device)
    return render_layers(model.layers, model.width, model.height, scale, dev, backend or default_backend(dev))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 with round-half-up, as FORMAT.md fixes it."""
    return np.floor(img.detach().to("cpu", torch.float32).numpy() * 255.0 + 0.5).astype(np.uint8)


@dataclass
class DecodedFrame:
    index: int
    type: str  # "I" or "P"
    rgb: np.ndarray  # [H', W', 3] uint8


class VideoReader:
    """An open video stream: its properties, then ``frames()`` one at a time."""

    def __init__(self, source: Source, layers: int | None = None):
        _check_request(layers, 1.0)
        self._source = source
        self._file = _open(source)
        try:
            self.stream: VideoStream = _open_video(self._file, layers)
        except StreamError as e:
            self.close()
            raise _named(source, e) from None
        except BaseException:
            self.close()
            raise
        hdr = self.stream.header
        _check_steps(hdr.steps)
        if layers is not None and layers > len(hdr.counts):
            self.close()
            raise GsvcError(f"stream holds {len(hdr.counts)} layers, cannot decode {layers}")
        self.width, self.height = hdr.width, hdr.height
        self.layers = self.stream.max_layers
        self.layers_encoded = len(hdr.counts)
        self.frame_count = self.stream.video.frames
        self.fps = Fraction(self.stream.video.fps_num, self.stream.video.fps_den)
        self.gop = self.stream.video.gop

    def close(self) -> None:
        if self._file is not self._source:
            self._file.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chunks(self) -> Iterator[VideoFrame]:
        """The frames' chunks as read (layers 1..k), with the file named in errors."""
        it = self.stream.frames()
        while True:
            try:
                frame = next(it)
            except StopIteration:
                return
            except StreamError as e:
                raise _named(self._source, e) from None
            yield frame

    def models(self) -> Iterator[tuple[VideoFrame, list[np.ndarray]]]:
        """Each frame's chunks and its integer layers [N_l, 8] (1..k), as the encoder saw them."""
        reference: list[np.ndarray] | None = None
        for frame in self.chunks():
            try:
                if frame.header.type == FRAME_I:
                    q = [decode_intra(c.data, c.count) for c in frame.layers]
                else:
                    assert reference is not None  # the stream reader rejects a P first frame
                    q = [decode_predicted(c.data, ref, c.count) for c, ref in zip(frame.layers, reference)]
            except StreamError as e:
                raise _named(self._source, StreamError(f"frame {frame.header.frame}: {e}")) from None
            reference = q
            yield frame, q

    def frames(self, scale: float = 1.0, device: str = "cpu", backend: str | None = None) -> Iterator[DecodedFrame]:
        _check_request(None, scale)
        dev = resolve_device(device)
        backend = backend or default_backend(dev)
        steps = self.stream.header.steps
        for frame, q in self.models():
            layers = [dequantize(x, steps) for x in q]
            rgb = render_layers(layers, self.width, self.height, scale, dev, backend)
            yield DecodedFrame(frame.header.frame, frame.type, rgb)


def open_video(source: Source, layers: int | None = None) -> VideoReader:
    if stream_kind(source) != KIND_VIDEO:
        raise GsvcError(f"{_label(source)}is an image stream, not a video")
    return VideoReader(source, layers)


def decode_video(source: Source, layers: int | None = None, scale: float = 1.0,
                 device: str = "cpu", backend: str | None = None) -> list[np.ndarray]:
    """Every frame of a video stream, decoded at ``layers`` layers (convenience: in memory)."""
    with open_video(source, layers) as reader:
        return [f.rgb for f in reader.frames(scale, device, backend)]


def stream_info(source: Source) -> dict:
    """Describe a stream: the keys of ``gsvc info --json``."""
    if stream_kind(source) == KIND_VIDEO:
        return _video_info(source)
    stream = read(source)
    hdr = stream.header
    return _info(hdr, stream.header_bytes, [c.count for c in stream.layers], stream.layer_bytes,
                 hdr.width * hdr.height)


def _info(hdr, header_bytes: int, counts: list[int], layer_bytes: list[int], pixels: int) -> dict:
    rows = []
    cumulative = header_bytes
    for i, (count, nbytes) in enumerate(zip(counts, layer_bytes), start=1):
        cumulative += nbytes
        rows.append(
            {
                "index": i,
                "gaussians": count,
                "bytes": nbytes,
                "bpp": 8.0 * nbytes / pixels,
                "cumulative_bytes": cumulative,
                "cumulative_bpp": 8.0 * cumulative / pixels,
            }
        )
    total = header_bytes + sum(layer_bytes)
    return {
        "format_version": FORMAT_VERSION,
        "kind": KINDS[hdr.kind],
        "width": hdr.width,
        "height": hdr.height,
        "layers": rows,
        "layers_encoded": len(hdr.counts),
        "header_bytes": header_bytes,
        "total_bytes": total,
        "bpp": 8.0 * total / pixels,
        "coder": CODER_NAME,
        "quantizer_steps": dict(zip(PARAMS, hdr.steps)),
    }


def _video_info(source: Source) -> dict:
    """Video: image keys with per-layer totals over all frames, plus the frame list.

    A frame's FRAM chunk is counted in its layer-1 bytes (a decoder of any layer count
    reads it), so ``cumulative_bytes`` of layer k is what a k-layer decoder reads.
    """
    with open_video(source) as reader:
        hdr = reader.stream.header
        nl = len(hdr.counts)
        frame_list = []
        totals = [0] * nl
        counts_max = [0] * nl
        for frame in reader.chunks():
            sizes = list(frame.header.sizes)
            sizes[0] += frame.frame_bytes
            totals = [a + b for a, b in zip(totals, sizes)]
            gaussians = [c.count for c in frame.layers]
            counts_max = [max(a, b) for a, b in zip(counts_max, gaussians)]
            frame_list.append({"index": frame.header.frame, "type": frame.type, "bytes": sizes,
                               "gaussians": gaussians})
        frames = len(frame_list)
        pixels = hdr.width * hdr.height * max(1, frames)
        out = _info(hdr, reader.stream.header_bytes, list(hdr.counts), totals, pixels)
        seconds = frames / float(reader.fps)
        for row in out["layers"]:
            row["kbps"] = 8.0 * row["bytes"] / seconds / 1000 if seconds else 0.0
            row["cumulative_kbps"] = 8.0 * row["cumulative_bytes"] / seconds / 1000 if seconds else 0.0
            row["max_gaussians"] = counts_max[row["index"] - 1]
        out.update(
            frames=frames,
            fps=float(reader.fps),
            fps_fraction=f"{reader.fps.numerator}/{reader.fps.denominator}",
            duration=seconds,
            gop=reader.gop,
            i_frames=sum(1 for f in frame_list if f["type"] == "I"),
            frame_list=frame_list,
        )
        return out
