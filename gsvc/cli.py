"""Command line: gsvc encode | decode | info | eval."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import GsvcError


def _fail(message: str) -> None:
    click.echo(f"gsvc: error: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        from bitstream import StreamError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (GsvcError, StreamError) as e:
            _fail(str(e))
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _fail(f"{where}{e.strerror or e}")
        except MemoryError:
            _fail("out of memory (try fewer Gaussians or a smaller image)")
        except KeyboardInterrupt:
            _fail("interrupted")
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("GSVC_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set GSVC_DEBUG=1 for a traceback)")


def _parse_counts(ctx, param, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated whole numbers, e.g. 5000,2000,2000") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("every layer needs at least one Gaussian")
    return counts


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gsvc")
def main() -> None:
    """Scalable image codec built on layered 2D Gaussian splatting."""


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output .gsv (default: INPUT with .gsv).")
@click.option("--gaussians", callback=_parse_counts, help="Gaussians per layer, comma-separated (default scales 5000,2000,2000 at 768x512).")
@click.option("--layers", type=click.IntRange(1, 255), help="Number of layers when --gaussians is not given (default 3).")
@click.option("--iterations", type=click.IntRange(1), help="Training iterations in total (overrides --preset).")
@click.option("--preset", type=click.Choice(["fast", "medium", "slow"]), default="medium", show_default=True)
@click.option("--training", type=click.Choice(["joint", "sequential"]), default="joint", show_default=True,
              help="joint: P-GSVC (all layers every step); sequential: LIG-style baseline.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def encode(input, output, gaussians, layers, iterations, preset, training, device, seed, quiet):
    """Fit layered Gaussians to an image and write a .gsv stream."""
    from .codec import PRESETS, EncodeSettings, decode_image, default_counts, encode_image, psnr, stream_info
    from .media import atomic_output, check_writable, read_image
    from .train import TrainSettings

    counts = gaussians
    if counts is not None and layers is not None and len(counts) != layers:
        raise GsvcError(f"--layers {layers} disagrees with --gaussians ({len(counts)} layers)")
    output = output or input.with_suffix(".gsv")
    rgb = read_image(input, notice=lambda m: click.echo(f"gsvc: note: {m}", err=True))
    h, w = rgb.shape[:2]
    if counts is None:
        counts = default_counts(w, h, layers or 3)
    settings = EncodeSettings(
        gaussians=counts,
        train=TrainSettings(iterations=iterations or PRESETS[preset], mode=training, seed=seed),
        device=device,
    )
    # fail on an unwritable destination before minutes of training
    check_writable(output)
    start = time.perf_counter()
    total = settings.train.iterations
    if quiet:
        result = encode_image(rgb, settings)
    else:
        click.echo(f"{input}: {w}x{h}, {len(counts)} layers of {','.join(map(str, counts))} Gaussians", err=True)
        with click.progressbar(length=total, label="fitting", file=sys.stderr,
                               item_show_func=lambda p: p, show_pos=True) as bar:
            def progress(done: int, _total: int, value: float) -> None:
                bar.update(1, f"PSNR {value:.2f} dB")

            result = encode_image(rgb, settings, progress)
    seconds = time.perf_counter() - start
    with atomic_output(output) as tmp:
        tmp.write_bytes(result.data)
    if not quiet:
        info = stream_info(result.data)
        click.echo(f"wrote {output}: {len(result.data)} bytes, {info['bpp']:.3f} bpp, {seconds:.1f} s", err=True)
        rows = []
        for row in info["layers"]:
            dec = decode_image(result.data, layers=row["index"])
            rows.append((row, psnr(dec, rgb)))
        _print_table(rows)


def _print_table(rows) -> None:
    click.echo(f"{'layer':>5} {'gaussians':>9} {'bytes':>8} {'bpp':>7} {'cum. bytes':>10} {'cum. bpp':>8}"
               + (f" {'PSNR dB':>8} {'gain dB':>7}" if rows and rows[0][1] is not None else ""))
    prev = None
    for row, value in rows:
        line = (f"{row['index']:>5} {row['gaussians']:>9} {row['bytes']:>8} {row['bpp']:>7.4f} "
                f"{row['cumulative_bytes']:>10} {row['cumulative_bpp']:>8.4f}")
        if value is not None:
            gain = "" if prev is None else f"{value - prev:+.2f}"
            line += f" {value:>8.2f} {gain:>7}"
            prev = value
        click.echo(line)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output image (.png, .jpg).")
@click.option("--layers", type=int, help="Decode only the first N layers (default: all).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Render at this multiple of the encoded size.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
def decode(input, output, layers, scale, device):
    """Decode a .gsv stream (optionally only its first layers) to an image."""
    from .codec import decode_image
    from .media import IMAGE_WRITERS, write_image

    if output.suffix.lower() not in IMAGE_WRITERS:
        raise GsvcError(f"{output}: unsupported output extension {output.suffix or '(none)'} (use .png or .jpg)")
    if layers is not None and layers < 1:
        raise GsvcError(f"--layers must be at least 1 (got {layers})")
    rgb = decode_image(input, layers=layers, scale=scale, device=device)
    write_image(output, rgb)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(input, as_json):
    """Show a stream's layers and their sizes."""
    from .codec import stream_info

    data = stream_info(input)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{input}: gsvc {data['kind']} (format {data['format_version']}), {data['width']}x{data['height']}, "
               f"{len(data['layers'])} of {data['layers_encoded']} layers, {data['total_bytes']} bytes "
               f"({data['bpp']:.4f} bpp, header {data['header_bytes']} bytes)")
    _print_table([(row, None) for row in data["layers"]])


@main.command("eval")
@click.argument("stream", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The original image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Decodes per layer count; decode ms is their median.")
def eval_(stream, reference, as_json, repeats):
    """Rate-distortion of every layer count: bytes, bpp, PSNR, MS-SSIM, decode ms."""
    from .evaluate import evaluate_stream
    from .media import check_input_file, read_image

    data = check_input_file(stream).read_bytes()
    ref = read_image(reference, notice=lambda m: click.echo(f"gsvc: note: {m}", err=True))
    result = evaluate_stream(data, ref, repeats=repeats, reference_name=f"--reference {reference}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    scales = result["ms_ssim_scales"]
    click.echo(f"{stream} vs {reference}: gsvc {result['kind']}, {result['width']}x{result['height']}, "
               f"{len(result['layers'])} of {result['layers_encoded']} layers"
               + ("" if scales == 5 else
                  f" (MS-SSIM on {scales} scale{'s' if scales != 1 else ''}: picture too small for 5)"
                  if scales else " (MS-SSIM: picture too small)"))
    click.echo(f"{'layers':>6} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} {'MS-SSIM':>8} {'decode ms':>9}")
    for row in result["layers"]:
        ms = "-" if row["ms_ssim"] is None else f"{row['ms_ssim']:.5f}"
        click.echo(f"{row['layers']:>6} {row['bytes']:>8} {row['bpp']:>7.4f} {row['psnr']:>8.2f} {ms:>8} "
                   f"{row['decode_ms']:>9.1f}")
