"""The golden stream's content, shared by its test and the script that (re)makes it.

Run `python tests/golden.py` only on a deliberate format change; it rewrites
tests/data/tiny.gsv and tests/data/tiny.png.
"""
from pathlib import Path

import torch

from gsvc.model import GaussianLayer, LayeredImage
from gsvc.quantize import QuantSettings

DATA = Path(__file__).resolve().parent / "data"
STEPS = QuantSettings().steps()


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


if __name__ == "__main__":
    from gsvc.codec import decode_image, encode_model
    from gsvc.media import write_image

    DATA.mkdir(exist_ok=True)
    data, _ = encode_model(tiny_model(), STEPS)
    (DATA / "tiny.gsv").write_bytes(data)
    write_image(DATA / "tiny.png", decode_image(data, backend="torch"))
    print(f"wrote {DATA / 'tiny.gsv'} ({len(data)} bytes) and tiny.png")
