"""Sub-streams and partial downloads: `gsvc extract`, and files cut anywhere."""
from __future__ import annotations

import io
import json
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from bitstream import StreamError
from bitstream.extract import extract
from gsvc.cli import main
from gsvc.codec import EncodeSettings, decode_image, encode_image
from gsvc.decoder import decode_video, open_video, stream_info
from gsvc.errors import GsvcError
from gsvc.train import TrainSettings
from gsvc.video_encoder import CodingStructure, encode_video

from conftest import synthetic_clip
from golden import DATA


def run(*args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def image_stream(crop) -> bytes:
    settings = EncodeSettings(gaussians=(12, 6, 6), train=TrainSettings(iterations=30, seed=0), device="cpu")
    return encode_image(crop, settings).data


@pytest.fixture(scope="module")
def video_stream() -> bytes:
    """7 frames in GOPs of 3: I P P I P P I."""
    clip = synthetic_clip(frames=7, cut_at=None, width=24, height=16)
    out = io.BytesIO()
    settings = EncodeSettings(gaussians=(10, 5), train=TrainSettings(iterations=20, seed=0), device="cpu")
    encode_video(iter(clip), out, 24, 16, Fraction(10), settings, CodingStructure(gop=3))
    return out.getvalue()


# ------------------------------------------------------------------ extract

@pytest.mark.parametrize("k", [1, 2, 3])
def test_image_extract_decodes_to_the_same_pixels(image_stream, k):
    sub, got = extract(image_stream, layers=k)
    assert (got.layers, got.layers_source) == (k, 3)
    info = stream_info(sub)
    assert info["layers_encoded"] == k and info["complete"]
    assert info["total_bytes"] == len(sub)
    assert len(sub) < len(image_stream) or k == 3
    np.testing.assert_array_equal(decode_image(sub), decode_image(image_stream, layers=k))
    if k == 3:
        assert sub == image_stream  # everything kept: the very same bytes


def test_video_extract_layers_and_whole_gops(video_stream):
    types = [f["type"] for f in stream_info(video_stream)["frame_list"]]
    assert types == ["I", "P", "P", "I", "P", "P", "I"]
    full_l1 = decode_video(video_stream, layers=1)
    sub, got = extract(video_stream, layers=1, first=4, last=5)  # frame 4 is a P-frame: starts at 3
    assert (got.first_frame, got.frames, got.layers) == (3, 3, 1)
    info = stream_info(sub)
    assert info["frames"] == 3 and info["layers_encoded"] == 1
    assert [f["type"] for f in info["frame_list"]] == ["I", "P", "P"]
    assert [f["index"] for f in info["frame_list"]] == [0, 1, 2]
    for a, b in zip(decode_video(sub), full_l1[3:6]):
        np.testing.assert_array_equal(a, b)
    everything, _ = extract(video_stream)
    assert everything == video_stream


def test_extract_refusals(image_stream, video_stream):
    with pytest.raises(StreamError, match="holds 3"):
        extract(image_stream, layers=4)
    with pytest.raises(StreamError, match="video streams only"):
        extract(image_stream, first=2)
    with pytest.raises(StreamError, match="past the end"):
        extract(video_stream, first=7)
    with pytest.raises(StreamError, match="signature"):
        extract(b"not a stream at all, really")


def test_extract_cli(tmp_path, image_stream, video_stream):
    (tmp_path / "v.gsv").write_bytes(video_stream)
    code, _, err = run("extract", tmp_path / "v.gsv", "--layers", "1", "--frames", "4-", "-o", tmp_path / "e.gsv")
    assert code == 0, err
    assert "starts at its GOP's I-frame, frame 3" in err and "frames 3-6" in err
    code, out, _ = run("info", tmp_path / "e.gsv", "--json")
    assert json.loads(out)["frames"] == 4
    code, _, err = run("extract", tmp_path / "v.gsv", "-o", tmp_path / "v.gsv", "-y")
    assert code == 1 and "is the input file" in err
    code, _, err = run("extract", tmp_path / "v.gsv", "--frames", "x-2", "-o", tmp_path / "f.gsv")
    assert code == 2
    code, out, err = run("extract", "-", "--layers", "2", "-o", "-", input=image_stream)
    assert code == 0, err


# ------------------------------------------------------------------ partial streams

def test_image_cut_at_every_byte(image_stream):
    """Every prefix decodes its complete layers (exactly as --layers k) or fails in one clear line."""
    info = stream_info(image_stream)
    ends = [row["cumulative_bytes"] for row in info["layers"]]  # file bytes up to each layer's end
    header = info["header_bytes"]
    expected = {k: decode_image(image_stream, layers=k) for k in (1, 2, 3)}
    notes = []
    for n in range(len(image_stream) + 1):
        prefix = image_stream[:n]
        complete = sum(1 for e in ends if e <= n)
        if n < ends[0]:
            with pytest.raises((StreamError, GsvcError)) as e:
                decode_image(prefix, partial=True)
            assert "\n" not in str(e.value)
            if n >= header:
                assert "cut short inside layer 1" in str(e.value) or "no layers" in str(e.value)
            continue
        got = decode_image(prefix, partial=True, notice=notes.append)
        np.testing.assert_array_equal(got, expected[complete])
        part = stream_info(prefix)
        assert len(part["layers"]) == complete and part["layers_encoded"] == 3
        assert part["complete"] == (n == len(image_stream))
        if complete < 3:
            with pytest.raises(GsvcError, match="cannot decode 3"):
                decode_image(prefix, layers=3, partial=True)
    assert notes and all("cut short" in line for line in notes)


def test_strict_reading_still_refuses_a_cut(image_stream):
    with pytest.raises(StreamError, match="truncated"):
        decode_image(image_stream[:-3])


def test_video_cut_at_every_byte(video_stream):
    full = {k: decode_video(video_stream, layers=k) for k in (1, 2)}
    # every byte of the headers and of the first frame, then ~100 cuts spread over the rest
    # and every chunk boundary (where off-by-one errors live)
    info = stream_info(video_stream)
    first_frame_end = info["header_bytes"] + sum(info["frame_list"][0]["bytes"])
    cuts = set(range(first_frame_end + 2)) | set(range(0, len(video_stream) + 1, max(1, len(video_stream) // 100)))
    end = info["header_bytes"]
    for frame in info["frame_list"]:
        end += sum(frame["bytes"])
        cuts |= {end - 1, end, end + 1}
    for n in sorted(c for c in cuts if c <= len(video_stream)):
        prefix = video_stream[:n]
        for k in (1, 2):
            try:
                with open_video(prefix, k, partial=True) as reader:
                    frames = [f.rgb for f in reader.frames()]
                    cut = reader.cut_at
            except (StreamError, GsvcError) as e:
                assert "\n" not in str(e)
                continue
            assert cut is None or cut == len(frames)
            for a, b in zip(frames, full[k]):  # every frame decoded is the right one
                np.testing.assert_array_equal(a, b)


def test_cli_decodes_a_partial_download(tmp_path, image_stream, video_stream):
    (tmp_path / "part.gsv").write_bytes(image_stream[: stream_info(image_stream)["layers"][1]["cumulative_bytes"] + 5])
    code, _, err = run("decode", tmp_path / "part.gsv", "-o", tmp_path / "part.png")
    assert code == 0 and "2 complete layers of 3" in err
    code, out, _ = run("info", tmp_path / "part.gsv")
    assert code == 0 and "2 of 3 layers" in out and "cut short" in out
    code, _, err = run("decode", tmp_path / "part.gsv", "--layers", "3", "-o", tmp_path / "p3.png")
    assert code == 1 and "holds 2 complete layers" in err and not (tmp_path / "p3.png").exists()
    (tmp_path / "pv.gsv").write_bytes(video_stream[: len(video_stream) * 2 // 3])
    code, _, err = run("decode", tmp_path / "pv.gsv", "-o", tmp_path / "pv.mkv")
    assert code == 0 and "complete frames of 7" in err
    (tmp_path / "h.gsv").write_bytes(video_stream[:30])
    code, _, err = run("decode", tmp_path / "h.gsv", "-o", tmp_path / "h.mkv")
    assert code == 1 and len(err.strip().splitlines()) == 1 and not (tmp_path / "h.mkv").exists()


def test_a_whole_stream_says_it_is_complete():
    data = (DATA / "tiny_video.gsv").read_bytes()
    info = stream_info(data)
    assert info["complete"] and info["frames"] == info["frames_encoded"] == 3
