"""Video streams: I/P frames, layers, the stream order, the CLI, a golden stream."""
from __future__ import annotations

import io
import json
import struct
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from bitstream import StreamError, iter_chunks
from bitstream.layout import LayerChunk
from gsvc.cli import main
from gsvc.decoder import decode_video, open_video, render_layers, stream_info
from gsvc.encoder import EncodeSettings
from gsvc.errors import GsvcError
from gsvc.media import read_image, read_video_frames, video_output
from gsvc.metrics import psnr
from gsvc.quantize import VIDEO_QUANT, QuantSettings, dequantize
from gsvc.train import TrainSettings
from gsvc.video_encoder import CodingStructure, encode_video

from conftest import synthetic_clip
from golden import DATA, FILES, tiny_video

SETTINGS = EncodeSettings(gaussians=(40, 20, 20), train=TrainSettings(iterations=240, seed=0), device="cpu")
#: P-frames train 30% of the I-frame iterations here: the tiny clip moves fast
STRUCTURE = CodingStructure(gop=30, p_share=0.3)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip()


@pytest.fixture(scope="module")
def encoded(clip):
    out = io.BytesIO()
    reports = []
    summary = encode_video(iter(clip), out, clip.shape[2], clip.shape[1], Fraction(12), SETTINGS, STRUCTURE,
                           on_frame=reports.append)
    assert summary.frames == len(reports) == len(clip)
    assert summary.by_type["I"].frames + summary.by_type["P"].frames == len(clip)
    return out.getvalue(), reports


def test_round_trip_at_every_layer(encoded, clip):
    data, _ = encoded
    means = []
    for k in (1, 2, 3):
        frames = decode_video(data, layers=k)
        assert len(frames) == len(clip)
        assert all(f.shape == clip[0].shape and f.dtype == np.uint8 for f in frames)
        means.append(np.mean([psnr(a, b) for a, b in zip(frames, clip)]))
    assert means[0] > 22.0, means
    assert means[0] < means[1] < means[2], means


def test_frame_types_cut_and_sizes(encoded):
    data, reports = encoded
    info = stream_info(data)
    types = [f["type"] for f in info["frame_list"]]
    assert types[0] == "I"
    assert types[5] == "I", types  # the scene cut
    assert reports[5].cut
    assert [r.bytes for r in reports] == [f["bytes"] for f in info["frame_list"]]
    p = [sum(f["bytes"]) for f in info["frame_list"] if f["type"] == "P"]
    i = [sum(f["bytes"]) for f in info["frame_list"] if f["type"] == "I"]
    assert len(p) >= 4, types
    assert np.mean(p) < np.mean(i), (p, i)


def test_encoder_view_is_the_decoders(encoded, clip):
    """The PSNR the encoder reported is that of the decoded frames (the reference is the
    decoded frame, no drift); and k layers decoded alone equal layers 1..k of the full
    decode (layer l is predicted only from layer l)."""
    data, reports = encoded
    full = decode_video(data)
    for report, frame, source in zip(reports, full, clip):
        assert report.psnr == pytest.approx(psnr(frame, source), abs=1e-9)
    with open_video(data) as reader:
        steps = reader.stream.header.steps
        layered = [q for _, q in reader.models()]
    for k in (1, 2):
        alone = decode_video(data, layers=k)
        for q, frame in zip(layered, alone):
            np.testing.assert_array_equal(
                render_layers([dequantize(x, steps) for x in q[:k]], 64, 48, 1.0, __import__("torch").device("cpu"),
                              "numba"), frame)


def _layer_ranges(data: bytes) -> dict[int, list[tuple[int, int]]]:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for chunk in iter_chunks(io.BytesIO(data[10:]), 10):
        if chunk.type == b"LAYR":
            layer = LayerChunk.unpack(chunk.payload).layer
            ranges.setdefault(layer, []).append((chunk.offset, chunk.offset + chunk.size))
    return ranges


