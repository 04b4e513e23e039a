"""Command line: gsvc encode | decode | info | eval (images and videos)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import click

from . import __version__
from .errors import GsvcError


#: Exit statuses (README, "Exit codes").
EXIT_FAILED = 1  # bad input data or a failed operation
EXIT_USAGE = 2  # bad flags or values (click's own convention)
EXIT_INTERNAL = 3  # a bug in gsvc
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a tool killed by a closed pipe reports it
EXIT_INTERRUPTED = 130  # 128 + SIGINT

ISSUES_URL = "https://github.com/gsvc-codec/gsvc/issues"


def _fail(message: str, status: int = EXIT_FAILED) -> None:
    click.echo(f"gsvc: {message}" if status == EXIT_INTERRUPTED else f"gsvc: error: {message}", err=True)
    sys.exit(status)


def run() -> None:
    """The ``gsvc`` program (console script and ``python -m gsvc``): ``main``, except that
    an interrupted run leaves at once. Its outputs are cleaned up by then (the interrupt
    unwound through them); with torch's and numba's thread pools alive, the interpreter's
    own shutdown after a Ctrl-C sometimes ended the process by SIGINT (status -2) instead
    of 130."""
    try:
        main()
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(EXIT_INTERRUPTED)
        raise


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (``gsvc info x.gsv | head -1``): stop without a word.
    stdout is pointed at /dev/null so that the interpreter's last flush cannot complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


class _Group(click.Group):
    """Turns every failure into one line on stderr and a documented exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except GsvcError as e:
            _fail(str(e))
        except ValueError as e:
            if not _is_stream_error(e):
                _internal_error(e)
            _fail(str(e))
        except BrokenPipeError:
            _quiet_broken_pipe()
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _fail(f"{where}{e.strerror or e}")
        except MemoryError:
            _fail("out of memory (try fewer Gaussians or a smaller picture)")
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as e:
            _internal_error(e)


def _is_stream_error(e: BaseException) -> bool:
    """A bitstream.StreamError (looked up only if bitstream was loaded: then it can be one;
    a flag error must not pay for importing it)."""
    bitstream = sys.modules.get("bitstream")
    return bitstream is not None and isinstance(e, bitstream.StreamError)


def _internal_error(e: Exception) -> None:
    """A bug: still one line and its own status; the traceback on request."""
    if os.environ.get("GSVC_DEBUG"):
        raise e
    _fail(f"internal error: {type(e).__name__}: {e} (please report it at {ISSUES_URL}; "
          "GSVC_DEBUG=1 shows a traceback)", EXIT_INTERNAL)


def _overwrite_options(f):
    """ffmpeg's habits: -y replaces an existing output, -n never does; without either,
    a terminal is asked and anything else is refused."""
    f = click.option("-n", "--no-overwrite", "overwrite", flag_value=False,
                     help="Never replace an existing output (fail instead).")(f)
    f = click.option("-y", "--overwrite", "overwrite", flag_value=True, default=None,
                     help="Replace an existing output without asking.")(f)
    return f


#: The file name that means stdin (as an input) or stdout (as -o).
STDIO = "-"


def _is_stdio(path) -> bool:
    return str(path) == STDIO


def _is_stream_output(path) -> bool:
    """stdout, or an existing special file (/dev/null, a FIFO): written once, in order,
    from a finished temporary file; the format comes from --format, not an extension."""
    from .files import is_special

    return _is_stdio(path) or is_special(path)


def _claim_output(outputs: list[Path], source, overwrite: bool | None) -> None:
    """Refuse to write onto the input (even with -y) or over an existing file unless allowed.

    Special files (/dev/null, a FIFO) are written in place and never count as existing.
    """
    from .files import is_special, same_file
    from .media import in_frame_pattern

    for out in outputs:
        if not _is_stdio(source) and (same_file(out, source) or in_frame_pattern(out, source)):
            raise GsvcError(f"{out}: is the input file; choose another output")
        if out.is_dir():
            raise GsvcError(f"{out}: is a directory")
    _confirm_replace([out for out in outputs if out.exists() and not is_special(out)], overwrite)


def _confirm_replace(existing: list[Path], overwrite: bool | None) -> None:
    if not existing or overwrite is True:
        return
    one = len(existing) == 1
    what = str(existing[0]) if one else f"{existing[0]} and {len(existing) - 1} more files"
    exist = "exists" if one else "exist"
    if overwrite is None and sys.stdin.isatty() and sys.stderr.isatty():
        if click.confirm(f"gsvc: {what} already {exist}. Overwrite?", default=False, err=True):
            return
        raise GsvcError(f"{what}: not overwritten")
    raise GsvcError(f"{what} already {exist} (use -y to overwrite)")


