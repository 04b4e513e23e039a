"""Hostile streams: every field that lies is refused fast, with a StreamError, in bounded
memory and time (FORMAT.md, "Limits"); a structure-aware fuzz run over the golden streams.

Crafted streams are the golden ones with fields changed through the fuzzer's engine
(benchmarks/fuzz.py), which recomputes chunk CRCs, so every case reaches the parser.
"""
from __future__ import annotations

import io
import math
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import (
    CLEAN,
    DECODED,
    Case,
    fix_frame_sizes,
    make_case,
    pack_stream,
    parse_stream,
    run_targets,
    seed_streams,
    set_field,
)
from bitstream import StreamError, decode_streams
from bitstream.container import read_chunk
from bitstream.entropy import (
    MODEL_CATEGORICAL,
    MODEL_CONSTANT,
    MODEL_BINNED,
    MODEL_GEOMETRIC,
    MODEL_PEAKED,
    MODEL_UNIFORM,
    _choose_model,
    _entropy_decode,
    _Model,
    _read_uvarints,
    _write_uvarints,
    encode_streams,
)
from bitstream.layout import Header, LayerChunk, read_stream
from bitstream.limits import (
    MAX_CATEGORICAL_ALPHABET,
    MAX_CHUNK,
    MAX_FPS,
    MAX_FRAMES,
    MAX_GAUSSIANS,
    MAX_GEOMETRIC_ALPHABET,
    MAX_SIDE,
    MAX_SYMBOL_COUNT,
    MAX_TABLE_FREE_ALPHABET,
    MAX_UNIFORM_ALPHABET,
)
from bitstream.video import VideoHeader
from gsvc.decoder import decode_image, decode_video, stream_info

SEEDS = seed_streams()
GOLDEN_IMAGE, GOLDEN_VIDEO = SEEDS["image"], SEEDS["video"]


def edit(data: bytes, **changes) -> bytes:
    """``data`` with fields set, by fuzz-engine name ("GHDR.width" -> GHDR_width), in every
    chunk holding them; a value may be a list (one per occurrence). CRCs and FRAM sizes follow."""
    pieces = parse_stream(data)
    for key, value in changes.items():
        name = key.replace("_", ".", 1)
        hits = [(p, f) for p in pieces for f in p.fields if f.name == name]
        assert hits, name
        values = value if isinstance(value, list) else [value] * len(hits)
        for (piece, f), v in zip(hits, values):
            set_field(piece, f, v)
    fix_frame_sizes(pieces)
    return pack_stream(pieces)