def test_decoding_k_layers_reads_no_byte_of_higher_layers(encoded):
    data, _ = encoded

    class Recording(io.BytesIO):
        def __init__(self, b):
            super().__init__(b)
            self.reads: list[tuple[int, int]] = []

        def read(self, n=-1):
            start = self.tell()
            out = super().read(n)
            self.reads.append((start, start + len(out)))
            return out

    ranges = _layer_ranges(data)
    assert sorted(ranges) == [1, 2, 3] and len(ranges[1]) == 8
    for k in (1, 2):
        src = Recording(data)
        with open_video(src, layers=k) as reader:
            frames = list(reader.frames())
        assert len(frames) == 8
        skipped = [r for layer in range(k + 1, 4) for r in ranges[layer]]
        for a, b in src.reads:
            for lo, hi in skipped:
                assert b <= lo or a >= hi, ((a, b), (lo, hi))
        covered = np.zeros(len(data), bool)
        for a, b in src.reads:
            covered[a:b] = True
        assert covered.sum() == stream_info(data)["layers"][k - 1]["cumulative_bytes"]


def test_info_json_keys(encoded):
    data, _ = encoded
    info = stream_info(data)
    assert json.loads(json.dumps(info)) == info
    for key in ("format_version", "kind", "width", "height", "layers", "layers_encoded", "total_bytes", "bpp",
                "coder", "quantizer_steps", "frames", "fps", "gop", "frame_list"):
        assert key in info, key
    assert info["kind"] == "video" and (info["width"], info["height"]) == (64, 48)
    assert info["frames"] == 8 and info["fps"] == 12.0 and info["gop"] == 30
    assert info["total_bytes"] == len(data)
    assert [f["index"] for f in info["frame_list"]] == list(range(8))
    for key in ("index", "type", "bytes"):
        assert all(key in f for f in info["frame_list"])
    per_layer = np.sum([f["bytes"] for f in info["frame_list"]], axis=0)
    assert [l["bytes"] for l in info["layers"]] == per_layer.tolist()
    assert info["header_bytes"] + sum(per_layer) == len(data)
    # a video keeps its own, finer steps (P-frames code changes in them), not a picture's
    assert list(info["quantizer_steps"].values()) == list(VIDEO_QUANT.steps()) != list(QuantSettings().steps())


def test_same_input_gives_identical_bytes(clip):
    settings = EncodeSettings(gaussians=(10, 5), train=TrainSettings(iterations=30, seed=1), device="cpu")
    a, b = io.BytesIO(), io.BytesIO()
    encode_video(iter(clip[:3]), a, 64, 48, Fraction(12), settings, STRUCTURE)
    encode_video(iter(clip[:3]), b, 64, 48, Fraction(12), settings, STRUCTURE)
    assert a.getvalue() == b.getvalue()


def test_gop_1_is_all_intra(clip):
    settings = EncodeSettings(gaussians=(10, 5), train=TrainSettings(iterations=20), device="cpu")
    out = io.BytesIO()
    encode_video(iter(clip[:3]), out, 64, 48, Fraction(12), settings, CodingStructure(gop=1))
    assert [f["type"] for f in stream_info(out.getvalue())["frame_list"]] == ["I", "I", "I"]


def test_corruption_and_truncation_are_caught(encoded):
    data, _ = encoded
    rng = np.random.default_rng(1)
    for i in sorted(set(rng.integers(0, len(data), 120).tolist())):
        bad = bytearray(data)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises((StreamError, GsvcError)):
            decode_video(bytes(bad))
    for n in sorted(set(rng.integers(12, len(data) - 1, 40).tolist())):
        with pytest.raises((StreamError, GsvcError)):
            decode_video(data[:n])


# --- golden -----------------------------------------------------------------------

@pytest.mark.parametrize("coder", sorted(FILES))
def test_golden_video_bytes_and_pixels(coder):
    name = FILES[coder][1]
    golden = (DATA / name).read_bytes()
    assert tiny_video(coder) == golden
    assert golden[10:22] == struct.pack(">I", 52) + b"GHDR" + b"\x01\x00\x00\x00"  # kind 1, width 16
    info = stream_info(golden)
    assert [f["type"] for f in info["frame_list"]] == ["I", "P", "P"]
    assert info["fps"] == pytest.approx(30000 / 1001)
    expected = read_image(DATA / name.replace(".gsv", ".png"))
    got = np.concatenate(decode_video(golden, backend="torch"), axis=0)
    np.testing.assert_array_equal(got, expected)
    with open_video(golden) as reader:
        counts = [[len(q) for q in layers] for _, layers in reader.models()]
    assert counts == [[6, 3], [6, 3], [6, 3]]  # one dropped and one added in frame 1