def _stdin_bytes() -> bytes:
    """All of stdin, for an input given as ``-``."""
    if sys.stdin.isatty():
        raise GsvcError("input -: stdin is a terminal; pipe or redirect a file into it")
    data = sys.stdin.buffer.read()
    if not data:
        raise GsvcError("input -: stdin is empty")
    return data


@contextlib.contextmanager
def _input_file(path: Path) -> Iterator[Path]:
    """The input as a file: ``path`` itself, or stdin copied to a temporary file for ``-``
    (media readers need a file); errors name it "stdin"."""
    if not _is_stdio(path):
        yield path
        return
    data = _stdin_bytes()
    with tempfile.TemporaryDirectory(prefix="gsvc-") as folder:
        tmp = Path(folder) / "stdin"
        tmp.write_bytes(data)
        try:
            yield tmp
        except GsvcError as e:
            raise GsvcError(str(e).replace(str(tmp), "stdin")) from None


@contextlib.contextmanager
def _output_file(path: Path, suffix: str) -> Iterator[Path]:
    """Where to write: ``path`` itself, or for stdout (``-``) and special files a
    temporary file (named with ``suffix``, which picks the format) copied there once it
    is complete."""
    if not _is_stream_output(path):
        yield path
        return
    if _is_stdio(path) and sys.stdout.isatty():
        raise GsvcError("-o -: stdout is a terminal; redirect it to a file or a pipe")
    with tempfile.TemporaryDirectory(prefix="gsvc-") as folder:
        tmp = Path(folder) / f"output{suffix}"
        yield tmp
        with open(tmp, "rb") as f:
            if _is_stdio(path):
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            else:
                with open(path, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)


def _frame_files_present(pattern: Path, count: int) -> list[Path]:
    """Files of a frame pattern (f_%04d.png) numbered 1..count that exist already; found
    by listing the folder once, so a stream that claims 2^24 frames costs nothing."""
    from .media import numbered_names

    folder = pattern.parent if str(pattern.parent) else Path(".")
    if not folder.is_dir():
        return []
    numbered = numbered_names(pattern)
    present = []
    for entry in os.scandir(folder):
        match = numbered.fullmatch(entry.name)
        if match and 1 <= int(match.group(1)) <= count and pattern.name % int(match.group(1)) == entry.name:
            present.append(folder / entry.name)
    return sorted(present)


