"""Chunked container: signature, version, then PNG-style chunks.

    file   := MAGIC (8 bytes) | version (u16 BE) | chunk*
    chunk  := length (u32 BE, payload bytes) | type (4 ASCII) | payload | CRC-32 (u32 BE)

The CRC-32 (zlib's) covers type and payload. Chunks are read one at a time from a
file object, so a reader that needs only the first k chunks never reads the rest.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .limits import MAX_CHUNK

MAGIC = b"\x89GSV\r\n\x1a\n"
FORMAT_VERSION = 1
#: Payloads are read in blocks of this size, so a length field that lies costs no
#: more memory than the bytes actually present.
_READ_BLOCK = 1 << 20


class StreamError(ValueError):
    """The bytes are not a valid gsvc stream (bad signature, CRC, truncation, ...)."""


class TruncatedStream(StreamError):
    """The file ends inside a chunk or its framing: cut short (a partial download), not
    corrupted. Readers of partial streams stop there and keep what came before."""


def check_range(what: str, value: int | float, lo: int | float, hi: int | float) -> None:
    """Raise StreamError unless ``lo <= value <= hi`` (NaN fails): a field against its limit.

    Readers call it on every field before they allocate anything; writers call the
    same checks, so an encoder never writes what a reader refuses (FORMAT.md, Limits).
    """
    if not lo <= value <= hi:
        raise StreamError(f"{what} is {value}, outside the format's range [{lo}, {hi}]")


@dataclass(frozen=True)
class Chunk:
    type: bytes  # 4 ASCII letters
    payload: bytes
    offset: int  # byte offset of the chunk's length field in the file

    @property
    def size(self) -> int:
        """Bytes the chunk occupies in the file (framing included)."""
        return 12 + len(self.payload)


def write_signature(out: BinaryIO, version: int = FORMAT_VERSION) -> int:
    out.write(MAGIC + struct.pack(">H", version))
    return len(MAGIC) + 2


def write_chunk(out: BinaryIO, ctype: bytes, payload: bytes) -> int:
    """Write one chunk; returns the number of bytes written."""
    assert len(ctype) == 4 and ctype.isalpha(), ctype
    check_range(f"size of chunk {ctype.decode('ascii')}", len(payload), 0, MAX_CHUNK)
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    out.write(struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc))
    return 12 + len(payload)


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    """Exactly ``n`` bytes; large reads go in blocks, so memory follows the bytes present."""
    if n <= _READ_BLOCK:
        data = src.read(n)
    else:
        blocks, got = [], 0
        while got < n:
            block = src.read(min(n - got, _READ_BLOCK))
            if not block:
                break
            blocks.append(block)
            got += len(block)
        data = b"".join(blocks)
    if len(data) != n:
        raise TruncatedStream(f"truncated stream: {what} ends after {len(data)} of {n} bytes")
    return data


def read_signature(src: BinaryIO) -> int:
    """Check the magic and return the format version."""
    head = src.read(len(MAGIC) + 2)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise StreamError("not a gsvc stream (bad signature)")
    if len(head) < len(MAGIC) + 2:
        raise TruncatedStream("truncated stream: no format version")
    (version,) = struct.unpack(">H", head[len(MAGIC) :])
    if version != FORMAT_VERSION:
        raise StreamError(
            f"unsupported format version {version} (this gsvc reads version {FORMAT_VERSION})"
        )
    return version


def read_chunk(src: BinaryIO, offset: int) -> Chunk | None:
    """Read one chunk at ``offset`` (the file position); None at a clean end of file."""
    head = src.read(8)
    if not head:
        return None
    if len(head) < 8:
        raise TruncatedStream(f"truncated stream: chunk header at byte {offset}")
    (length,) = struct.unpack(">I", head[:4])
    ctype = head[4:]
    name = ctype.decode("ascii", "replace")
    if not ctype.isalpha():
        raise StreamError(f"corrupt stream: bad chunk type at byte {offset}")
    check_range(f"length of chunk {name} at byte {offset}", length, 0, MAX_CHUNK)
    payload = _read_exact(src, length, f"chunk {name} at byte {offset}")
    (crc,) = struct.unpack(">I", _read_exact(src, 4, f"CRC of chunk {name} at byte {offset}"))
    if zlib.crc32(ctype + payload) & 0xFFFFFFFF != crc:
        raise StreamError(f"corrupt stream: CRC mismatch in chunk {name} at byte {offset}")
    return Chunk(ctype, payload, offset)


def skip_bytes(src: BinaryIO, n: int) -> None:
    """Move ``n`` bytes forward without reading them where the source can seek."""
    seekable = getattr(src, "seekable", None)
    if seekable is not None and seekable():
        src.seek(n, 1)
        return
    while n > 0:  # a pipe: read and drop
        block = src.read(min(n, 1 << 20))
        if not block:
            return
        n -= len(block)


def iter_chunks(src: BinaryIO, offset: int) -> Iterator[Chunk]:
    """Yield chunks from ``src`` until a clean end of file; verifies every CRC."""
    while True:
        chunk = read_chunk(src, offset)
        if chunk is None:
            return
        yield chunk
        offset += chunk.size