# --- command line -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_stream(tmp_path_factory, clip_file):
    d = tmp_path_factory.mktemp("vcli")
    code, out, err = run("encode", clip_file, "-o", d / "clip.gsv", "--gaussians", "30,15", "--iterations", "120",
                         "--device", "cpu")
    assert code == 0, err
    assert "8 frames" in err
    return d


def test_cli_decode_formats_keep_frames_and_rate(cli_stream):
    d = cli_stream
    exact = decode_video(d / "clip.gsv")
    code, _, err = run("decode", d / "clip.gsv", "-o", d / "out.mkv")
    assert code == 0, err
    frames, fps = read_video_frames(d / "out.mkv")
    assert fps == 12 and len(frames) == 8
    for a, b in zip(frames, exact):
        np.testing.assert_array_equal(a, b)  # FFV1 is lossless
    code, _, err = run("decode", d / "clip.gsv", "--layers", "1", "-o", d / "l1.mp4")
    assert code == 0, err
    frames, fps = read_video_frames(d / "l1.mp4")
    assert fps == 12 and len(frames) == 8
    l1 = decode_video(d / "clip.gsv", layers=1)
    # H.264 at high quality: within 1 dB of what 4:2:0 chroma alone costs these frames
    import av

    def yuv420(rgb):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        return f.reformat(format="rgb24").to_ndarray()

    ideal = np.mean([psnr(yuv420(b), b) for b in l1])
    assert np.mean([psnr(a, b) for a, b in zip(frames, l1)]) > ideal - 1.0
    (d / "frames").mkdir()
    code, _, err = run("decode", d / "clip.gsv", "--layers", "1", "-o", d / "frames" / "f_%04d.png")
    assert code == 0, err
    names = sorted(p.name for p in (d / "frames").iterdir())
    assert names == [f"f_{i:04d}.png" for i in range(1, 9)]
    np.testing.assert_array_equal(read_image(d / "frames" / "f_0003.png"), l1[2])