def _parse_targets(ctx, param, text: str | None) -> tuple[float, ...] | None:
    """--bpp / --bytes: cumulative sizes after each layer, increasing."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, one per layer, e.g. 0.25,0.5,1.0") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise click.BadParameter("every target must be a positive number")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise click.BadParameter("targets are cumulative: each layer's must exceed the one before")
    if len(values) > 255:
        raise click.BadParameter(f"{len(values)} layers: a stream holds at most 255")
    return values


def _parse_counts(ctx, param, text: str | None) -> tuple[int, ...] | None:
    from bitstream.limits import MAX_GAUSSIANS

    if text is None:
        return None
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated whole numbers, e.g. 5000,2000,2000") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("every layer needs at least one Gaussian")
    if len(counts) > 255:
        raise click.BadParameter(f"{len(counts)} layers: a stream holds at most 255")
    if sum(counts) > MAX_GAUSSIANS:
        raise click.BadParameter(f"{sum(counts):,} Gaussians in all: a picture holds at most {MAX_GAUSSIANS:,}")
    return counts


def _finite(value: float) -> float:
    if value != value:  # NaN passes click's range checks
        raise click.BadParameter("not a number")
    return value


def _parse_size(ctx, param, text: str | None) -> tuple[int, int] | None:
    from bitstream.limits import MAX_PIXELS, MAX_SIDE

    from .media import parse_size

    if text is None:
        return None
    try:
        w, h = parse_size(text)
    except GsvcError as e:
        raise click.BadParameter(str(e).removeprefix("--size ")) from None
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise click.BadParameter(f"{text}: above the limit of {MAX_SIDE} pixels a side and {MAX_PIXELS:,} in all")
    return w, h


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gsvc")
def main() -> None:
    """Scalable image and video codec built on layered 2D Gaussian splatting."""


@dataclass
class _EncodeOptions:
    """The ``encode`` command's options, one field per flag (click passes them by name):
    a new flag is a ``click.option`` line on ``encode`` and a field here."""

    gaussians: tuple[int, ...] | None = None
    bpp: tuple[float, ...] | None = None
    nbytes: tuple[float, ...] | None = None
    layers: int | None = None
    iterations: int | None = None
    preset: str = "medium"
    training: str = "joint"
    resolution_layers: bool = False
    size: tuple[int, int] | None = None
    max_frames: int | None = None
    start: float = 0.0
    fps: float | None = None
    gop: int | None = None
    no_global_motion: bool = False
    device: str = "auto"
    seed: int = 0
    jobs: int = 1
    ray: str | None = None
    quiet: bool = False
    overwrite: bool | None = None

    def check(self) -> None:
        """Usage errors (exit 2) and a missing Ray (exit 1), before any heavy import."""
        if self.gaussians is not None and self.layers is not None and len(self.gaussians) != self.layers:
            raise click.UsageError(f"--layers {self.layers} disagrees with --gaussians ({len(self.gaussians)} layers)")
        given = [flag for flag, v in (("--gaussians", self.gaussians), ("--bpp", self.bpp), ("--bytes", self.nbytes))
                 if v is not None]
        if len(given) > 1:
            raise click.UsageError(f"{' and '.join(given)} exclude each other (size targets choose the counts)")
        targets = self.bpp or self.nbytes
        if targets is not None and self.layers is not None and len(targets) != self.layers:
            raise click.UsageError(f"--layers {self.layers} disagrees with {given[0]} ({len(targets)} layers)")
        if self.ray is not None and self.jobs != 1:
            raise click.UsageError("--jobs and --ray exclude each other (Ray decides how many tasks run)")
        if self.ray is not None:
            import importlib.util

            from .scale_out import RAY_HINT

            if importlib.util.find_spec("ray") is None:
                raise GsvcError(RAY_HINT)

    def settings_for(self, w: int, h: int):
        """The encoder settings for a picture (or video frames) of w x h."""
        from .encoder import EncodeSettings
        from .presets import train_settings
        from .train import RESOLUTION_LAYERS

        from .rate_control import byte_targets

        if self.bpp is not None or self.nbytes is not None:
            targets = byte_targets(w, h, bpp=self.bpp, nbytes=self.nbytes)
            gaussians = None
        else:
            targets = None
            gaussians = self.gaussians  # None: the default counts, a ceiling
        return EncodeSettings(
            gaussians=gaussians,
            layers=self.layers or 3,
            targets=targets,
            train=train_settings(self.preset, self.iterations, mode=self.training, seed=self.seed,
                                 resolution_scales=RESOLUTION_LAYERS if self.resolution_layers else None),
            device=self.device,
        )

    def schedule(self):
        from .scale_out import Schedule

        return Schedule(jobs=self.jobs, ray=self.ray)


@main.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output .gsv (default: INPUT with .gsv; - writes to stdout); several inputs or a "
                   "directory: a directory (created if missing), one NAME.gsv per picture.")
@click.option("--gaussians", callback=_parse_counts, help="Gaussians per layer, comma-separated, kept as given (default: 5000,2000,2000 at 768x512, scaled with the area, at most: Gaussians not worth their bits are dropped).")
@click.option("--bpp", callback=_parse_targets, metavar="B1,B2,...",
              help="Pictures: size targets in bits per pixel after each layer, cumulative (e.g. 0.25,0.5,1.0); "
                   "the encoder picks the Gaussian counts, and each layer's size lands within 5% below its target.")
@click.option("--bytes", "nbytes", callback=_parse_targets, metavar="N1,N2,...",
              help="As --bpp, in bytes of the stream after each layer (header included).")
@click.option("--layers", type=click.IntRange(1, 255), help="Number of layers when --gaussians is not given (default 3).")
@click.option("--iterations", type=click.IntRange(1), help="Training iterations in total (overrides --preset; video: per I-frame).")
@click.option("--preset", type=click.Choice(["fast", "medium", "slow"]), default="medium", show_default=True)
@click.option("--training", type=click.Choice(["joint", "sequential"]), default="joint", show_default=True,
              help="joint: P-GSVC (all layers every step); sequential: LIG-style baseline.")
@click.option("--resolution-layers", is_flag=True,
              help="Train layer 1 as a quarter-size and layers 1-2 as a half-size picture too (thumbnails).")
@click.option("--size", metavar="WxH", callback=_parse_size,
              help="Resize the input first (one side 0 keeps the aspect ratio).")
@click.option("--frames", "max_frames", type=click.IntRange(1, 1 << 24), help="Video: encode at most this many frames.")
@click.option("--start", type=click.FloatRange(0), default=0.0, help="Video: start at this time (seconds).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), metavar="RATE",
              help="Frame-pattern input (frames/f_%04d.png): its frame rate (default 25, as ffmpeg's).")
@click.option("--gop", type=click.IntRange(1, 1 << 24),
              help="Video: closed GOPs of N frames, each starting with an I-frame (default 30; 1 = all I-frames).")
@click.option("--no-global-motion", is_flag=True,
              help="Video: P-frames predict from the previous frame as it stands, not moved by the camera's "
                   "pan, zoom and roll.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", "-j", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Encode GOPs (or the pictures of a batch) in N worker processes; same bytes as 1.")
@click.option("--ray", metavar="ADDRESS",
              help="Encode GOPs (or pictures) as Ray tasks: auto (the running cluster, else a local one) "
                   "or a cluster address such as ray://head:10001. Needs pip install 'gsvc[ray]'.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@_overwrite_options
def encode(inputs, output, **options):
    """Fit layered Gaussians to an image or a video (INPUT; - reads stdin) and write a .gsv stream.

    Several pictures, or a directory of them, make a batch: one .gsv each in the -o directory.
    """
    opts = _EncodeOptions(**options)
    opts.check()
    batch = _batch_inputs(inputs)
    if batch is not None:
        _encode_batch(batch, output, opts)
        return
    input = inputs[0]
    if output is None:
        if _is_stdio(input):
            raise click.UsageError("reading stdin (-) needs -o (a file, or - for stdout)")
        output = _default_output(input)
    if not _is_stdio(output):
        _claim_output([output], input, opts.overwrite)
        if output.suffix.lower() != ".gsv":
            _note(f"{output}: a gsvc stream is written whatever the extension (.gsv is usual)")
    with _input_file(input) as source, _output_file(output, ".gsv") as dest:
        _encode(source, dest, opts, table_to_stderr=_is_stdio(output))


def _encode(input, output, opts: _EncodeOptions, table_to_stderr: bool) -> None:
    from fractions import Fraction

    from .files import check_writable
    from .media import pattern_start, probe_video

    video = probe_video(input, pattern_fps=Fraction(opts.fps).limit_denominator(1001) if opts.fps else None)
    check_writable(output)  # fail on an unwritable destination before minutes of training
    if opts.fps and not (video is not None and pattern_start(input) is not None):
        _note(f"{input}: --fps applies to frame-pattern input (f_%04d.png) only; ignored")
    if video is not None:
        _encode_video(video, output, opts, table_to_stderr)
        return
    for flag, value in (("--frames", opts.max_frames), ("--start", opts.start or None), ("--gop", opts.gop)):
        if value is not None:
            _note(f"{input} is a still picture: {flag} applies to videos only")
    _encode_image(input, output, opts, table_to_stderr)


def _note(message: str) -> None:
    click.echo(f"gsvc: note: {message}", err=True)


def fit_status(done: int, total: int, psnr: float) -> str:
    """The progress bar's text after ``done`` of ``total`` iterations. After the last one
    the encoder still solves and rounds the colours (seconds at Kodak's size, about a
    minute at 12 MP) while the bar stands full: say so."""
    text = f"PSNR {psnr:.2f} dB"
    return text + ", now placing the colours" if done >= total else text


def _encode_image(input, output, opts: _EncodeOptions, table_to_stderr) -> None:
    from .decoder import decode_image, stream_info
    from .encoder import encode_image
    from .files import atomic_output
    from .media import read_image
    from .metrics import psnr

    rgb = read_image(input, notice=_note, size=opts.size)
    h, w = rgb.shape[:2]
    settings = opts.settings_for(w, h)
    counts = None if settings.targets else settings.counts_for(w, h)
    start = time.perf_counter()
    total = settings.train.iterations
    if opts.quiet:
        result = encode_image(rgb, settings)
    else:
        if counts is None:
            sizes = ",".join(str(t) for t in settings.targets)
            click.echo(f"{input}: {w}x{h}, {len(settings.targets)} layers, cumulative targets {sizes} bytes", err=True)
        else:
            ceiling = "up to " if settings.gaussians is None else ""  # (the default counts: a ceiling)
            click.echo(f"{input}: {w}x{h}, {len(counts)} layers of {ceiling}{','.join(map(str, counts))} Gaussians",
                       err=True)
        with click.progressbar(length=total, label="fitting", file=sys.stderr,
                               item_show_func=lambda p: p, show_pos=True) as bar:
            def progress(done: int, iterations: int, value: float) -> None:
                bar.update(done - bar.pos, fit_status(done, iterations, value))  # (early stopping skips ahead)

            result = encode_image(rgb, settings, progress)
    seconds = time.perf_counter() - start
    with atomic_output(output) as tmp:
        tmp.write_bytes(result.data)
    if not opts.quiet:
        info = stream_info(result.data)
        click.echo(f"wrote {output}: {len(result.data)} bytes, {info['bpp']:.3f} bpp, {seconds:.1f} s", err=True)
        rows = []
        for row in info["layers"]:
            dec = decode_image(result.data, layers=row["index"])
            rows.append((row, psnr(dec, rgb)))
        _print_table(rows, table_to_stderr)


#: Picture extensions taken from a directory given as the input of a batch.
BATCH_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _default_output(input: Path) -> Path:
    """INPUT.gsv beside the input; for a frame pattern (f_%04d.png) its name without the
    number field (f.gsv)."""
    import re

    from .media import is_frame_pattern

    if not is_frame_pattern(input):
        return input.with_suffix(".gsv")
    stem = re.sub(r"[_.\- ]*%0?\d*d[_.\- ]*", "_", input.stem).strip("_") or "frames"
    return input.with_name(stem + ".gsv")


def _batch_inputs(inputs: tuple[Path, ...]) -> list[Path] | None:
    """The pictures of a batch (several inputs, or directories of pictures, in name
    order), or None for a single input."""
    if len(inputs) == 1 and not inputs[0].is_dir():
        return None
    paths = []
    for path in inputs:
        if _is_stdio(path):
            raise click.UsageError("stdin (-) cannot be part of a batch of inputs")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in BATCH_EXTENSIONS and p.is_file())
            if not found:
                kinds = ", ".join(sorted(BATCH_EXTENSIONS))
                raise GsvcError(f"{path}: is a directory with no pictures ({kinds}) to encode")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _batch_outputs(paths: list[Path], output: Path | None, overwrite: bool | None) -> list[Path]:
    """One DIR/NAME.gsv per picture (DIR is created by the caller once the inputs are
    checked, so a refused batch leaves nothing behind); -y/-n apply to every file."""
    if output is None or _is_stdio(output):
        raise click.UsageError("several inputs (or a directory) need -o DIRECTORY")
    if output.exists() and not output.is_dir():
        raise GsvcError(f"{output}: not a directory (a batch writes one .gsv per picture into a directory)")
    outputs = [output / f"{p.stem}.gsv" for p in paths]
    seen: dict[Path, Path] = {}
    for src, out in zip(paths, outputs):
        if out in seen:
            raise GsvcError(f"{seen[out]} and {src} would both be written to {out}")
        seen[out] = src
    for src, out in zip(paths, outputs):
        _claim_output([out], src, overwrite=True)  # the input itself, a directory in the way
    _confirm_replace([out for out in outputs if out.exists()], overwrite)
    return outputs


def _encode_batch(paths: list[Path], output: Path | None, opts: _EncodeOptions) -> None:
    """Pictures as independent units (in worker processes or Ray tasks if asked), each
    written to its own file, atomically, in input order as they complete."""
    from .files import atomic_output, check_input_file, check_writable
    from .media import probe_video, read_image
    from .scale_out import ImageUnit, encode_image_batch

    outputs = _batch_outputs(paths, output, opts.overwrite)
    for path in paths:
        check_input_file(path)
        if probe_video(path) is not None:
            raise GsvcError(f"{path}: a video; a batch takes pictures only (encode videos one at a time)")
    output.mkdir(parents=True, exist_ok=True)  # only now: a refused batch leaves no directory
    check_writable(outputs[0])

    def units():
        for index, path in enumerate(paths):
            rgb = read_image(path, notice=_note, size=opts.size)
            yield ImageUnit(index, str(path), rgb, opts.settings_for(rgb.shape[1], rgb.shape[0]))

    for done in encode_image_batch(units(), opts.schedule()):
        out = outputs[done.unit.index]
        with atomic_output(out) as tmp:
            tmp.write_bytes(done.result.data)
        if not opts.quiet:
            h, w = done.unit.rgb.shape[:2]
            click.echo(f"[{done.done}/{len(paths)}] wrote {out}: {len(done.result.data)} bytes, "
                       f"{8 * len(done.result.data) / (w * h):.3f} bpp, {done.result.seconds:.1f} s; "
                       f"{done.done / done.seconds:.2f} pictures/s", err=True)


def _encode_video(video, output, opts: _EncodeOptions, table_to_stderr) -> None:
    from .decoder import stream_info
    from .files import atomic_output
    from .media import fit_size, read_video
    from .video_encoder import CodingStructure, encode_video

    if opts.bpp is not None or opts.nbytes is not None:
        raise GsvcError(f"{video.path}: --bpp and --bytes apply to pictures; for a video use --gaussians or --preset")
    if video.has_audio:
        _note(f"{video.path}: has audio; gsvc codes the pictures only")
    if video.sample_aspect != 1:
        sar = video.sample_aspect
        _note(f"{video.path}: non-square pixels ({sar.numerator}:{sar.denominator}); read at its display "
              f"size {video.width}x{video.height}, as players show it")
    w, h = fit_size(opts.size, video.width, video.height)
    settings = opts.settings_for(w, h)
    structure = CodingStructure(global_motion=not opts.no_global_motion, **({"gop": opts.gop} if opts.gop else {}))
    estimate = video.frames or round(video.duration * float(video.fps))
    if opts.start:
        estimate = max(0, estimate - round(opts.start * float(video.fps)))
    if opts.max_frames:
        estimate = min(estimate, opts.max_frames) if estimate else opts.max_frames
    frames = read_video(video, start=opts.start, max_frames=opts.max_frames, size=opts.size, notice=_note)
    schedule = opts.schedule()
    begin = time.perf_counter()
    with atomic_output(output) as tmp, open(tmp, "wb") as out:
        if opts.quiet:
            summary = encode_video(frames, out, w, h, video.fps, settings, structure, schedule=schedule)
        else:
            counts = settings.counts_for(w, h)
            units = -(-max(1, estimate) // structure.gop)
            click.echo(f"{video.path}: {w}x{h} video, {float(video.fps):.3f} fps, {len(counts)} layers of "
                       f"{','.join(map(str, counts))} Gaussians per frame, GOP {structure.gop}", err=True)
            with click.progressbar(length=max(1, estimate), label="frames", file=sys.stderr,
                                   item_show_func=lambda p: p, show_pos=True) as bar:
                last = []

                def on_frame(r) -> None:
                    last[:] = [r]

                def on_progress(p) -> None:
                    r = last[0]
                    bar.update(1, f"GOPs {p.units}/{units}, {p.fps:.2f} frames/s; "
                                  f"frame {r.index} {r.type} {r.psnr:.2f} dB")

                summary = encode_video(frames, out, w, h, video.fps, settings, structure, on_frame,
                                       schedule=schedule, on_progress=on_progress)
    seconds = time.perf_counter() - begin
    if opts.quiet:
        return
    info = stream_info(output)
    kinds = summary.by_type
    click.echo(f"wrote {output}: {info['frames']} frames ({kinds['I'].frames} I, {kinds['P'].frames} P), "
               f"{info['total_bytes']} bytes, {info['layers'][-1]['cumulative_kbps']:.1f} kbit/s, "
               f"{info['bpp']:.4f} bpp, {seconds:.1f} s ({info['frames'] / seconds:.2f} frames/s)", err=True)
    for t, totals in kinds.items():
        if totals.frames:
            n = totals.frames
            click.echo(f"  {t}-frames: mean {totals.bytes / n:.0f} bytes, mean PSNR {totals.psnr / n:.2f} dB, "
                       f"{totals.seconds / n:.1f} s/frame", err=True)
    _print_table([(row, None) for row in info["layers"]], table_to_stderr)


def _print_table(rows, to_stderr: bool = False) -> None:
    click.echo(f"{'layer':>5} {'gaussians':>9} {'bytes':>8} {'bpp':>7} {'cum. bytes':>10} {'cum. bpp':>8}"
               + (f" {'PSNR dB':>8} {'gain dB':>7}" if rows and rows[0][1] is not None else ""), err=to_stderr)
    prev = None
    for row, value in rows:
        line = (f"{row['index']:>5} {row['gaussians']:>9} {row['bytes']:>8} {row['bpp']:>7.4f} "
                f"{row['cumulative_bytes']:>10} {row['cumulative_bpp']:>8.4f}")
        if value is not None:
            gain = "" if prev is None else f"{value - prev:+.2f}"
            line += f" {value:>8.2f} {gain:>7}"
            prev = value
        click.echo(line, err=to_stderr)


#: ``decode --format``: the container written to stdout (``-o -``), by extension.
DECODE_FORMATS = ("png", "jpg", "mkv", "avi", "mp4", "mov")


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Image: .png, .jpg. Video: .mp4/.mov (H.264), .mkv/.avi (FFV1, lossless) or f_%04d.png. "
                   "- writes to stdout.")
@click.option("--format", "fmt", type=click.Choice(DECODE_FORMATS),
              help="With -o -: the format written to stdout (default png for images, mkv for videos).")
@click.option("--layers", type=click.IntRange(1, 255), help="Decode only the first N layers (default: all).")
@click.option("--scale", type=click.FloatRange(0, 1024, min_open=True), default=1.0, show_default=True,
              callback=lambda ctx, param, v: _finite(v), help="Render at this multiple of the encoded size.")
@click.option("--size", metavar="WxH", callback=_parse_size,
              help="Render at this size instead (one side 0 keeps the aspect ratio, e.g. 1536x0).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@_overwrite_options
def decode(input, output, fmt, layers, scale, size, device, overwrite):
    """Decode a .gsv stream (INPUT; - reads stdin), optionally only its first layers, to an image or a video."""
    from bitstream.layout import KIND_VIDEO

    from .decoder import stream_kind

    if fmt is not None and not _is_stream_output(output) and output.suffix.lower().lstrip(".") != fmt:
        raise click.UsageError(f"--format {fmt} disagrees with -o {output} (the extension picks a file's format)")
    source = _stdin_bytes() if _is_stdio(input) else _checked_input(input)
    if size is not None and scale != 1.0:
        raise click.UsageError("give --scale or --size, not both")
    if stream_kind(source) == KIND_VIDEO:
        _decode_video(source, input, output, fmt or "mkv", layers, scale, size, device, overwrite)
    else:
        _decode_image(source, input, output, fmt or "png", layers, scale, size, device, overwrite)


def _checked_input(path: Path) -> Path:
    from .files import check_input_file

    return check_input_file(path)


def _decode_image(source, input, output, fmt, layers, scale, size, device, overwrite) -> None:
    from .decoder import decode_image
    from .media import IMAGE_WRITERS, write_image

    if fmt not in ("png", "jpg"):
        raise click.UsageError(f"--format {fmt}: {input} is an image stream (use png or jpg)")
    if not _is_stream_output(output):
        if output.suffix.lower() not in IMAGE_WRITERS:
            raise GsvcError(f"{output}: unsupported output extension {output.suffix or '(none)'} (use .png or .jpg)")
        _claim_output([output], input, overwrite)
    rgb = decode_image(source, layers=layers, scale=scale, device=device, size=size, partial=True,
                       notice=lambda line: _note(f"{_shown(input)}: {line}"))
    with _output_file(output, f".{fmt}") as dest:
        write_image(dest, rgb)


def _shown(path) -> str:
    """How an input is named in messages."""
    return "stdin" if _is_stdio(path) else str(path)


def _decode_video(source, input, output, fmt, layers, scale, size, device, overwrite) -> None:
    from .decoder import open_video, output_size
    from .media import check_video_output, is_frame_pattern, video_output

    if fmt in ("png", "jpg") and _is_stream_output(output):
        raise click.UsageError(f"--format {fmt}: {input} is a video stream (use mkv, avi, mp4 or mov)")
    if not _is_stream_output(output):
        check_video_output(output)
    from .decoder import cut_note

    with open_video(source, layers, partial=True) as reader:
        if reader.frame_count == 0:
            raise GsvcError(f"{_shown(input)}: the stream holds no frames")
        out = output_size(reader.width, reader.height, scale, size)
        if is_frame_pattern(output):
            _claim_output(_frame_files_present(output, reader.frame_count), input, overwrite)
        elif not _is_stream_output(output):
            _claim_output([output], input, overwrite)
        frames = reader.frames(scale=scale, device=device, size=size)
        first = next(frames, None)  # before any output exists: a stream cut inside frame 0 writes nothing
        if first is None:
            raise GsvcError(f"{_shown(input)}: the stream is cut short inside its first frame: nothing to decode")
        with (_output_file(output, f".{fmt}") as dest,
              video_output(dest, out.width, out.height, reader.fps, notice=_note) as write):
            write(first.rgb)
            for frame in frames:
                write(frame.rgb)
        if reader.cut_at is not None:
            _note(f"{_shown(input)}: {cut_note(reader.cut_at, reader.frame_count, 'frame')}")


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(input, as_json):
    """Show a stream's layers and their sizes (INPUT; - reads stdin)."""
    from .decoder import stream_info

    data = stream_info(_stdin_bytes() if _is_stdio(input) else input)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{_shown(input)}: gsvc {data['kind']} (format {data['format_version']}), "
               f"{data['width']}x{data['height']}, {len(data['layers'])} of {data['layers_encoded']} layers, "
               f"{data['total_bytes']} bytes ({data['bpp']:.4f} bpp, header {data['header_bytes']} bytes)"
               + ("" if data["complete"] else "; incomplete: the file is cut short"))
    if data["kind"] == "video":
        frames = data["frame_list"]
        gops = data["i_frames"]
        of = "" if data["frames"] == data["frames_encoded"] else f" of {data['frames_encoded']}"
        click.echo(f"{data['frames']}{of} frames at {data['fps']:.3f} fps ({data['duration']:.2f} s), "
                   f"{gops} GOP{'s' if gops != 1 else ''} (I-frames; longest GOP allowed {data['gop']}), "
                   f"{data['layers'][-1]['cumulative_kbps']:.1f} kbit/s; per-layer totals over all frames:")
    _print_table([(row, None) for row in data["layers"]])
    if data["kind"] == "video":
        click.echo(f"{'frame':>5} {'type':>4} " + " ".join(f"{'L' + str(i + 1) + ' bytes':>9}"
                                                       for i in range(len(data['layers'])))
                   + "  camera (moved layers)")
        for f in frames:
            motion = f.get("motion")
            camera = (f"  pan {motion['pan'][0]:+.2f},{motion['pan'][1]:+.2f} px, zoom {motion['zoom']:.4f}, "
                      f"rotation {motion['rotation']:+.3f} deg" if motion else "")
            click.echo(f"{f['index']:>5} {f['type']:>4} " + " ".join(f"{b:>9}" for b in f["bytes"]) + camera)


