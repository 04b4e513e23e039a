"""The golden stream's content, shared by its test and the script that (re)makes it.

Run `python tests/golden.py [CODER ...]` only on a deliberate format change; it
rewrites tests/data/tiny*.gsv and tiny*.png (those of the coders named; all without).
Each stream exists once per entropy coder: coder 1 (tiny.gsv, tiny_video.gsv, pinned
since the first release), coder 2 (tiny_v2.gsv, tiny_video_v2.gsv) and coder 3
(tiny_v3.gsv, tiny_video_v3.gsv); coder 4 (inherited models, video only) has
tiny_video_v4.gsv.
"""
from pathlib import Path

import torch

from gsvc.model import GaussianLayer, LayeredImage
from gsvc.quantize import QuantSettings

DATA = Path(__file__).resolve().parent / "data"
#: the steps the golden streams were made with (QuantSettings' defaults of the first release)
STEPS = QuantSettings(position_step=1 / 16, log_scale_step=1 / 32, shear_step=1 / 32).steps()
#: coder id -> (image stream, video stream) file names
FILES = {1: ("tiny.gsv", "tiny_video.gsv"), 2: ("tiny_v2.gsv", "tiny_video_v2.gsv"),
         3: ("tiny_v3.gsv", "tiny_video_v3.gsv")}
#: a video whose P-frames move their layers (reference 2, FORMAT.md section 7.4), coder 2
MOVED = "tiny_video_moved.gsv"
#: a coder-4 video whose P-frames inherit models from the frame before (FORMAT.md 4.4)
INHERITED = "tiny_video_v4.gsv"


def tiny_model() -> LayeredImage:
    """16x12 pixels, 2 layers: 6 broad Gaussians, then 3 small ones."""
    base = GaussianLayer(
        torch.tensor([[2.0, 2.0], [8.0, 3.0], [14.0, 2.5], [3.0, 9.0], [8.5, 9.5], [13.0, 10.0]]),
        torch.tensor([[1.2, 1.1, 0.0], [1.3, 1.0, 0.2], [1.1, 1.2, -0.3],
                      [1.0, 1.3, 0.1], [1.4, 1.2, 0.0], [1.2, 1.0, 0.5]]),
        torch.tensor([[0.9, 0.2, 0.1], [0.2, 0.8, 0.3], [0.1, 0.3, 0.9],
                      [0.8, 0.8, 0.1], [0.5, 0.5, 0.5], [0.2, 0.7, 0.8]]),
    )
    detail = GaussianLayer(
        torch.tensor([[5.0, 6.0], [11.25, 5.5], [8.0, 1.0]]),
        torch.tensor([[-0.2, 0.1, 0.0], [0.0, -0.3, 1.0], [0.3, 0.3, -0.5]]),
        torch.tensor([[0.3, -0.2, 0.1], [-0.3, 0.2, 0.4], [0.25, 0.25, -0.1]]),
    )
    return LayeredImage(16, 12, [base, detail])


def _tiny_video_start(coder: int, fps: tuple[int, int]):
    """A video stream of the tiny model (16x12, 2 layers) after its I-frame: (buffer,
    writer, the I-frame's layers as decoded)."""
    import io

    from bitstream import Header
    from bitstream.layout import KIND_VIDEO
    from bitstream.video import FRAME_I, VideoHeader, VideoWriter
    from gsvc.encoder import code_intra_layers

    model = tiny_model()
    out = io.BytesIO()
    header = Header(16, 12, model.counts, STEPS, kind=KIND_VIDEO, coder=coder)
    writer = VideoWriter(out, header, VideoHeader(0, fps[0], fps[1], 30))
    chunks, reference = code_intra_layers(model, STEPS, coder, geometric=True)
    writer.write_frame(FRAME_I, chunks)
    return out, writer, reference


def tiny_video(coder: int = 1) -> bytes:
    """3 frames of 16x12 pixels, 2 layers: an I-frame (the tiny model), a P-frame that
    moves, recolours, drops and adds Gaussians, and a P-frame with no change at all."""
    import numpy as np

    from bitstream import LayerChunk
    from bitstream.layout import REF_PREVIOUS
    from bitstream.video import FRAME_P
    from gsvc.layer_codec import encode_predicted

    out, writer, reference = _tiny_video_start(coder, (30000, 1001))
    moves = [
        # (keep mask, change of the kept ones, new Gaussians)
        (np.array([1, 1, 1, 1, 0, 1], bool),
         np.array([[16, 0, 0, 0, 0, 0, 0, 0], [0, -8, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0],
                   [0, 0, 2, -1, 0, 5, -5, 0], [0, 0, 0, 0, 0, 0, 0, 0]]),
         np.array([[136, 152, 38, 38, 0, 64, 64, 64]])),
        (np.ones(3, bool), np.zeros((3, 8), int), np.zeros((0, 8), int)),
    ]
    for t in (1, 2):
        chunks, decoded = [], []
        for l, ref in enumerate(reference, start=1):
            if t == 1 and l == 1:
                keep, change, new = moves[0]
            else:
                keep, change, new = np.ones(len(ref), bool), np.zeros((len(ref), 8), int), np.zeros((0, 8), int)
            payload, q = encode_predicted(ref, keep, ref[keep] + change, new, coder)
            chunks.append(LayerChunk(l, q.shape[0], payload, frame=t, reference=REF_PREVIOUS))
            decoded.append(q)
        writer.write_frame(FRAME_P, chunks)
        reference = decoded
    writer.finish()
    return out.getvalue()