def refused(fn, *args, match: str | None = None, **kwargs) -> StreamError:
    """Assert ``fn`` raises StreamError within 1 s and 4 MB of Python allocations."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(StreamError, match=match) as info:
            fn(*args, **kwargs)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 4 << 20, peak
    return info.value


def descriptor(kind: int, lo: int, size: int) -> bytes:
    return struct.pack(">BiI", kind, lo, size)


def words(*values: int) -> bytes:
    return struct.pack(f">I{len(values)}I", len(values), *values)


# ------------------------------------------------------------------ header fields
@pytest.mark.parametrize("width,height", [(12000, 12000), (MAX_SIDE + 1, 1), (1, MAX_SIDE + 1),
                                          (MAX_SIDE, MAX_SIDE), (0, 12), (16, 0), (0xFFFFFFFF, 0xFFFFFFFF)])
def test_picture_size_is_checked_before_anything_is_allocated(width, height):
    data = edit(GOLDEN_IMAGE, GHDR_width=width, GHDR_height=height)
    refused(stream_info, data, match="header (width|height|pixels)")
    refused(decode_image, data)
    refused(decode_video, edit(GOLDEN_VIDEO, GHDR_width=width, GHDR_height=height))


@pytest.mark.parametrize("counts", [[1 << 24, 3], [MAX_GAUSSIANS + 1, 3], [MAX_GAUSSIANS, 1], [0, 3]])
def test_gaussian_counts_per_layer_and_in_total(counts):
    # the layer chunks agree with the header, so the header's limit is what refuses them
    data = edit(GOLDEN_IMAGE, GHDR_counts=counts, LAYR_count=counts)
    refused(decode_image, data, match="Gaussian count")
    refused(decode_video, edit(GOLDEN_VIDEO, GHDR_counts=counts), match="Gaussian count")


def test_layer_chunks_cannot_exceed_the_header():
    image = edit(GOLDEN_IMAGE, LAYR_count=[7, 3])
    refused(decode_image, image, match="does not match the header")
    # a P-frame that adds Gaussians beyond the header's count for its layer
    video = edit(GOLDEN_VIDEO, LAYR_count=[6, 3, 7, 3, 6, 3])
    with pytest.raises(StreamError, match="exceeds the header's count"):
        decode_video(video)


@pytest.mark.parametrize("step", [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0 / 16, 1e-30, 2.0**-25,
                                  2.0**15 * 2, 3.4e38])
def test_quantizer_steps_must_be_finite_positive_and_in_range(step):
    data = edit(GOLDEN_IMAGE, GHDR_steps=[step] + [1.0 / 16] * 7)
    refused(stream_info, data, match="quantizer step 0")  # so `info --json` never prints NaN
    refused(decode_image, data)
    refused(decode_video, edit(GOLDEN_VIDEO, GHDR_steps=[1.0] * 7 + [step]), match="quantizer step 7")


@pytest.mark.parametrize("field,value", [("GHDR_nsteps", 7), ("GHDR_layers", 3), ("GHDR_layers", 0),
                                         ("GHDR_coder", 3), ("GHDR_coder", 0), ("GHDR_kind", 2)])
def test_header_structure_fields(field, value):
    refused(decode_image, edit(GOLDEN_IMAGE, **{field: value}))


def test_writers_refuse_what_readers_refuse():
    steps = (1.0 / 16,) * 8
    with pytest.raises(StreamError, match="quantizer step 1"):
        Header(16, 12, (6, 3), (1.0, math.nan) + steps[2:]).pack()
    with pytest.raises(StreamError, match="pixels"):
        Header(12000, 12000, (6, 3), steps).pack()
    with pytest.raises(StreamError, match="quantizer step count"):
        Header(16, 12, (6, 3), steps[:7]).pack()
    with pytest.raises(StreamError, match="Gaussian count"):
        LayerChunk(1, 0, b"").pack()
    with pytest.raises(StreamError, match="frame rate"):
        VideoHeader(1, MAX_FPS + 1, 1, 30).pack()
    with pytest.raises(StreamError, match="GOP"):
        VideoHeader(1, 25, 1, MAX_FRAMES + 1).pack()


# ------------------------------------------------------------------ chunk framing
def test_chunk_length_beyond_the_limit_is_refused_unread():
    data = GOLDEN_IMAGE[:10] + struct.pack(">I", MAX_CHUNK + 1) + b"GHDR" + b"\0" * 64
    refused(read_stream, io.BytesIO(data), match="length of chunk GHDR")


def test_a_chunk_that_lies_about_its_length_costs_only_the_bytes_present(tmp_path):
    data = GOLDEN_IMAGE[:10] + struct.pack(">I", MAX_CHUNK) + b"GHDR" + b"\0" * 64
    refused(read_chunk, io.BytesIO(data[10:]), 10, match="truncated")
    path = tmp_path / "liar.gsv"
    path.write_bytes(data)
    with open(path, "rb") as f:
        f.seek(10)
        refused(read_chunk, f, 10, match="truncated")


# ------------------------------------------------------------------ entropy models
@pytest.mark.parametrize("kind,size", [
    (MODEL_CONSTANT, 2), (MODEL_CONSTANT, 0), (MODEL_UNIFORM, 1), (MODEL_UNIFORM, MAX_UNIFORM_ALPHABET + 1),
    (MODEL_CATEGORICAL, 1), (MODEL_CATEGORICAL, MAX_CATEGORICAL_ALPHABET + 1), (MODEL_CATEGORICAL, 1 << 24),
    (MODEL_GEOMETRIC, 1), (MODEL_GEOMETRIC, MAX_GEOMETRIC_ALPHABET + 1), (MODEL_PEAKED, 1),
    (MODEL_PEAKED, MAX_TABLE_FREE_ALPHABET + 1), (MODEL_BINNED, 1), (MODEL_BINNED, MAX_TABLE_FREE_ALPHABET + 1),
    (6, 2), (255, 2)])
def test_alphabet_sizes_per_model_kind(kind, size):
    # refused from the descriptor alone: nothing after it is read
    refused(decode_streams, descriptor(kind, 0, size) + words(0), [5])


def test_symbols_must_stay_in_the_32_bit_range():
    refused(decode_streams, descriptor(MODEL_UNIFORM, (1 << 31) - 2, 4) + words(0), [5], match="largest symbol")


@pytest.mark.parametrize("theta,centre", [(0, 100), (100, 0)])
def test_geometric_codes(theta, centre):
    payload = descriptor(MODEL_GEOMETRIC, -2, 5) + struct.pack(">HH", theta, centre) + words(0)
    refused(decode_streams, payload, [5], match="code of a geometric model")


@pytest.mark.parametrize("mode,codes,match", [
    (-3, (100, 100, 100, 100), "mode of a peaked model"), (3, (100, 100, 100, 100), "mode of a peaked model"),
    (0, (0, 100, 100, 100), "centre code"), (0, (100, 0, 100, 100), "left share code"),
    (0, (100, 100, 0, 100), "left theta code"), (0, (100, 100, 100, 0), "right theta code")])
def test_peaked_fields(mode, codes, match):
    payload = descriptor(MODEL_PEAKED, -2, 5) + struct.pack(">iHHHH", mode, *codes) + words(0)
    refused(decode_streams, payload, [5], match=match)


@pytest.mark.parametrize("size,width,tail,match", [
    (5, 0, b"", "bin width"), (5, 6, b"", "bin width"),
    (MAX_TABLE_FREE_ALPHABET, 1, b"", "bin width"),  # more than MAX_BINS bins
    (5, 2, b"\x00\x00\x00" + words(0), "empty bin table"),
    (5, 2, b"\x01\x01", "longer than the 2 bytes left"),  # 3 bins, 2 counts
])
def test_binned_fields(size, width, tail, match):
    payload = descriptor(MODEL_BINNED, 0, size) + struct.pack(">I", width) + tail
    refused(decode_streams, payload, [5], match=match)


def test_count_table_longer_than_its_chunk_fails_before_reading():
    payload = descriptor(MODEL_CATEGORICAL, 0, MAX_CATEGORICAL_ALPHABET) + b"\x01\x01\x01"
    refused(decode_streams, payload, [5], match="longer than the 3 bytes left")


@pytest.mark.parametrize("tail,match", [
    (_write_uvarints(np.array([1, MAX_SYMBOL_COUNT + 1])) + words(0), "largest entry of a count table"),
    (b"\x81\x80\x80\x80\x80\x00\x01" + words(0), "longer than 5 bytes"),
    (b"\x00\x00" + words(0), "empty symbol table"),
    (b"\x01\x81\x81\x81", "runs past the end"),  # the second entry never ends
])
def test_count_table_entries(tail, match):
    refused(decode_streams, descriptor(MODEL_CATEGORICAL, 0, 2) + tail, [5], match=match)


def test_count_table_parse_is_vectorized():
    counts = np.random.default_rng(0).integers(0, 1 << 32, size=1 << 20) >> np.arange(1 << 20) % 33
    table = _write_uvarints(counts)
    start = time.perf_counter()
    back, end = _read_uvarints(b"xy" + table, 2, counts.size)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(back, counts)
    assert end == 2 + len(table)


@pytest.mark.parametrize("nwords", [0xFFFFFFFF, 3, 1])
def test_coded_word_count_must_fill_the_chunk(nwords):
    payload = descriptor(MODEL_UNIFORM, 0, 4) + struct.pack(">III", nwords, 7, 9)
    refused(decode_streams, payload, [5], match="coded words do not fill")


def test_invalid_coded_data_is_a_stream_error():
    payload = descriptor(MODEL_CATEGORICAL, 0, 2) + _write_uvarints(np.array([999999, 1]))
    refused(decode_streams, payload + words(0xFFFFFFFF, 0xFFFFFFFF), [10], match="corrupt stream: entropy decoding")
    # the same through the decoder: the golden layers with every coded word replaced
    pieces = parse_stream(GOLDEN_IMAGE)
    for piece in pieces:
        for f in piece.fields:
            if f.name == "word":
                set_field(piece, f, 0xFFFFFFFF)
    with pytest.raises(StreamError, match="corrupt stream: entropy decoding"):
        decode_image(pack_stream(pieces))


def test_a_rust_panic_in_the_coder_becomes_a_stream_error():
    # a model the descriptor checks never let through: constriction panics on it
    model = _Model(MODEL_UNIFORM, 0, MAX_UNIFORM_ALPHABET + 1, None)
    with pytest.raises(StreamError, match="corrupt stream"):
        _entropy_decode([model], [1], np.zeros(2, np.uint32))


def test_reader_limits_are_constrictions_own():
    """The largest alphabets the reader accepts decode; one more is what constriction refuses."""
    import constriction

    model = constriction.stream.model
    with pytest.raises(ValueError):
        model.Categorical(np.full(MAX_CATEGORICAL_ALPHABET + 1, 1.0), perfect=False)
    for kind, size in ((MODEL_UNIFORM, MAX_UNIFORM_ALPHABET), (MODEL_CATEGORICAL, MAX_CATEGORICAL_ALPHABET)):
        table = b"\x01" * size if kind == MODEL_CATEGORICAL else b""
        m = _Model(kind, 0, size, np.ones(size, np.int64) if table else None)
        symbols = np.array([0, size - 1, 7], dtype=np.int32)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(symbols, m.constriction())
        coded = encoder.get_compressed()
        payload = descriptor(kind, -5, size) + table + struct.pack(f">I{coded.size}I", coded.size, *coded)
        (back,) = decode_streams(payload, [3])
        np.testing.assert_array_equal(back, symbols - 5)


def test_encoder_never_picks_a_model_the_reader_refuses():
    # peaked data over one symbol more than Categorical takes: a table would win, but is not allowed
    symbols = np.zeros(1 << 23, np.int64)
    symbols[-1] = MAX_CATEGORICAL_ALPHABET
    assert _choose_model(symbols).kind == MODEL_UNIFORM
    symbols[-1] = MAX_CATEGORICAL_ALPHABET - 1
    assert _choose_model(symbols).kind == MODEL_CATEGORICAL
    with pytest.raises(ValueError, match="too large"):
        encode_streams([np.array([0, MAX_UNIFORM_ALPHABET])])
    with pytest.raises(ValueError, match="32-bit"):
        encode_streams([np.array([0, 1 << 31])])


# ------------------------------------------------------------------ video structure
@pytest.mark.parametrize("field,value,match", [
    ("VHDR_fps_num", 0, "fps_num"), ("VHDR_fps_den", 0, "fps_den"), ("VHDR_fps_num", 0xFFFFFFFF, "frame rate"),
    ("VHDR_fps_den", 0xFFFFFFFF, "frame rate"), ("VHDR_gop", 0, "GOP"), ("VHDR_gop", MAX_FRAMES + 1, "GOP"),
    ("VHDR_frames", MAX_FRAMES + 1, "frame count"), ("VHDR_frames", 0xFFFFFFFF, "frame count"),
])
def test_video_header_ranges(field, value, match):
    refused(decode_video, edit(GOLDEN_VIDEO, **{field: value}), match=match)


def test_frame_count_must_match_the_frames_present():
    with pytest.raises(StreamError, match="holds 3 of 4 frames"):
        decode_video(edit(GOLDEN_VIDEO, VHDR_frames=4))
    with pytest.raises(StreamError, match="after the last frame"):
        decode_video(edit(GOLDEN_VIDEO, VHDR_frames=2))


@pytest.mark.parametrize("field,value,match", [
    ("FRAM_layers", [2, 3, 2], "frame header too short"), ("FRAM_frame", [0, 2, 2], "holds frame index 2"),
    ("FRAM_type", [1, 1, 1], "not an I-frame"), ("FRAM_type", [0, 2, 1], "unknown frame type"),
])
def test_frame_headers(field, value, match):
    with pytest.raises(StreamError, match=match):
        decode_video(edit(GOLDEN_VIDEO, **{field: value}))


def test_frame_header_layer_count_must_be_the_streams():
    pieces = parse_stream(GOLDEN_VIDEO)
    fram = [p for p in pieces if p.type == b"FRAM"][1]
    fram.payload = fram.payload[:5] + b"\x03" + fram.payload[6:] + struct.pack(">I", 22)
    with pytest.raises(StreamError, match="lists 3 layers, the stream has 2"):
        decode_video(pack_stream(pieces))


@pytest.mark.parametrize("size", [0, 21, 12 + MAX_CHUNK + 1])
def test_frame_header_layer_sizes(size):
    pieces = parse_stream(GOLDEN_VIDEO)
    fram = next(p for p in pieces if p.type == b"FRAM")
    set_field(fram, fram.fields[-1], size)  # no fix_frame_sizes: the size is the lie
    with pytest.raises(StreamError, match="frame header size of layer 2"):
        decode_video(pack_stream(pieces))


def test_frame_index_in_layer_chunks():
    with pytest.raises(StreamError, match="out of order"):
        decode_video(edit(GOLDEN_VIDEO, LAYR_frame=[0, 0, 1, 1, 1, 2]))


# ------------------------------------------------------------------ structure-aware fuzzing
class DrawChooser:
    """The fuzz engine's decisions drawn by hypothesis (so failures shrink)."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