def test_cli_info_and_eval(cli_stream, clip_file):
    d = cli_stream
    code, out, _ = run("info", d / "clip.gsv")
    assert code == 0 and "8 frames" in out and "video" in out
    code, out, _ = run("info", d / "clip.gsv", "--json")
    info = json.loads(out)
    assert info["kind"] == "video" and len(info["frame_list"]) == 8
    code, out, err = run("eval", d / "clip.gsv", "--reference", clip_file, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [r["layers"] for r in result["layers"]] == [1, 2]
    exact = decode_video(d / "clip.gsv", layers=2)
    expected = np.mean([psnr(a, b) for a, b in zip(exact, synthetic_clip())])
    assert result["layers"][1]["psnr"] == pytest.approx(expected, abs=1e-9)
    assert result["layers"][1]["worst_psnr"] <= expected
    assert result["layers"][-1]["bytes"] == (d / "clip.gsv").stat().st_size


def test_cli_video_errors(cli_stream):
    d = cli_stream
    code, _, err = run("decode", d / "clip.gsv", "-o", d / "x.png")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "pattern" in err
    assert not (d / "x.png").exists()
    code, _, err = run("decode", d / "clip.gsv", "--layers", "3", "-o", d / "x.mkv")
    assert code == 1 and "cannot decode 3" in err and not (d / "x.mkv").exists()
    bad = bytearray((d / "clip.gsv").read_bytes())
    bad[len(bad) // 2] ^= 0x10
    (d / "bad.gsv").write_bytes(bytes(bad))
    code, _, err = run("decode", d / "bad.gsv", "-o", d / "bad.mkv")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (d / "bad.mkv").exists()


def test_still_image_stays_an_image(tmp_path, crop):
    from gsvc.media import write_image

    write_image(tmp_path / "a.png", crop)
    code, _, err = run("encode", tmp_path / "a.png", "-o", tmp_path / "a.gsv", "--gaussians", "10,5",
                       "--iterations", "10", "-q")
    assert code == 0, err
    assert stream_info(tmp_path / "a.gsv")["kind"] == "image"
    assert list(stream_info(tmp_path / "a.gsv")["quantizer_steps"].values()) == list(QuantSettings().steps())


def test_real_clip_tree(shared_data, tmp_path):
    src = shared_data / "video" / "tree.avi"
    if not src.exists():
        pytest.skip("tree.avi is absent")
    code, _, err = run("encode", src, "-o", tmp_path / "t.gsv", "--size", "80x60", "--frames", "4",
                       "--gaussians", "60,30", "--iterations", "150", "--device", "cpu")
    assert code == 0, err
    info = stream_info(tmp_path / "t.gsv")
    assert info["frames"] == 4 and (info["width"], info["height"]) == (80, 60)
    assert info["fps"] == pytest.approx(1000000 / 66667)
    types = [f["type"] for f in info["frame_list"]]
    assert types[0] == "I" and "P" in types, types
    p = [sum(f["bytes"]) for f in info["frame_list"] if f["type"] == "P"]
    assert max(p) < sum(info["frame_list"][0]["bytes"])
    code, out, err = run("eval", tmp_path / "t.gsv", "--reference", src, "--json")
    assert code == 0, err
    rows = json.loads(out)["layers"]
    assert rows[0]["psnr"] < rows[1]["psnr"] and rows[0]["psnr"] > 20


def test_audio_is_noted(shared_data, tmp_path):
    src = shared_data / "video" / "Megamind.avi"
    if not src.exists():
        pytest.skip("Megamind.avi is absent")
    code, _, err = run("encode", src, "-o", tmp_path / "m.gsv", "--size", "48x0", "--frames", "2", "--start", "1",
                       "--gaussians", "12,6", "--iterations", "10", "-q")
    assert code == 0, err
    assert "audio" in err and len([l for l in err.splitlines() if "audio" in l]) == 1
    info = stream_info(tmp_path / "m.gsv")
    assert info["frames"] == 2 and info["width"] == 48 and info["height"] == 35


def test_useless_gaussians_are_dropped_and_replaced(clip):
    """A reference with Gaussians that draw nothing (off the picture, zero colour):
    the P-frame drops them, places as many new ones, and the decoder agrees."""
    import torch

    from bitstream import Header
    from bitstream.layout import KIND_VIDEO
    from bitstream.video import VideoHeader, VideoWriter
    from gsvc.model import GaussianLayer
    from gsvc.quantize import quantize_ints
    from gsvc.video_encoder import _draws_something, _Encoder
    from gsvc.layer_codec import sort_intra

    layer = GaussianLayer(torch.tensor([[10.0, 10.0], [500.0, 10.0], [30.0, 20.0], [40.0, 30.0]]),
                          torch.tensor([[1.0, 1.0, 0.0]] * 4),
                          torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.001, 0.0, -0.002], [0.3, 0.2, 0.1]]))
    assert _draws_something(layer, 64, 48, 1 / 128).tolist() == [True, False, False, True]

    settings = EncodeSettings(gaussians=(4,), train=TrainSettings(iterations=40), device="cpu")
    enc = _Encoder(settings, CodingStructure(refresh_share=1.0, cut_psnr=0.0, cut_drop_db=99), 64, 48)
    enc.reference = [sort_intra(quantize_ints(layer, enc.steps))]
    enc.gop_psnr = 10.0
    enc.since_i = 1
    out = io.BytesIO()
    coder = settings.coder
    writer = VideoWriter(out, Header(64, 48, (4,), enc.steps, kind=KIND_VIDEO, coder=coder), VideoHeader(0, 12, 1, 30))
    from gsvc.layer_codec import encode_intra
    payload, q0 = encode_intra(enc.reference[0], coder, geometric=True)
    writer.write_frame(0, [LayerChunk(1, 4, payload)])
    ftype, chunks, report = enc.frame(1, clip[1])
    assert report.type == "P"
    writer.write_frame(ftype, chunks)
    writer.finish()
    with open_video(out.getvalue()) as reader:
        decoded = [q for _, q in reader.models()]
    np.testing.assert_array_equal(decoded[1][0], enc.reference[0])
    assert len(decoded[1][0]) == 4
    # the two dropped Gaussians are gone: the two kept ones lead, two new ones follow
    kept = [tuple(r[:2]) for r in decoded[1][0][:2]]
    assert all(abs(x * enc.steps[0]) < 64 for x, _ in kept)


