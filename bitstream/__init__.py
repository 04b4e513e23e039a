"""The .gsv container and its entropy coding (format spec: bitstream/FORMAT.md)."""
from .container import (
    FORMAT_VERSION,
    MAGIC,
    Chunk,
    StreamError,
    TruncatedStream,
    iter_chunks,
    write_chunk,
    write_signature,
)
from .entropy import (
    CODER_RANGE_V1,
    CODER_RANGE_V2,
    CODER_RANGE_V3,
    CODER_RANGE_V4,
    CODERS,
    decode_streams,
    encode_streams,
)
from .layout import Header, LayerChunk, read_stream, write_stream

__all__ = [
    "CODER_RANGE_V1",
    "CODER_RANGE_V2",
    "CODER_RANGE_V3",
    "CODER_RANGE_V4",
    "CODERS",
    "FORMAT_VERSION",
    "MAGIC",
    "Chunk",
    "Header",
    "LayerChunk",
    "StreamError",
    "TruncatedStream",
    "decode_streams",
    "encode_streams",
    "iter_chunks",
    "read_stream",
    "write_chunk",
    "write_signature",
    "write_stream",
]
