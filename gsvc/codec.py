"""The codec's public surface for existing callers: encoder and decoder in one place.

Encoding lives in ``encoder`` (training), decoding in ``decoder`` (no training code);
new code may import either directly.
"""
from __future__ import annotations

from .decoder import decode_image, decode_video, open_video, read, stream_info, stream_to_model, to_uint8
from .device import resolve_device
from .encoder import (
    DEFAULT_PRESET,
    PRESETS,
    REFERENCE_AREA,
    REFERENCE_COUNTS,
    EncodeResult,
    EncodeSettings,
    default_counts,
    encode_image,
    encode_model,
)
from .metrics import psnr

__all__ = [
    "DEFAULT_PRESET", "PRESETS", "REFERENCE_AREA", "REFERENCE_COUNTS", "EncodeResult", "EncodeSettings",
    "decode_image", "decode_video", "default_counts", "encode_image", "encode_model", "open_video",
    "psnr", "read", "resolve_device", "stream_info", "stream_to_model", "to_uint8",
]