#: cases whose header claims more pixels than this are drawn here at a smaller scale
#: (a full-size one takes seconds); benchmarks/fuzz.py runs them as they come, under a
#: memory limit and a timeout
MAX_TEST_PIXELS = 1 << 20


def header_pixels(data: bytes) -> int:
    """width x height of the header, 0 when there is no readable header."""
    try:
        first = read_chunk(io.BytesIO(data[10:]), 10)
        width, height = struct.unpack_from(">II", first.payload, 1)
    except (StreamError, AttributeError, struct.error):
        return 0
    return width * height


FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz_one(base: str, data) -> None:
    """One mutated seed stream: decoding succeeds or fails with StreamError / GsvcError."""
    case = make_case(0, base, SEEDS[base], DrawChooser(data))
    pixels = header_pixels(case.data)
    if case.scale**2 * pixels > MAX_TEST_PIXELS:
        case.scale = math.sqrt(MAX_TEST_PIXELS / pixels)
    outcome, detail = run_targets(case)
    assert outcome in (DECODED, CLEAN), (case.mutations, case.layers, case.scale, detail)


# 4 x 340 image and 5 x 200 video cases (a video case decodes up to 3 frames)
@pytest.mark.parametrize("base", ["image", "image-rich", "image-v2", "image-v3"])
@settings(max_examples=340, **FUZZ)
@given(data=st.data())
def test_structure_aware_fuzz_images(base, data):
    fuzz_one(base, data)


@pytest.mark.parametrize("base", ["video", "video-rich", "video-v2", "video-v3", "video-moved"])
@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_structure_aware_fuzz_videos(base, data):
    fuzz_one(base, data)


def test_seeds_decode():
    for base, data in SEEDS.items():
        assert run_targets(Case(0, base, data, [], None, 1.0)) == (DECODED, "")