def test_frames_stream_through_the_encoder(clip):
    """Frames are pulled one at a time and written as they are coded: no read-ahead,
    nothing held back, so memory does not grow with the video's length."""
    pulled = []

    def frames():
        for i, f in enumerate(clip[:4]):
            pulled.append(i)
            yield f

    out = io.BytesIO()
    seen = []
    settings = EncodeSettings(gaussians=(10, 5), train=TrainSettings(iterations=20), device="cpu")
    encode_video(frames(), out, 64, 48, Fraction(12), settings, STRUCTURE,
                 on_frame=lambda r: seen.append((r.index, len(pulled), out.tell())))
    assert [s[1] for s in seen] == [1, 2, 3, 4]
    sizes = [s[2] for s in seen]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_data_after_the_last_frame_is_an_error(encoded):
    from bitstream import write_chunk

    data, _ = encoded
    extra = io.BytesIO()
    write_chunk(extra, b"LAYR", b"\x00" * 12)
    with pytest.raises(StreamError, match="after the last frame"):
        decode_video(data + extra.getvalue())
    ancillary = io.BytesIO()
    write_chunk(ancillary, b"tEXt", b"comment")
    assert len(decode_video(data + ancillary.getvalue())) == 8


def test_frame_pattern_outputs_are_not_overwritten(cli_stream):
    d = cli_stream
    (d / "pat").mkdir(exist_ok=True)
    (d / "pat" / "g_0005.png").write_bytes(b"mine")
    code, _, err = run("decode", d / "clip.gsv", "-o", d / "pat" / "g_%04d.png")
    assert code == 1 and "g_0005.png already exists" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (d / "pat").iterdir()) == ["g_0005.png"]
    assert (d / "pat" / "g_0005.png").read_bytes() == b"mine"
    code, _, err = run("decode", d / "clip.gsv", "-o", d / "pat" / "g_%04d.png", "-y")
    assert code == 0, err
    assert len(list((d / "pat").iterdir())) == 8


def test_size_targets_are_refused_for_video(clip_file, tmp_path):
    code, _, err = run("encode", clip_file, "-o", tmp_path / "clip.gsv", "--bpp", "0.2,0.4")
    assert code != 0 and "apply to pictures" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "clip.gsv").exists()


# --- P-frames' rate term ---------------------------------------------------------------

def test_p_frames_price_bits_against_their_gops_distortion(clip):
    """P-frames price each layer's bits at the MSE of the GOP's I-frame drawn from layers
    1..l (``_Encoder.rate_mse``); a steeper slope buys fewer P-frame bytes; a black
    I-frame anchors nothing (its zero MSE would make every bit free) and its first
    P-frame anchors the GOP instead."""
    from gsvc.metrics import mse
    from gsvc.video_encoder import _Encoder

    def p_bytes(slope: float) -> tuple[int, list[float]]:
        # no re-coding as I-frames: at the steep slope a P-frame may fall 3 dB below its I-frame
        enc = _Encoder(SETTINGS, CodingStructure(p_share=0.3, rate_slope=slope, cut_drop_db=99), 64, 48)
        enc.frame(0, clip[0])
        anchor = enc.rate_mse
        total = 0
        for t in (1, 2, 3):
            ftype, chunks, report = enc.frame(t, clip[t])
            assert report.type == "P"
            total += sum(len(c.data) for c in chunks)
        return total, anchor

    free, anchor = p_bytes(0.0)
    dear, again = p_bytes(24.0)
    assert anchor == again and len(anchor) == 3
    assert anchor[0] > anchor[1] > anchor[2] > 0, anchor  # each layer adds detail
    assert dear < 0.8 * free, (dear, free)

    enc = _Encoder(SETTINGS, CodingStructure(p_share=0.3, cut_psnr=0.0, cut_drop_db=99), 64, 48)
    black = np.zeros_like(clip[0])
    enc.frame(0, black)
    assert enc.rate_mse is None
    enc.frame(1, clip[1])  # a fade-in: coded as a P-frame (no cut here), which anchors
    decoded = enc._render(enc.reference)
    assert enc.rate_mse is not None and enc.rate_mse[-1] == pytest.approx(mse(decoded, clip[1]))


