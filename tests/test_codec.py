import io
import json

import numpy as np
import pytest
import torch

from bitstream import StreamError
from gsvc.codec import (
    EncodeSettings,
    decode_image,
    default_counts,
    encode_image,
    psnr,
    read,
    stream_info,
)
from gsvc.errors import GsvcError
from gsvc.metrics import psnr_from_mse
from gsvc.train import TrainSettings


def test_default_counts_follow_the_paper_at_kodak_size():
    assert default_counts(768, 512) == (5000, 2000, 2000)
    assert default_counts(512, 768) == (5000, 2000, 2000)
    assert default_counts(384, 256) == (1250, 500, 500)
    assert sum(default_counts(768, 512, layers=4)) == 9000


def test_round_trip_at_every_layer(encoded, crop):
    values = []
    for k in (1, 2, 3):
        out = decode_image(encoded.data, layers=k)
        assert out.shape == crop.shape and out.dtype == np.uint8
        values.append(psnr(out, crop))
    assert values[0] > 20.0, values  # the base layer alone is a whole picture
    assert values[0] < values[1] < values[2], values
    np.testing.assert_array_equal(decode_image(encoded.data), decode_image(encoded.data, layers=3))


def test_quantized_stream_is_close_to_the_model(encoded, crop):
    target = torch.from_numpy(crop.astype(np.float32) / 255)
    unquantized = psnr_from_mse(((encoded.model.render(3) - target) ** 2).mean().item())
    assert psnr(decode_image(encoded.data), crop) > unquantized - 0.5


def test_prefix_at_each_layer_boundary_is_a_stream_with_that_many_layers(encoded):
    cuts = np.cumsum(encoded.sizes)
    assert cuts[-1] == len(encoded.data)
    full = [decode_image(encoded.data, layers=k) for k in (1, 2, 3)]
    for k, cut in enumerate(cuts[1:], start=1):
        prefix = encoded.data[:cut]
        info = stream_info(prefix)
        assert len(info["layers"]) == k and info["layers_encoded"] == 3
        assert info["total_bytes"] == cut
        np.testing.assert_array_equal(decode_image(prefix), full[k - 1])
        with pytest.raises(GsvcError, match=f"holds {k} layer"):
            decode_image(prefix, layers=k + 1)
    # only the header: a stream with no layers to show
    with pytest.raises(GsvcError):
        decode_image(encoded.data[: cuts[0]])


def test_decoding_k_layers_reads_only_their_bytes(encoded):
    class Counting(io.BytesIO):
        furthest = 0

        def read(self, n=-1):
            out = super().read(n)
            Counting.furthest = max(Counting.furthest, self.tell())
            return out

    cuts = np.cumsum(encoded.sizes)
    for k in (1, 2):
        Counting.furthest = 0
        read(Counting(encoded.data), layers=k)
        assert Counting.furthest == cuts[k]


def test_info_matches_the_file(encoded):
    info = stream_info(encoded.data)
    assert json.loads(json.dumps(info)) == info
    assert {"format_version", "kind", "width", "height", "layers", "total_bytes"} <= set(info)
    assert info["format_version"] == 1 and info["kind"] == "image"
    assert (info["width"], info["height"]) == (48, 32)
    assert info["total_bytes"] == len(encoded.data)
    assert [l["index"] for l in info["layers"]] == [1, 2, 3]
    assert [l["gaussians"] for l in info["layers"]] == [30, 20, 20]
    assert [l["bytes"] for l in info["layers"]] == encoded.sizes[1:]
    for l in info["layers"]:
        assert l["bpp"] == pytest.approx(8 * l["bytes"] / (48 * 32))
    assert info["header_bytes"] + sum(l["bytes"] for l in info["layers"]) == len(encoded.data)


def test_every_bit_flip_is_caught(encoded):
    data = encoded.data
    rng = np.random.default_rng(0)
    positions = sorted(set(range(min(len(data), 120))) | set(rng.integers(0, len(data), 200).tolist()))
    for i in positions:
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises((StreamError, GsvcError)):
                read(bytes(bad))


def test_truncation_mid_chunk_is_an_error(encoded):
    cuts = set(np.cumsum(encoded.sizes).tolist())
    for n in range(10, len(encoded.data), 7):
        if n in cuts:
            continue
        with pytest.raises(StreamError, match="truncated"):
            read(encoded.data[:n])


def test_same_input_settings_and_seed_give_identical_bytes(crop):
    settings = EncodeSettings(gaussians=(20, 10), train=TrainSettings(iterations=40, seed=3), device="cpu")
    a = encode_image(crop, settings).data
    b = encode_image(crop, settings).data
    assert a == b
    other = EncodeSettings(gaussians=(20, 10), train=TrainSettings(iterations=40, seed=4), device="cpu")
    assert encode_image(crop, other).data != a


def test_resolution_scalability(encoded, crop):
    big = decode_image(encoded.data, scale=2.0)
    assert big.shape == (64, 96, 3)
    # downsampling the 2x render lands near the 1x render
    small = big.reshape(32, 2, 48, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert psnr(np.round(small).astype(np.uint8), decode_image(encoded.data)) > 25.0


def test_bad_layer_requests(encoded):
    with pytest.raises(GsvcError):
        decode_image(encoded.data, layers=0)
    with pytest.raises(GsvcError, match="cannot decode 4"):
        decode_image(encoded.data, layers=4)


def _backends():
    out = [("cpu", "torch"), ("cpu", "numba")]
    if torch.cuda.is_available():
        out.append(("cuda", "torch"))
    return out


@pytest.mark.parametrize("device,backend", _backends())
def test_every_backend_decodes_the_same_picture(encoded, device, backend):
    reference = decode_image(encoded.data, backend="torch")
    got = decode_image(encoded.data, device=device, backend=backend)
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1
