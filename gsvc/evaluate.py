"""Rate-distortion evaluation of a stream against its reference picture (``gsvc eval``).

``evaluate_stream(data, reference)`` decodes every layer count k = 1..L and measures,
per k, the bytes actually needed (header + first k layer chunks), bpp, PSNR and MS-SSIM
against the reference, and the decode time. The result is the object ``gsvc eval
--json`` prints::

    {
      "kind": "image", "width": W, "height": H,
      "layers_encoded": L, "total_bytes": ...,
      "ms_ssim_scales": 5, "ms_ssim_weights": [...], "decode_repeats": 3,
      "layers": [
        {"layers": 1, "bytes": ..., "bpp": ..., "psnr": ..., "ms_ssim": ..., "decode_ms": ...},
        ...
      ]
    }

``layers`` holds one object per layer count, in order; these keys are stable. Video
streams (``evaluate_video``) keep these keys, each ``layers`` row summarizing all
frames (``psnr`` / ``ms_ssim`` the mean over frames, ``bytes`` what a k-layer decoder
reads), and add per-frame detail: a row gains ``worst_psnr`` / ``worst_ms_ssim`` (the
worst frame), ``psnr_stdev``, ``kbps`` and ``decode_fps`` (in place of
``decode_ms``), and the top level gains ``frames``, ``fps`` and ``frame_rows`` (one
object per frame and layer count: ``frame``, ``type``, ``layers``, ``psnr``,
``ms_ssim``).

Metrics:

* ``psnr``: dB over all RGB samples of the 8-bit pictures (``gsvc.metrics.psnr``).
* ``ms_ssim``: MS-SSIM on the 8-bit RGB pictures (data range 255, Gaussian window
  11 / sigma 1.5, mean over the three channels), computed by the maintained
  ``pytorch-msssim`` package. Its standard five scales need the short side to be
  over 160 pixels; smaller pictures use as many scales as keep the coarsest scale
  over 10 pixels, with the first weights of the standard five renormalized to sum
  to 1 (one scale is plain SSIM). ``ms_ssim_scales`` and ``ms_ssim_weights`` say
  which were used: values with different scale counts are not comparable. Below
  11 pixels no window fits: ``ms_ssim`` is null and ``ms_ssim_scales`` is 0.
* ``decode_ms``: the median wall time of ``repeats`` calls of ``decode_image`` for
  that layer count (stream parsing, entropy decoding, dequantization, rendering).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Iterator

import numpy as np

from .errors import GsvcError
from .metrics import psnr, psnr_from_mse

#: The standard MS-SSIM weights (Wang, Simoncelli, Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Gaussian window of every SSIM computation (pytorch-msssim's defaults).
WIN_SIZE = 11
WIN_SIGMA = 1.5


def ms_ssim_weights(height: int, width: int) -> tuple[float, ...]:
    """The MS-SSIM weights used for a picture of this size (empty: too small)."""
    short = min(height, width)
    scales = 0
    # scale s (1-based) sees the picture halved s-1 times; it must stay over 10 pixels,
    # which for five scales is exactly pytorch-msssim's own "over 160 pixels" rule
    while scales < len(MS_SSIM_WEIGHTS) and short > (WIN_SIZE - 1) * 2**scales:
        scales += 1
    if scales == len(MS_SSIM_WEIGHTS):
        return MS_SSIM_WEIGHTS
    head = MS_SSIM_WEIGHTS[:scales]
    return tuple(w / sum(head) for w in head)


def _nchw(rgb: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float64)).permute(2, 0, 1).unsqueeze(0)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float | None, tuple[float, ...]]:
    """MS-SSIM of two [H, W, 3] uint8 pictures and the scale weights it used.

    Five scales go straight to ``pytorch_msssim.ms_ssim``; fewer scales (small
    pictures, see the module docstring) run the same loop as that function on its
    own per-scale SSIM, since it refuses pictures of 160 pixels or less whatever the
    weights. Returns (None, ()) when the picture is under 11 pixels on a side.
    """
    import torch

    try:
        import pytorch_msssim
    except ImportError:
        raise GsvcError("MS-SSIM needs pytorch-msssim (a dependency of gsvc): pip install pytorch-msssim") from None
    assert a.shape == b.shape and a.ndim == 3 and a.shape[2] == 3, (a.shape, b.shape)
    weights = ms_ssim_weights(a.shape[0], a.shape[1])
    if not weights:
        return None, ()
    x, y = _nchw(a), _nchw(b)
    with torch.no_grad():
        if len(weights) == len(MS_SSIM_WEIGHTS):
            value = pytorch_msssim.ms_ssim(x, y, data_range=255, size_average=True,
                                           win_size=WIN_SIZE, win_sigma=WIN_SIGMA, weights=list(weights))
        else:
            value = _ms_ssim_scales(x, y, weights)
    return float(value), weights


def _ms_ssim_scales(x, y, weights: tuple[float, ...]):
    """``pytorch_msssim.ms_ssim``'s loop without its size check: any number of scales.

    Uses the package's own per-scale SSIM; the tests check that with the five
    standard weights it equals ``pytorch_msssim.ms_ssim``.
    """
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    win = _fspecial_gauss_1d(WIN_SIZE, WIN_SIGMA).repeat([x.shape[1], 1, 1, 1])
    factors = []
    for i in range(len(weights)):
        ssim_c, cs_c = _ssim(x, y, data_range=255, win=win, size_average=False)
        if i < len(weights) - 1:
            factors.append(torch.relu(cs_c))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_c))
    stacked = torch.stack(factors, dim=0)  # (scale, batch, channel)
    return torch.prod(stacked ** x.new_tensor(weights).view(-1, 1, 1), dim=0).mean()


def evaluate_stream(
    data: bytes | str | os.PathLike,
    reference: np.ndarray,
    *,
    repeats: int = 3,
    device: str = "cpu",
    backend: str | None = None,
    reference_name: str = "the reference",
) -> dict:
    """Decode every layer count of ``data`` and measure it against ``reference``.

    ``reference`` is the original picture, [H, W, 3] uint8 RGB, of the stream's size.
    Returns the object described in the module docstring. ``reference_name`` names
    the reference in the error raised when its size differs from the stream's.
    """
    from .decoder import decode_image, stream_info
    from .files import check_input_file

    if not isinstance(data, (bytes, bytearray)):
        data = check_input_file(data).read_bytes()
    data = bytes(data)
    if repeats < 1:
        raise GsvcError(f"repeats must be at least 1 (got {repeats})")
    info = stream_info(data)
    width, height = info["width"], info["height"]
    if not (isinstance(reference, np.ndarray) and reference.ndim == 3 and reference.shape[2] == 3
            and reference.dtype == np.uint8):
        raise GsvcError("the reference must be an 8-bit RGB picture")
    if reference.shape[:2] != (height, width):
        raise GsvcError(
            f"{reference_name} is {reference.shape[1]}x{reference.shape[0]} but the stream is {width}x{height}"
        )
    if not info["layers"]:
        raise GsvcError("stream holds no layers")
    pixels = width * height
    weights = ms_ssim_weights(height, width)
    decode_image(data, layers=1, device=device, backend=backend)  # warm-up (imports, JIT), untimed
    rows = []
    for row in info["layers"]:
        k = row["index"]
        times = []
        decoded = None
        for _ in range(repeats):
            start = time.perf_counter()
            out = decode_image(data, layers=k, device=device, backend=backend)
            times.append(time.perf_counter() - start)
            decoded = out if decoded is None else decoded
        value, _ = ms_ssim(decoded, reference)
        nbytes = row["cumulative_bytes"]
        rows.append(
            {
                "layers": k,
                "gaussians": row["gaussians"],
                "bytes": nbytes,
                "bpp": 8.0 * nbytes / pixels,
                "psnr": psnr(decoded, reference),
                "ms_ssim": value,
                "decode_ms": 1000.0 * statistics.median(times),
            }
        )
    return {
        "kind": info["kind"],
        "width": width,
        "height": height,
        "layers_encoded": info["layers_encoded"],
        "total_bytes": info["total_bytes"],
        "ms_ssim_scales": len(weights),
        "ms_ssim_weights": list(weights),
        "decode_repeats": repeats,
        "layers": rows,
    }


def evaluate_video(
    data: bytes | str | os.PathLike,
    reference_frames: Callable[[], Iterator[np.ndarray]],
    *,
    device: str = "cpu",
    backend: str | None = None,
    reference_name: str = "the reference",
) -> dict:
    """Every layer count of a video stream against its reference frames.

    ``reference_frames()`` yields the reference frames in order (called once per layer
    count, so nothing is held in memory but one frame). Decoded frames are compared
    directly: nothing is re-encoded. Per layer count: ``bytes`` (what a decoder of k
    layers reads), ``bpp`` (per frame pixel), ``kbps``, ``psnr`` / ``ms_ssim`` (means
    over frames), ``worst_psnr`` / ``worst_ms_ssim`` (the worst frame), ``decode_fps``.
    """
    from .decoder import open_video, stream_info

    info = stream_info(data)
    width, height, frames = info["width"], info["height"], info["frames"]
    if frames == 0:
        raise GsvcError("stream holds no frames")
    weights = ms_ssim_weights(height, width)
    rows, frame_rows = [], []
    for row in info["layers"]:
        k = row["index"]
        values, ssims = [], []
        decode_seconds = 0.0
        with open_video(data, layers=k) as reader:
            decoded = reader.frames(device=device, backend=backend)
            refs = reference_frames()
            for t in range(frames):
                t0 = time.perf_counter()
                frame = next(decoded)
                decode_seconds += time.perf_counter() - t0
                ref = next(refs, None)
                if ref is None:
                    raise GsvcError(f"{reference_name} has {t} frames, the stream {frames}")
                if ref.shape[:2] != (height, width):
                    raise GsvcError(f"{reference_name} is {ref.shape[1]}x{ref.shape[0]} but the stream is "
                                    f"{width}x{height}")
                value = psnr(frame.rgb, ref)
                ssim, _ = ms_ssim(frame.rgb, ref)
                values.append(value)
                ssims.append(ssim)
                frame_rows.append({"frame": t, "type": frame.type, "layers": k, "psnr": value, "ms_ssim": ssim})
        nbytes = row["cumulative_bytes"]
        have_ssim = all(s is not None for s in ssims)
        rows.append(
            {
                "layers": k,
                "bytes": nbytes,
                "bpp": 8.0 * nbytes / (width * height * frames),
                "kbps": row["cumulative_kbps"],
                "psnr": statistics.fmean(values),
                "worst_psnr": min(values),
                "psnr_stdev": statistics.pstdev(values),
                # PSNR of the mean MSE over frames ("global PSNR"): a near-perfect frame
                # (a black one) cannot dominate it as it does the mean of PSNRs
                "global_psnr": psnr_from_mse(statistics.fmean(10 ** (-v / 10) for v in values)),
                "ms_ssim": statistics.fmean(ssims) if have_ssim else None,
                "worst_ms_ssim": min(ssims) if have_ssim else None,
                "decode_fps": frames / decode_seconds if decode_seconds > 0 else None,
            }
        )
    return {
        "kind": "video",
        "width": width,
        "height": height,
        "frames": frames,
        "fps": info["fps"],
        "layers_encoded": info["layers_encoded"],
        "total_bytes": info["total_bytes"],
        "ms_ssim_scales": len(weights),
        "ms_ssim_weights": list(weights),
        "layers": rows,
        "frame_rows": frame_rows,
    }