def _parse_frame_range(ctx, param, text: str | None) -> tuple[int, int | None] | None:
    """'30-89' -> (30, 89); '30-' -> (30, None); '30' -> (30, 30). Frame indices as `info` lists them."""
    if text is None:
        return None
    first, dash, last = text.partition("-")
    try:
        a = int(first)
        b = (int(last) if last else None) if dash else a
    except ValueError:
        raise click.BadParameter(f"{text}: expected FIRST-LAST frame indices, e.g. 30-89 (or 30-)") from None
    if a < 0 or (b is not None and b < a):
        raise click.BadParameter(f"{text}: expected 0 <= FIRST <= LAST")
    return a, b


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The new .gsv (- for stdout).")
@click.option("--layers", type=click.IntRange(1, 255), help="Keep the first N layers (default: all).")
@click.option("--frames", "frame_range", metavar="FIRST-LAST", callback=_parse_frame_range,
              help="Video: keep these frames (indices as `gsvc info` lists them; FIRST moves back to its "
                   "GOP's I-frame).")
@_overwrite_options
def extract(input, output, layers, frame_range, overwrite):
    """Write a sub-stream of INPUT (- reads stdin): fewer layers and, for a video, a range of
    frames; chunks are copied, nothing is re-encoded."""
    from bitstream.extract import extract as extract_stream

    from .files import atomic_output

    data = _stdin_bytes() if _is_stdio(input) else _checked_input(input).read_bytes()
    if not _is_stdio(output):
        _claim_output([output], input, overwrite)
    first, last = frame_range or (0, None)
    new, got = extract_stream(data, layers, first, last)
    with _output_file(output, ".gsv") as dest, atomic_output(dest) as tmp:
        tmp.write_bytes(new)
    what = f"{got.layers} of {got.layers_source} layers"
    if got.frames:
        what += f", frames {got.first_frame}-{got.first_frame + got.frames - 1} ({got.frames} of {got.frames_source})"
        if frame_range and got.first_frame < first:
            _note(f"frame {first} is a P-frame: the extract starts at its GOP's I-frame, frame {got.first_frame}")
    click.echo(f"wrote {'stdout' if _is_stdio(output) else output}: {what}, {len(new)} bytes", err=True)