def tiny_video_moved() -> bytes:
    """3 frames of 16x12 pixels, 2 layers, coder 2: the tiny model as an I-frame, then
    two P-frames whose layers are moved (a pan right and down with a 3 % zoom, layer 1
    also recoloured; then a pan back with a 10 % zoom-out and a 2.9 degree roll that
    shrinks the sizes by three steps), the second frame's layer 2 predicted without
    motion."""
    import numpy as np

    from bitstream import LayerChunk
    from bitstream.layout import REF_MOVED, REF_PREVIOUS
    from bitstream.video import FRAME_P
    from gsvc.layer_codec import ZOOM_ONE, GlobalMotion, encode_predicted

    out, writer, reference = _tiny_video_start(2, (25, 1))
    motions = [[GlobalMotion(8, 5, ZOOM_ONE + 2000, 0), GlobalMotion(8, 5, ZOOM_ONE + 2000, 0)],
               [GlobalMotion(-20, 11, ZOOM_ONE - 6554, 3000, -3), None]]
    for t, frame_motions in enumerate(motions, start=1):
        chunks, decoded = [], []
        for l, (ref, motion) in enumerate(zip(reference, frame_motions), start=1):
            moved = motion.apply(ref) if motion else ref
            change = np.zeros_like(moved)
            if t == 1 and l == 1:
                change[:, 5] = 4  # redder
            payload, q = encode_predicted(ref, np.ones(len(ref), bool), moved + change, np.zeros((0, 8), int), 2,
                                          motion)
            chunks.append(LayerChunk(l, q.shape[0], payload, frame=t,
                                     reference=REF_MOVED if motion else REF_PREVIOUS))
            decoded.append(q)
        writer.write_frame(FRAME_P, chunks)
        reference = decoded
    writer.finish()
    return out.getvalue()


def tiny_video_inherited() -> bytes:
    """4 frames of 16x12 pixels, 2 layers, coder 4: the tiny model as an I-frame, a
    P-frame that moves, recolours, drops and adds Gaussians in layer 1, a P-frame that
    moves layer 1 alike (its streams inherit their models from the frame before), and
    a P-frame with no change at all."""
    import numpy as np

    from bitstream import CODER_RANGE_V4, LayerChunk
    from bitstream.layout import REF_PREVIOUS
    from bitstream.video import FRAME_P
    from gsvc.layer_codec import code_predicted

    out, writer, reference = _tiny_video_start(CODER_RANGE_V4, (25, 1))
    step = np.array([[3, -2, 1, 0, 0, 2, -1, 0], [2, 0, 0, -1, 1, 0, 0, 1], [-1, 3, 0, 0, 0, 0, 2, 0],
                     [0, 0, 0, 0, 0, 0, 0, 0], [4, 1, -1, 0, 0, 1, 0, -2], [0, -3, 0, 1, 0, 0, 1, 0]])
    frames = [  # layer 1: (keep mask, change of the kept ones, new Gaussians); layer 2 unchanged
        (np.array([1, 1, 1, 1, 0, 1], bool), step[:5], np.array([[136, 152, 38, 38, 0, 64, 64, 64]])),
        (np.ones(6, bool), -step[::-1], np.zeros((0, 8), int)),
        (np.ones(6, bool), np.zeros((6, 8), int), np.zeros((0, 8), int)),
    ]
    history = [None, None]
    for t, (keep, change, new) in enumerate(frames, start=1):
        chunks, decoded, streams = [], [], []
        for l, (ref, h) in enumerate(zip(reference, history), start=1):
            if l > 1:
                keep, change, new = np.ones(len(ref), bool), np.zeros((len(ref), 8), int), np.zeros((0, 8), int)
            code = code_predicted(ref, keep, ref[keep] + change, new, CODER_RANGE_V4, history=h)
            chunks.append(LayerChunk(l, code.q.shape[0], code.payload, frame=t, reference=REF_PREVIOUS))
            decoded.append(code.q)
            streams.append(code.streams)
        writer.write_frame(FRAME_P, chunks)
        reference, history = decoded, streams
    writer.finish()
    return out.getvalue()


if __name__ == "__main__":
    import sys

    import numpy as np

    from gsvc.codec import decode_image, decode_video, encode_model
    from gsvc.media import write_image

    DATA.mkdir(exist_ok=True)
    chosen = [int(c) for c in sys.argv[1:]] or list(FILES)
    for coder, (image_name, video_name) in FILES.items():
        if coder not in chosen:
            continue
        data, _ = encode_model(tiny_model(), STEPS, coder)
        (DATA / image_name).write_bytes(data)
        write_image(DATA / image_name.replace(".gsv", ".png"), decode_image(data, backend="torch"))
        print(f"wrote {DATA / image_name} ({len(data)} bytes) and its .png")
        video = tiny_video(coder)
        (DATA / video_name).write_bytes(video)
        frames = np.concatenate(decode_video(video, backend="torch"), axis=0)
        write_image(DATA / video_name.replace(".gsv", ".png"), frames)
        print(f"wrote {DATA / video_name} ({len(video)} bytes) and its .png (frames stacked)")
    if 4 in chosen:
        inherited = tiny_video_inherited()
        (DATA / INHERITED).write_bytes(inherited)
        frames = np.concatenate(decode_video(inherited, backend="torch"), axis=0)
        write_image(DATA / INHERITED.replace(".gsv", ".png"), frames)
        print(f"wrote {DATA / INHERITED} ({len(inherited)} bytes) and its .png (frames stacked)")
    if 2 not in chosen:
        sys.exit(0)
    moved = tiny_video_moved()
    (DATA / MOVED).write_bytes(moved)
    write_image(DATA / MOVED.replace(".gsv", ".png"), np.concatenate(decode_video(moved, backend="torch"), axis=0))
    print(f"wrote {DATA / MOVED} ({len(moved)} bytes) and its .png (frames stacked)")
