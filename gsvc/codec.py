"""Encoding and decoding of layered images: one contract, bytes in and bytes out.

``encode_image(rgb, settings) -> EncodeResult`` fits, quantizes and entropy-codes;
``decode_image(source, layers=k)`` reads the header and the first k layer chunks
only, and renders them. Sizes and bpp always come from the bytes written.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import torch

from bitstream import FORMAT_VERSION, Header, LayerChunk, StreamError, decode_streams, encode_streams
from bitstream.layout import KINDS, Stream, read_stream, write_stream

from .errors import GsvcError
from .model import LayeredImage
from .quantize import PARAMS, QuantSettings, dequantize, from_streams, quantize, to_streams
from .render import default_backend
from .metrics import psnr  # noqa: F401  (re-exported for callers of the codec)
from .train import Progress, TrainSettings, fit

#: Gaussians per layer for a 768x512 image (the P-GSVC Kodak setting); scaled by area.
REFERENCE_COUNTS = (5000, 2000, 2000)
REFERENCE_AREA = 768 * 512

#: Iteration totals of the presets.
PRESETS = {"fast": 600, "medium": 3000, "slow": 8000}
DEFAULT_PRESET = "medium"


def default_counts(width: int, height: int, layers: int = 3) -> tuple[int, ...]:
    """Gaussians per layer scaled with image area: 5000,2000,2000 at 768x512.

    For other layer counts the base keeps 5/9 of the total and the rest is split evenly.
    """
    total = sum(REFERENCE_COUNTS) * width * height / REFERENCE_AREA
    if layers == 3:
        shares = [c / sum(REFERENCE_COUNTS) for c in REFERENCE_COUNTS]
    elif layers == 1:
        shares = [1.0]
    else:
        shares = [5 / 9] + [4 / 9 / (layers - 1)] * (layers - 1)
    rest = [max(4, round(total * s)) for s in shares[1:]]
    return (max(8, round(total) - sum(rest)),) + tuple(rest)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GsvcError("--device cuda: no CUDA device is available (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise GsvcError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


@dataclass
class EncodeSettings:
    """Everything ``encode_image`` needs beyond the picture."""

    #: Gaussians per layer; None scales REFERENCE_COUNTS with the image area
    gaussians: tuple[int, ...] | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    #: "auto", "cpu" or "cuda"
    device: str = "auto"
    #: render backend; None picks the fastest for the device
    backend: str | None = None


@dataclass
class EncodeResult:
    data: bytes  # the complete .gsv stream
    model: LayeredImage  # the trained, unquantized model
    sizes: list[int]  # [header bytes, layer 1 bytes, ...]


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (rgb.shape, rgb.dtype)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).to(device)


def encode_image(rgb: np.ndarray, settings: EncodeSettings, progress: Progress | None = None) -> EncodeResult:
    """Fit, quantize and entropy-code ``rgb`` ([H, W, 3] uint8) into a .gsv stream."""
    h, w = rgb.shape[:2]
    counts = tuple(settings.gaussians) if settings.gaussians else default_counts(w, h)
    if not counts or min(counts) < 1:
        raise GsvcError("every layer needs at least one Gaussian")
    if len(counts) > 255:
        raise GsvcError("at most 255 layers")
    device = resolve_device(settings.device)
    backend = settings.backend or default_backend(device)
    steps = settings.quant.steps()
    torch.manual_seed(settings.train.seed)
    model = fit(_to_tensor(rgb, device), counts, settings.train, steps, backend, progress)
    data, sizes = encode_model(model, steps)
    return EncodeResult(data, model, sizes)


def encode_model(model: LayeredImage, steps: tuple[float, ...]) -> tuple[bytes, list[int]]:
    """Quantize and entropy-code a model; returns the stream and [header, layer...] bytes."""
    header = Header(width=model.width, height=model.height, counts=model.counts, steps=steps)
    chunks = []
    for index, layer in enumerate(model.layers, start=1):
        q = quantize(layer, steps)
        chunks.append(LayerChunk(layer=index, count=len(layer), data=encode_streams(to_streams(q))))
    out = io.BytesIO()
    sizes = write_stream(out, header, chunks)
    return out.getvalue(), sizes


def _open(source: bytes | str | os.PathLike | BinaryIO):
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        from .media import check_input_file

        return open(check_input_file(source), "rb")
    return source


def read(source: bytes | str | os.PathLike | BinaryIO, layers: int | None = None) -> Stream:
    """Parse the header and the first ``layers`` layer chunks (all when None)."""
    f = _open(source)
    try:
        stream = read_stream(f, layers)
    except StreamError as e:
        if isinstance(source, (str, os.PathLike)):  # name the file in the one-line error
            raise StreamError(f"{source}: {e}") from None
        raise
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


def stream_to_model(stream: Stream) -> LayeredImage:
    """Entropy-decode and dequantize every layer chunk in ``stream``."""
    steps = stream.header.steps
    if len(steps) != len(PARAMS):
        raise StreamError(f"corrupt stream: {len(steps)} quantizer steps, expected {len(PARAMS)}")
    layers = []
    for chunk in stream.layers:
        streams = decode_streams(chunk.data, [chunk.count] * len(PARAMS))
        layers.append(dequantize(from_streams(streams), steps))
    return LayeredImage(stream.header.width, stream.header.height, layers)


def decode_image(
    source: bytes | str | os.PathLike | BinaryIO,
    layers: int | None = None,
    scale: float = 1.0,
    device: str = "cpu",
    backend: str | None = None,
) -> np.ndarray:
    """Decode the first ``layers`` layers (all when None) to [H, W, 3] uint8 RGB."""
    if layers is not None and layers < 1:
        raise GsvcError(f"--layers must be at least 1 (got {layers})")
    if not (scale > 0 and math.isfinite(scale)):
        raise GsvcError(f"scale must be a positive number (got {scale})")
    stream = read(source, layers)
    if not stream.layers:
        raise GsvcError("stream holds no layers")
    model = stream_to_model(stream)
    dev = resolve_device(device)
    model.layers = [l.to(dev) for l in model.layers]
    with torch.no_grad():
        img = model.render(backend=backend or default_backend(dev), scale=scale)
    return to_uint8(img)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 with round-half-up, as FORMAT.md fixes it."""
    return np.floor(img.detach().to("cpu", torch.float32).numpy() * 255.0 + 0.5).astype(np.uint8)


def stream_info(source: bytes | str | os.PathLike | BinaryIO) -> dict:
    """Describe a stream: the keys of ``gsvc info --json``."""
    stream = read(source)
    hdr = stream.header
    pixels = hdr.width * hdr.height
    rows = []
    cumulative = stream.header_bytes
    for i, (chunk, nbytes) in enumerate(zip(stream.layers, stream.layer_bytes), start=1):
        cumulative += nbytes
        rows.append(
            {
                "index": i,
                "gaussians": chunk.count,
                "bytes": nbytes,
                "bpp": 8.0 * nbytes / pixels,
                "cumulative_bytes": cumulative,
                "cumulative_bpp": 8.0 * cumulative / pixels,
            }
        )
    return {
        "format_version": FORMAT_VERSION,
        "kind": KINDS[hdr.kind],
        "width": hdr.width,
        "height": hdr.height,
        "layers": rows,
        "layers_encoded": len(hdr.counts),
        "header_bytes": stream.header_bytes,
        "total_bytes": stream.total_bytes,
        "bpp": 8.0 * stream.total_bytes / pixels,
        "coder": "constriction-range-v1",
        "quantizer_steps": dict(zip(PARAMS, hdr.steps)),
    }
