"""A committed stream pins the format: its bytes, its header, its pixels."""
import struct
import zlib

import numpy as np
import pytest

from gsvc.codec import decode_image, encode_model, stream_info
from gsvc.media import read_image

from golden import DATA, FILES, STEPS, tiny_model


@pytest.fixture(scope="module", params=sorted(FILES))
def coder(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def golden(coder) -> bytes:
    return (DATA / FILES[coder][0]).read_bytes()


def test_encoder_reproduces_the_golden_bytes(golden, coder):
    data, sizes = encode_model(tiny_model(), STEPS, coder)
    assert data == golden
    assert sum(sizes) == len(golden)


def test_default_coder_is_the_newest():
    data, _ = encode_model(tiny_model(), STEPS)
    assert data == (DATA / FILES[max(FILES)][0]).read_bytes()


def test_golden_header_by_hand(golden, coder):
    assert golden[:10] == b"\x89GSV\r\n\x1a\n\x00\x01"
    length = struct.unpack(">I", golden[10:14])[0]
    assert golden[14:18] == b"GHDR"
    payload = golden[18 : 18 + length]
    assert struct.unpack(">I", golden[18 + length : 22 + length])[0] == zlib.crc32(b"GHDR" + payload)
    kind, w, h, nlayers = struct.unpack_from(">BIIB", payload)
    assert (kind, w, h, nlayers) == (0, 16, 12, 2)
    assert struct.unpack_from(">2I", payload, 10) == (6, 3)
    _, nsteps = struct.unpack_from(">BB", payload, 18)
    assert (struct.unpack_from(">B", payload, 18)[0], nsteps) == (coder, 8)
    assert struct.unpack_from(">8f", payload, 20) == pytest.approx(STEPS)
    info = stream_info(golden)
    assert [l["gaussians"] for l in info["layers"]] == [6, 3]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_golden_pixels(golden, coder, backend):
    expected = read_image(DATA / FILES[coder][0].replace(".gsv", ".png"))
    got = decode_image(golden, backend=backend)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    if backend == "torch":
        np.testing.assert_array_equal(got, expected)