@main.command("eval")
@click.argument("stream", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The original image or video.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Image: decodes per layer count; decode ms is their median.")
@click.option("--start", type=click.FloatRange(0), default=0.0,
              help="Video: the reference's frames from this time (seconds), as given to encode.")
def eval_(stream, reference, as_json, repeats, start):
    """Rate-distortion of every layer count: bytes, bpp, PSNR, MS-SSIM, decode speed (STREAM; - reads stdin)."""
    from bitstream.layout import KIND_VIDEO

    from .decoder import stream_kind
    from .evaluate import evaluate_stream
    from .media import read_image

    data = _stdin_bytes() if _is_stdio(stream) else _checked_input(stream).read_bytes()
    if stream_kind(data) == KIND_VIDEO:
        _eval_video(stream, data, reference, as_json, start)
        return
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


def _eval_video(stream, data: bytes, reference, as_json: bool, start: float) -> None:
    from .decoder import stream_info
    from .evaluate import evaluate_video
    from .media import probe_video, read_video

    info = stream_info(data)
    ref = probe_video(reference)
    if ref is None:
        raise GsvcError(f"--reference {reference}: a still picture, but {stream} is a video")
    size = (info["width"], info["height"])
    if (ref.width, ref.height) != size:
        _note(f"--reference {reference} is {ref.width}x{ref.height}: compared after resizing it to "
              f"{size[0]}x{size[1]}, as encode --size does")

    def frames():
        return read_video(ref, start=start, max_frames=info["frames"], size=size, notice=_note)

    result = evaluate_video(data, frames, reference_name=f"--reference {reference}")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{stream} vs {reference}: gsvc video, {result['width']}x{result['height']}, {result['frames']} frames "
               f"at {result['fps']:.3f} fps, {len(result['layers'])} of {result['layers_encoded']} layers")
    click.echo(f"{'layers':>6} {'bytes':>9} {'bpp':>7} {'kbit/s':>8} {'PSNR dB':>8} {'worst':>6} {'MS-SSIM':>8} "
               f"{'dec. fps':>8}")
    for row in result["layers"]:
        ms = "-" if row["ms_ssim"] is None else f"{row['ms_ssim']:.5f}"
        fps = "-" if row["decode_fps"] is None else f"{row['decode_fps']:.1f}"
        click.echo(f"{row['layers']:>6} {row['bytes']:>9} {row['bpp']:>7.4f} {row['kbps']:>8.1f} {row['psnr']:>8.2f} "
                   f"{row['worst_psnr']:>6.2f} {ms:>8} {fps:>8}")
