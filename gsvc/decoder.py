"""Decoding: .gsv bytes in, pictures out. Imports no training code.

Images: ``decode_image(source, layers=k)`` reads the header and the first k layer
chunks only, and renders them. Videos: ``open_video(source, layers=k)`` reads the
headers; its ``frames()`` yields one decoded frame at a time, holding only the
previous frame's Gaussians (layers 1..k) as the reference, and moves past the chunks
of layers > k without reading them. ``stream_info`` describes either kind.

On the CPU the decoder never imports torch: parameters stay numpy arrays and are drawn
by ``render.render_array`` (numpy alone for small pictures, the numba kernels beyond;
the same pixels either way); torch is loaded only for a GPU or the reference backend.
``stream_info`` (``gsvc info``) reads headers only and does not load numpy either.
Output size and rendering work are bounded before anything is drawn (MAX_PIXELS,
MAX_RENDER_WORK), so a hostile stream cannot make a decoder run for minutes.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Callable, Iterator

from typing import TYPE_CHECKING

from bitstream import FORMAT_VERSION, StreamError
from bitstream.layout import KIND_IMAGE, KIND_VIDEO, KINDS, REF_MOVED, Stream, read_stream
from bitstream.limits import MAX_PIXELS
from bitstream.video import FRAME_I, VideoFrame, VideoStream, open_video as _open_video, peek_kind

from .errors import GsvcError
from .params import PARAMS, dequantize_array

# numpy, the layer decoder and the renderer are imported where pictures are decoded:
# `gsvc info` reads headers only and never loads them
if TYPE_CHECKING:
    import numpy as np
    import torch

    from .model import GaussianLayer, LayeredImage

#: Most pixel-Gaussian pairs one decoded picture may evaluate (the summed areas of the
#: Gaussians' pixel boxes, measured before drawing): 8.6e9, some 20 s on 2 cores
#: (the kernel evaluates ~0.5e9 pairs/s there). Real streams stay far below: a 768x512
#: picture of 9000 Gaussians is ~3e7, a 12 MP photo drawn at 2x a few 1e9.
MAX_RENDER_WORK = 1 << 33

CODER_NAMES = {1: "constriction-range-v1", 2: "constriction-range-v2"}
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


def read(source: Source, layers: int | None = None, partial: bool = False) -> Stream:
    """Parse an image stream's header and first ``layers`` layer chunks (all when None).

    ``partial``: a file cut short gives the complete layers before the cut (``Stream.cut``).
    """
    if stream_kind(source) == KIND_VIDEO:
        raise GsvcError(f"{_label(source)}is a video stream: decode it to a video or to frames")
    f = _open(source)
    try:
        stream = read_stream(f, layers, partial=partial)
    except StreamError as e:
        raise _named(source, e) from None
    finally:
        if f is not source:
            f.close()
    if layers is not None and len(stream.layers) < layers:
        have = len(stream.layers)
        total = len(stream.header.counts)
        raise GsvcError(
            f"{_label(source)}stream holds {have} {'complete ' if stream.cut else ''}layer{'s' if have != 1 else ''}"
            + (f" (of {total} encoded{'; the file is cut short' if stream.cut else ''})" if have != total else "")
            + f", cannot decode {layers}"
        )
    return stream


def cut_note(have: int, total: int, what: str) -> str:
    """The one line that says a stream was cut short and what was decoded of it
    (``what``: "layer" or "frame")."""
    return (f"the stream is cut short: it holds {have} complete {what}{'s' if have != 1 else ''} of {total}; "
            f"decoded {'it' if have == 1 else 'those'}")


def _label(source: Source) -> str:
    return f"{source}: " if isinstance(source, (str, os.PathLike)) else ""


def stream_to_model(stream: Stream) -> "LayeredImage":
    """Entropy-decode and dequantize every layer chunk of an image stream (torch layers)."""
    from .layer_codec import decode_intra
    from .model import LayeredImage
    from .quantize import dequantize

    steps = stream.header.steps
    coder = stream.header.coder
    layers = [dequantize(decode_intra(chunk.data, chunk.count, coder), steps) for chunk in stream.layers]
    return LayeredImage(stream.header.width, stream.header.height, layers)


def _check_request(layers: int | None, scale: float) -> None:
    if layers is not None and layers < 1:
        raise GsvcError(f"--layers must be at least 1 (got {layers})")
    if not (scale > 0 and math.isfinite(scale)):
        raise GsvcError(f"scale must be a positive number (got {scale})")


@dataclass(frozen=True)
class Output:
    """The decoded picture: its size and its scale per axis relative to the encoded size."""

    width: int
    height: int
    sx: float
    sy: float

    @property
    def scale(self) -> tuple[float, float]:
        return self.sx, self.sy


def output_size(width: int, height: int, scale: float = 1.0, size: tuple[int, int] | None = None) -> Output:
    """The decoded picture for ``scale`` (round(scale * side)), or for ``size`` (W, H; one
    side 0 keeps the aspect ratio); refuses an empty or an oversized picture. The whole
    encoded picture fills the output: the scale per axis is output side / encoded side."""
    if size is not None:
        w, h = size
        if w == 0:
            w = max(1, round(width * h / height))
        if h == 0:
            h = max(1, round(height * w / width))
        what = f"size {w}x{h}"
    else:
        _check_request(None, scale)
        w, h = round(width * scale), round(height * scale)
        what = f"scale {scale:g} makes the {width}x{height} picture {w}x{h}"
    if w < 1 or h < 1:
        raise GsvcError(f"{what}: too small to draw")
    if w * h > MAX_PIXELS:
        raise GsvcError(f"{what}: above the limit of {MAX_PIXELS:,} pixels")
    return Output(w, h, w / width, h / height)  # the whole picture fills the output


def _on_numba(device: str, backend: str | None) -> bool:
    return device == "cpu" and backend in (None, "numba")


def render_params(
    layers: list[np.ndarray],  # k x [N_l, 8] float32 parameters (PARAMS order)
    out: Output,
    device: str = "cpu",
    backend: str | None = None,
) -> np.ndarray:  # [out.height, out.width, 3] uint8
    """Draw dequantized layers as the ``out`` picture (bounded, see module doc)."""
    import numpy as np

    from .render import RenderTooLarge, render_array

    p = np.concatenate(layers, axis=0) if layers else np.zeros((0, 8), np.float32)
    means, chol, colors = p[:, 0:2], p[:, 2:5], p[:, 5:8]
    try:
        # hostile parameters overflow to inf/NaN there, and such Gaussians draw nothing
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if _on_numba(device, backend):
                img = render_array(means, chol, colors, out.height, out.width, out.scale, max_work=MAX_RENDER_WORK)
            else:
                _check_work(means, chol, out)
                img = _render_torch(p, out, device, backend)
    except RenderTooLarge as e:
        raise GsvcError(f"{e} (a stream this heavy is refused)") from None
    return to_uint8(img)


def _check_work(means: np.ndarray, chol: np.ndarray, out: Output) -> None:
    import numpy as np

    from .render import RenderTooLarge, conics_from_chol
    from .render.numpy_forward import box_work, pixel_boxes

    f32 = np.float32
    conics = np.ascontiguousarray(conics_from_chol(chol.astype(f32), out.scale), dtype=f32)
    means = np.ascontiguousarray(means * np.asarray(out.scale, dtype=f32))
    work = box_work(pixel_boxes(means, conics, out.height, out.width))
    if work > MAX_RENDER_WORK:
        raise RenderTooLarge(work, MAX_RENDER_WORK)


def _render_torch(p: np.ndarray, out: Output, device: str, backend: str | None):
    import torch

    from .device import resolve_device
    from .render import default_backend, render

    dev = resolve_device(device)
    t = torch.from_numpy(p).to(dev)
    with torch.no_grad():
        return render(t[:, 0:2], t[:, 2:5], t[:, 5:8], out.height, out.width,
                      backend=backend or default_backend(dev), scale=out.scale)


def render_layers(layers: list["GaussianLayer"], width: int, height: int, scale: float,
                  device: "torch.device", backend: str) -> np.ndarray:  # [H', W', 3] uint8
    """``render_params`` for torch layers (the video encoder's view of a decoded frame)."""
    import torch

    params = [torch.cat(l.tensors(), dim=1).detach().to("cpu", torch.float32).numpy() for l in layers]
    return render_params(params, output_size(width, height, scale), device.type, backend)


def decode_image(
    source: Source,
    layers: int | None = None,
    scale: float = 1.0,
    device: str = "cpu",
    backend: str | None = None,
    size: tuple[int, int] | None = None,
    partial: bool = False,
    notice: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Decode the first ``layers`` layers (all when None) of an image stream to [H, W, 3]
    uint8, at ``scale`` x the encoded size or at ``size`` (W, H; one side 0 keeps the aspect).

    ``partial``: a file cut short decodes its complete layers, told by one ``notice`` line.
    """
    _check_request(layers, scale)
    stream = read(source, layers, partial)
    if not stream.layers:
        raise GsvcError(f"{_label(source)}the stream is cut short inside layer 1: nothing to decode"
                        if stream.cut else "stream holds no layers")
    if layers is None and len(stream.layers) < len(stream.header.counts) and notice is not None:
        notice(cut_note(len(stream.layers), len(stream.header.counts), "layer"))
    hdr = stream.header
    out = output_size(hdr.width, hdr.height, scale, size)  # refused before any entropy decoding
    from .layer_codec import decode_intra

    params = [dequantize_array(decode_intra(chunk.data, chunk.count, hdr.coder), hdr.steps)
              for chunk in stream.layers]
    return render_params(params, out, device, backend)


def to_uint8(img) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (numpy or torch) -> uint8 with round-half-up, as FORMAT.md
    fixes it; values are clamped to [0, 1] first, and NaN (from a hostile stream) is 0.
    Works in place on one float32 buffer (a 67 MP picture is 800 MB of them)."""
    import numpy as np

    if isinstance(img, np.ndarray):
        img = np.array(img, dtype=np.float32)  # a copy: the caller's array is left alone
    else:
        import torch

        img = img.detach().to("cpu", torch.float32).numpy().copy()
    np.nan_to_num(img, copy=False, nan=0.0)
    np.clip(img, 0.0, 1.0, out=img)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    np.floor(img, out=img)
    return img.astype(np.uint8)


@dataclass
class DecodedFrame:
    index: int
    type: str  # "I" or "P"
    rgb: np.ndarray  # [H', W', 3] uint8


class VideoReader:
    """An open video stream: its properties, then ``frames()`` one at a time."""

    def __init__(self, source: Source, layers: int | None = None, partial: bool = False):
        _check_request(layers, 1.0)
        self._source = source
        self._file = _open(source)
        try:
            self.stream: VideoStream = _open_video(self._file, layers, partial)
        except StreamError as e:
            self.close()
            raise _named(source, e) from None
        except BaseException:
            self.close()
            raise
        hdr = self.stream.header
        if layers is not None and layers > len(hdr.counts):
            self.close()
            raise GsvcError(f"stream holds {len(hdr.counts)} layers, cannot decode {layers}")
        self.width, self.height = hdr.width, hdr.height
        self.layers = self.stream.max_layers
        self.layers_encoded = len(hdr.counts)
        self.frame_count = self.stream.video.frames
        self.fps = Fraction(self.stream.video.fps_num, self.stream.video.fps_den)
        self.gop = self.stream.video.gop

    @property
    def cut_at(self) -> int | None:
        """Frames complete before the file ends (partial reading, once frames ran out);
        None while the stream has not ended early."""
        return self.stream.cut_at

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
        for frame, q, _ in self.layer_parts():
            yield frame, q

    def layer_parts(self) -> Iterator[tuple[VideoFrame, list[np.ndarray], list | None]]:
        """``models`` and, for a P-frame, its layers' ``layer_codec.PredictedParts`` (the
        differences, keep flags, new Gaussians and streams as coded; None for an I-frame)."""
        from .layer_codec import decode_intra, predicted_parts

        reference: list[np.ndarray] | None = None
        history: list = []  # per layer: the last P-frame's streams (coder 4 inherits models from them)
        coder = self.stream.header.coder
        for frame in self.chunks():
            parts = None
            try:
                if frame.header.type == FRAME_I:
                    q = [decode_intra(c.data, c.count, coder) for c in frame.layers]
                    history = [None] * len(q)
                else:
                    assert reference is not None  # the stream reader rejects a P first frame
                    parts = [predicted_parts(c.data, ref, c.count, coder, c.reference == REF_MOVED, h)
                             for c, ref, h in zip(frame.layers, reference, history)]
                    q = [p.layer() for p in parts]
                    history = [p.streams for p in parts]
            except StreamError as e:
                raise _named(self._source, StreamError(f"frame {frame.header.frame}: {e}")) from None
            reference = q
            yield frame, q, parts

    def frames(self, scale: float = 1.0, device: str = "cpu", backend: str | None = None,
               size: tuple[int, int] | None = None) -> Iterator[DecodedFrame]:
        out = output_size(self.width, self.height, scale, size)
        steps = self.stream.header.steps
        for frame, q in self.models():
            params = [dequantize_array(x, steps) for x in q]
            rgb = render_params(params, out, device, backend)
            yield DecodedFrame(frame.header.frame, frame.type, rgb)


def open_video(source: Source, layers: int | None = None, partial: bool = False) -> VideoReader:
    """An open video stream; ``partial``: frames end quietly where the file is cut short
    (``reader.cut_at`` then tells how many frames were complete)."""
    if stream_kind(source) != KIND_VIDEO:
        raise GsvcError(f"{_label(source)}is an image stream, not a video")
    return VideoReader(source, layers, partial)


def decode_video(source: Source, layers: int | None = None, scale: float = 1.0,
                 device: str = "cpu", backend: str | None = None,
                 size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Every frame of a video stream, decoded at ``layers`` layers (convenience: in memory)."""
    with open_video(source, layers) as reader:
        return [f.rgb for f in reader.frames(scale, device, backend, size)]


def _motion_info(layer, header) -> dict:
    """A moved layer's global motion as a user reads it (``GlobalMotion.camera``)."""
    from .layer_codec import GlobalMotion

    try:
        m, _ = GlobalMotion.read(layer.data)
    except StreamError as e:
        raise GsvcError(f"frame {layer.frame}: {e}") from None
    return m.camera(header.width, header.height, header.steps)


def stream_info(source: Source) -> dict:
    """Describe a stream: the keys of ``gsvc info --json``. A stream cut short is described
    as far as it is complete (``complete`` false; ``layers`` lists the complete ones)."""
    if stream_kind(source) == KIND_VIDEO:
        return _video_info(source)
    stream = read(source, partial=True)
    hdr = stream.header
    out = _info(hdr, stream.header_bytes, [c.count for c in stream.layers], stream.layer_bytes,
                hdr.width * hdr.height)
    out["complete"] = not stream.cut and len(stream.layers) == len(hdr.counts)
    return out


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
        "coder": CODER_NAMES.get(hdr.coder, str(hdr.coder)),
        "quantizer_steps": dict(zip(PARAMS, hdr.steps)),
    }


def _video_info(source: Source) -> dict:
    """Video: image keys with per-layer totals over all frames, plus the frame list.

    A frame's FRAM chunk is counted in its layer-1 bytes (a decoder of any layer count
    reads it), so ``cumulative_bytes`` of layer k is what a k-layer decoder reads.
    """
    with open_video(source, partial=True) as reader:
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
            entry = {"index": frame.header.frame, "type": frame.type, "bytes": sizes, "gaussians": gaussians,
                     "moved": [c.reference == REF_MOVED for c in frame.layers]}
            if any(entry["moved"]):
                entry["motion"] = _motion_info(frame.layers[entry["moved"].index(True)], hdr)
            frame_list.append(entry)
        frames = len(frame_list)
        pixels = hdr.width * hdr.height * max(1, frames)
        out = _info(hdr, reader.stream.header_bytes, list(hdr.counts), totals, pixels)
        seconds = frames / float(reader.fps)
        for row in out["layers"]:
            row["kbps"] = 8.0 * row["bytes"] / seconds / 1000 if seconds else 0.0
            row["cumulative_kbps"] = 8.0 * row["cumulative_bytes"] / seconds / 1000 if seconds else 0.0
            row["max_gaussians"] = counts_max[row["index"] - 1]
        out.update(
            complete=reader.cut_at is None,
            frames=frames,
            frames_encoded=reader.frame_count,
            fps=float(reader.fps),
            fps_fraction=f"{reader.fps.numerator}/{reader.fps.denominator}",
            duration=seconds,
            gop=reader.gop,
            i_frames=sum(1 for f in frame_list if f["type"] == "I"),
            frame_list=frame_list,
        )
        return out
