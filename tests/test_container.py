import io
import struct
import zlib

import pytest

from bitstream import FORMAT_VERSION, MAGIC, StreamError, iter_chunks, write_chunk, write_signature
from bitstream.container import read_signature


def _file(*chunks: tuple[bytes, bytes]) -> bytes:
    out = io.BytesIO()
    write_signature(out)
    for ctype, payload in chunks:
        write_chunk(out, ctype, payload)
    return out.getvalue()


def _chunks(data: bytes):
    src = io.BytesIO(data)
    read_signature(src)
    return list(iter_chunks(src, 10))


def test_layout_is_png_like():
    data = _file((b"GHDR", b"abc"))
    assert data[:8] == MAGIC == b"\x89GSV\r\n\x1a\n"
    assert struct.unpack(">H", data[8:10])[0] == FORMAT_VERSION
    assert struct.unpack(">I", data[10:14])[0] == 3
    assert data[14:18] == b"GHDR" and data[18:21] == b"abc"
    assert struct.unpack(">I", data[21:25])[0] == zlib.crc32(b"GHDRabc")
    assert len(data) == 25


def test_chunks_round_trip_with_offsets():
    data = _file((b"GHDR", b"x" * 5), (b"LAYR", b""), (b"LAYR", b"yz"))
    chunks = _chunks(data)
    assert [(c.type, c.payload) for c in chunks] == [(b"GHDR", b"xxxxx"), (b"LAYR", b""), (b"LAYR", b"yz")]
    assert [c.offset for c in chunks] == [10, 27, 39]
    assert sum(c.size for c in chunks) + 10 == len(data)


@pytest.mark.parametrize("cut", [1, 4, 9, 12])
def test_truncation_inside_a_chunk_is_an_error(cut):
    data = _file((b"GHDR", b"hello"), (b"LAYR", b"world"))
    with pytest.raises(StreamError, match="truncated"):
        _chunks(data[:-cut])


def test_every_bit_flip_is_caught():
    data = _file((b"GHDR", b"hello"), (b"LAYR", b"world!"))
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(StreamError):
                _chunks(bytes(bad))


def test_bad_signature_and_version():
    with pytest.raises(StreamError, match="signature"):
        _chunks(b"PK\x03\x04" + b"\0" * 20)
    data = bytearray(_file((b"GHDR", b"")))
    data[9] = 99
    with pytest.raises(StreamError, match="version 99"):
        _chunks(bytes(data))
