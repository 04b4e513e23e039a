"""Where the bits go: bits per Gaussian per parameter stream, under each entropy coder.

    python -m benchmarks.bits out/*.gsv
    python -m benchmarks.bits a.gsv b.gsv --json bits.json

Each image stream's layers are entropy-decoded to their integers, then coded again
by coder 1 (per-stream count tables), coder 2 (table-free models, colours as green,
red - green, blue - green) and coder 3 (coder 2 with the positions as a point set:
``layer_codec.position_bits``), one stream at a time, so every figure is bytes a real
encoder writes (a stream's share of the words is its own payload coded alone; the
layer total is the chunk payload as written with all streams together). Layer 1 and
layers 2.. are reported apart, averaged over Gaussians of all files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bitstream import CODER_RANGE_V1, CODER_RANGE_V2, CODER_RANGE_V3, encode_streams, read_stream
from bitstream.layout import KIND_IMAGE
from gsvc.layer_codec import _intra_streams, decode_intra, encode_intra, position_bits

CODERS = (CODER_RANGE_V1, CODER_RANGE_V2, CODER_RANGE_V3)
STREAMS = {CODER_RANGE_V1: ("dy", "x", "a", "b", "r", "red", "green", "blue"),
           CODER_RANGE_V2: ("dy", "x", "a", "b", "r", "green", "red-green", "blue-green")}
GROUPS = {"position": ("dy", "x", "position set"), "size": ("a", "b"), "shear": ("r",),
          "colour": ("red", "green", "blue", "red-green", "blue-green")}


def _stream_bytes(symbols: np.ndarray, coder: int) -> int:
    """Bytes of one stream coded alone (its descriptor and words, without the word count)."""
    return len(encode_streams([symbols], geometric=False, coder=coder)) - 4


def layer_bits(q: np.ndarray, coder: int) -> dict[str, float]:
    """Bits of each stream and of the whole layer payload, for integers q [N, 8]."""
    if coder == CODER_RANGE_V3:
        values = _intra_streams(q, CODER_RANGE_V2)[2:]
        out = {name: 8.0 * _stream_bytes(s, coder) for name, s in zip(STREAMS[CODER_RANGE_V2][2:], values)}
        out["position set"] = position_bits(q, coder)
        out["total"] = 8.0 * len(encode_intra(q, coder)[0])
        return out
    streams = _intra_streams(q, coder)
    out = {name: 8.0 * _stream_bytes(s, coder) for name, s in zip(STREAMS[coder], streams)}
    out["total"] = 8.0 * len(encode_streams(streams, coder=coder))
    return out


def measure(paths: list[Path]) -> dict:
    """{'layer 1' | 'layers 2..': {coder: {stream: bits per Gaussian}, 'gaussians': n}}."""
    sums: dict[str, dict] = {}
    for path in paths:
        with open(path, "rb") as f:
            stream = read_stream(f)
        if stream.header.kind != KIND_IMAGE:
            raise SystemExit(f"{path}: not an image stream")
        for chunk in stream.layers:
            q = decode_intra(chunk.data, chunk.count, stream.header.coder)
            group = sums.setdefault("layer 1" if chunk.layer == 1 else "layers 2..", {"gaussians": 0})
            group["gaussians"] += chunk.count
            for coder in CODERS:
                bits = group.setdefault(coder, {})
                for name, value in layer_bits(q, coder).items():
                    bits[name] = bits.get(name, 0.0) + value
    return {g: {"gaussians": v["gaussians"],
                **{f"coder{c}": {k: b / v["gaussians"] for k, b in v[c].items()}
                   for c in CODERS}}
            for g, v in sums.items()}


def table(result: dict) -> str:
    lines = ["| layers | coder | position | size (a, b) | shear | colour | sum of streams | layer payload |",
             "|---|---|---|---|---|---|---|---|"]
    for group, v in result.items():
        for coder in (f"coder{c}" for c in CODERS):
            bits = v[coder]
            parts = [sum(bits.get(n, 0.0) for n in names) for names in GROUPS.values()]
            streams = sum(b for k, b in bits.items() if k != "total")
            lines.append(f"| {group} | {coder[-1]} | " + " | ".join(f"{p:.1f}" for p in parts)
                         + f" | {streams:.1f} | {bits['total']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("streams", nargs="+", type=Path, help="image .gsv files")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    result = measure(args.streams)
    print(f"bits per Gaussian, {len(args.streams)} streams")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