def test_p_frame_rate_and_shrink_on_the_cpu_match_their_tensor_form():
    """The P-frames' rate proxy and proximal step run as numpy on the CPU; they must be
    the tensor expressions of the other devices, values, gradients and steps."""
    import torch

    from gsvc.model import GaussianLayer
    from gsvc.quantize import QuantSettings
    from gsvc.video_encoder import _rate_bits, _shrink_towards

    g = torch.Generator().manual_seed(0)
    steps = torch.tensor(QuantSettings().steps(), dtype=torch.float32)
    base = torch.round(torch.randn(40, 8, generator=g) * 20)

    def layer():
        cols = (torch.cat([base, base[:10]]) + torch.randint(-3, 4, (50, 8), generator=torch.Generator().manual_seed(1)) * 0.5) * steps
        cols[:5] = base[:5] * steps  # unchanged values: the proxy's kink
        return GaussianLayer(*(cols[:, a:b].clone().requires_grad_() for a, b in ((0, 2), (2, 5), (5, 8))))

    fast, slow = layer(), layer()
    value = _rate_bits(base, steps)(fast)
    expected = 2.0 * (torch.cat(slow.tensors(), dim=1)[:40] / steps - base).abs().sum()
    (value * 3).backward()
    (expected * 3).backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6) and value.item() > 0
    for a, b in zip(fast.tensors(), slow.tensors()):
        assert torch.equal(a.grad, b.grad)
    assert float(fast.means.grad[40:].abs().sum()) == 0.0  # new Gaussians cost no rate here
    fast, slow = layer(), layer()
    with torch.no_grad():
        _shrink_towards(base, steps, 0.2)(fast, 0.7)
        for t, (lo, hi) in zip(slow.tensors(), ((0, 2), (2, 5), (5, 8))):
            b, st = base[:, lo:hi], steps[lo:hi]
            t[:40] = (b + torch.nn.functional.softshrink(t[:40] / st - b, 0.2 * 0.7)) * st
    for a, b in zip(fast.tensors(), slow.tensors()):
        assert torch.equal(a, b)
    assert not torch.equal(fast.colors, layer().colors)  # the step moved something


def test_black_frames_encode_and_decode_black(clip):
    """A frame black all over, as an I-frame (a clip that opens on black) or as a P-frame
    after it, keeps one Gaussian per layer (a layer chunk holds >= 1: it used to write a
    count of 0 and fail) and decodes black at every layer, after a cut to black too; an
    all-black clip encodes."""
    from conftest import encode_clip

    black = np.zeros_like(clip[0])
    frames = np.stack([black, black, clip[0], clip[1], black, black])
    data, reports = encode_clip(frames, SETTINGS, STRUCTURE)
    assert [r.type for r in reports][:2] == ["I", "P"]
    for k in (1, 2, 3):
        decoded = decode_video(data, layers=k)
        assert len(decoded) == len(frames)
        assert not any(decoded[t].any() for t in (0, 1, 4, 5)), k
    assert psnr(decode_video(data)[3], clip[1]) > 20
    with open_video(data) as reader:
        counts = [[len(x) for x in q] for _, q in reader.models()]
    assert all(n >= 1 for f in counts for n in f), counts
    data, reports = encode_clip(frames[:2], SETTINGS, STRUCTURE)
    assert [r.type for r in reports] == ["I", "P"] and not any(f.any() for f in decode_video(data))


def test_a_still_shot_codes_its_p_frames_as_no_change(clip):
    """A frame repeated decodes to its I-frame at every layer, every P-frame layer the
    reference left as it is (every Gaussian kept, every difference zero, nothing new)."""
    from conftest import encode_clip

    still = np.stack([clip[2]] * 4)
    data, reports = encode_clip(still, SETTINGS, STRUCTURE)
    assert [r.type for r in reports] == ["I", "P", "P", "P"]
    for k in (1, 2, 3):
        frames = decode_video(data, layers=k)
        assert all(np.array_equal(f, frames[0]) for f in frames[1:]), k
    with open_video(data) as reader:
        parts = list(reader.layer_parts())
    for _, _, layer_parts in parts[1:]:
        assert all(p.keep.all() and not p.diff.any() and not len(p.new) for p in layer_parts)


def test_p_frame_layers_choose_no_change_where_the_fit_does_not_pay(clip):
    """``_Encoder._modes``: per layer, the fit's code or no change, whichever lowers
    distortion plus bits. Changes that draw the frame worse lose to no change at every
    layer; the same changes win where the new frame is what they draw, and a layer
    whose fit is the reference itself keeps the shorter code."""
    from gsvc.layer_codec import code_predicted
    from gsvc.video_encoder import _Encoder

    enc = _Encoder(SETTINGS, STRUCTURE, 64, 48)
    enc.frame(0, clip[2])
    rng = np.random.default_rng(0)
    trained, unchanged = [], []
    for q in enc.reference:
        every = np.ones(len(q), bool)
        # moved and reshaped by up to 3 steps, recoloured by up to 9 (each layer's changes
        # draw a visibly different frame, however faint the layer)
        noisy = q + rng.integers(-3, 4, size=q.shape) * np.where(np.arange(8) < 5, 1, 3)
        trained.append((code_predicted(q, every, noisy, np.zeros((0, 8), np.int64), SETTINGS.coder), 1))
        unchanged.append((code_predicted(q, every, q, np.zeros((0, 8), np.int64), SETTINGS.coder), 1))
    assert all(len(u.payload) < len(t.payload) for (t, _), (u, _) in zip(trained, unchanged))
    chosen = enc._modes(trained, unchanged, clip[2])
    assert all(c is u for c, u in zip(chosen, unchanged))
    drawn = enc._render([code.q for code, _ in trained])  # a new frame: what the changes draw
    chosen = enc._modes(trained, unchanged, drawn)
    assert chosen[-1] is trained[-1] and all(c is t for c, t in zip(chosen, trained)), [
        c is t for c, t in zip(chosen, trained)]
    same = [unchanged[0]] + trained[1:]
    assert enc._modes(same, unchanged, drawn)[0] is unchanged[0]


def test_a_frame_pattern_is_a_video_input(cli_stream):
    """What decode -o f_%04d.png writes, encode and eval read back (ffmpeg's image2: the
    first number 0..4, 25 fps unless --fps says otherwise)."""
    d = cli_stream
    (d / "seq").mkdir()
    code, _, err = run("decode", d / "clip.gsv", "-o", d / "seq" / "f_%04d.png")
    assert code == 0, err
    code, out, err = run("eval", d / "clip.gsv", "--reference", d / "seq" / "f_%04d.png", "--json")
    assert code == 0, err
    assert json.loads(out)["layers"][-1]["psnr"] >= 99  # the decoded frames themselves
    code, _, err = run("encode", d / "seq" / "f_%04d.png", "--fps", "12", "--gaussians", "12,6", "--iterations", "5",
                       "-q", "--device", "cpu")
    assert code == 0, err
    info = json.loads(run("info", d / "seq" / "f.gsv", "--json")[1])  # the number field left out of the name
    assert (info["kind"], info["frames"], info["fps"]) == ("video", 8, 12.0)
    from gsvc.media import probe_video, read_video

    pattern = probe_video(d / "seq" / "f_%04d.png", pattern_fps=Fraction(10))
    later = list(read_video(pattern, start=0.2))  # from the third frame at 10 fps
    assert len(later) == 6
    np.testing.assert_array_equal(later[0], read_image(d / "seq" / "f_0003.png"))


def test_encode_never_writes_onto_a_frame_of_its_pattern(cli_stream):
    d = cli_stream
    (d / "own").mkdir()
    assert run("decode", d / "clip.gsv", "-o", d / "own" / "f_%04d.png")[0] == 0
    before = (d / "own" / "f_0002.png").read_bytes()
    code, _, err = run("encode", d / "own" / "f_%04d.png", "-o", d / "own" / "f_0002.png", "-y", "--iterations", "2",
                       "-q", "--device", "cpu")
    assert code == 1 and "is the input file" in err, err
    assert (d / "own" / "f_0002.png").read_bytes() == before


def test_fps_is_for_frame_patterns(cli_stream, clip_file):
    code, _, err = run("encode", clip_file, "-o", cli_stream / "fps.gsv", "--fps", "30", "--gaussians", "8,4",
                       "--iterations", "2", "--frames", "2", "-q", "--device", "cpu")
    assert code == 0 and "--fps applies to frame-pattern input" in err, err
    info = json.loads(run("info", cli_stream / "fps.gsv", "--json")[1])
    assert info["fps"] == 12.0  # the video's own rate
