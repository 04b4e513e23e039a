"""Scale-out: independent units of work on local worker processes or Ray tasks.

A *unit* is a piece of an encode that needs nothing from any other: a closed GOP of a
video (``video_encoder.GopUnit``), or one picture of a batch (``ImageUnit``). The
parent reads the input, packs each unit with its pixels, hands it to a worker and
gets back the coded bytes; ``run_units`` yields the results in unit order as they
complete, so the caller writes the stream in order while later units still run.

* **Where** units run is a ``Schedule``: in this process (``jobs=1``, the default),
  in ``jobs`` worker processes (``spawn`` context: torch and ``fork`` do not mix), or
  as Ray tasks (``ray="auto"`` joins the running cluster or starts a local one; an
  address such as ``ray://head:10001`` names one).
* **Bounded memory**: at most ``slots`` units run at once and at most ``window``
  units (running, or done and waiting for an earlier one) are held by the parent.
* **Same bytes**: a unit's result depends only on the unit (its own seed, no shared
  state), so any schedule gives the same output.
* **Threads**: each worker runs ``threads`` torch and numba threads, so that
  ``slots x threads`` does not exceed the cores (no oversubscription).
* **Failures**: a unit whose task raises, or whose worker dies, is retried
  ``retries`` times (once by default); then ``UnitFailed`` names the unit. Ctrl-C
  (KeyboardInterrupt) cancels the tasks and stops the workers.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from .errors import GsvcError

U = TypeVar("U")
R = TypeVar("R")

RAY_HINT = "Ray is not installed: pip install 'gsvc[ray]' (or pip install 'ray>=2')"


class UnitFailed(GsvcError):
    """A unit failed on every attempt; the message names it and the last cause."""


@dataclass(frozen=True)
class Schedule:
    """Where and how many units run at once."""

    #: worker processes on this machine; 1 runs the units one by one in this process
    jobs: int = 1
    #: None: local; "auto": join the running Ray cluster, else start a local one;
    #: anything else: a Ray cluster address ("ray://head:10001")
    ray: str | None = None
    #: torch/numba threads per worker; None: the cores divided among the local workers
    #: (Ray: 1, with one CPU reserved per task)
    threads: int | None = None
    #: units held by the parent at once (running or waiting to be written); None: 2 per slot
    window: int | None = None
    #: extra attempts for a unit that raises or whose worker dies
    retries: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise GsvcError(f"--jobs must be at least 1 (got {self.jobs})")
        if self.ray is not None and self.jobs != 1:
            raise GsvcError("--jobs and --ray exclude each other (Ray decides how many tasks run)")

    @property
    def parallel(self) -> bool:
        return self.jobs > 1 or self.ray is not None

    def threads_per_worker(self) -> int:
        if self.threads is not None:
            return max(1, self.threads)
        if self.ray is not None:
            return 1
        return max(1, available_cores() // self.jobs)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int) -> None:
    """torch and numba use ``n`` threads in this process: through the environment for
    a library not imported yet (it reads it on import), directly for one already loaded."""
    import sys

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@dataclass
class UnitDone(Generic[U, R]):
    """A finished unit, as ``run_units`` yields it (in unit order)."""

    unit: U
    result: R
    done: int  # units finished so far, this one included
    seconds: float  # since run_units started


@dataclass
class _Task:
    unit: Any
    handle: Any = None  # the runner's handle while running
    attempts: int = 0
    finished: bool = False
    result: Any = None
    #: it was running when a worker process died that it may not have caused: it runs
    #: again alone, and only a death while alone counts as its attempt
    suspect: bool = False
    alone: bool = False  # submitted while no other task ran


def run_units(
    fn: Callable[[U], R],
    units: Iterable[U],
    schedule: Schedule,
    name: Callable[[U], str] = str,
) -> Iterator[UnitDone[U, R]]:
    """Run ``fn`` on every unit as ``schedule`` says; yield the results in unit order.

    ``fn`` must be a module-level function (workers import it by name) and its units
    and results picklable. Units are pulled from ``units`` only when there is room, so
    a long input is never read far ahead. Raises ``UnitFailed`` (naming the unit with
    ``name``) once a unit has failed ``1 + retries`` times; the other tasks are cancelled.
    """
    start = time.perf_counter()
    if not schedule.parallel:
        for done, unit in enumerate(units, start=1):
            result = _attempt_here(fn, unit, schedule.retries, name)
            yield UnitDone(unit, result, done, time.perf_counter() - start)
        return
    runner = _RayRunner(schedule) if schedule.ray is not None else _LocalRunner(schedule)
    cancelled = True
    try:
        yield from _scheduled(fn, iter(units), runner, schedule, name, start)
        cancelled = False
    finally:
        runner.close(cancel=cancelled)


def _attempt_here(fn: Callable[[U], R], unit: U, retries: int, name: Callable[[U], str]) -> R:
    """The in-process path: the same retry rule as the workers'."""
    for attempt in range(1, retries + 2):
        try:
            return fn(unit)
        except Exception as e:
            if attempt > retries:
                raise _failed(unit, attempt, e, name, _cause(e)) from e
    raise AssertionError("unreachable")


def _failed(unit, attempts: int, cause: BaseException, name, description: str) -> UnitFailed:
    """The one-line error of a unit that failed on every attempt."""
    if isinstance(cause, GsvcError):  # a problem of the data: its own words
        return UnitFailed(f"{name(unit)}: {cause}")
    return UnitFailed(f"{name(unit)} failed after {attempts} attempts: {description}")


def _scheduled(fn, units: Iterator, runner, schedule: Schedule, name, start: float) -> Iterator[UnitDone]:
    """The parallel loop: keep ``slots`` units running and ``window`` held; yield in order."""
    slots = runner.slots
    window = max(slots, schedule.window or 2 * slots)
    tasks: deque[_Task] = deque()
    exhausted = False
    done = 0
    while True:
        while not exhausted and len(tasks) < window:
            unit = next(units, _END)
            if unit is _END:
                exhausted = True
            else:
                tasks.append(_Task(unit))
        running = [t for t in tasks if t.handle is not None]
        suspects = [t for t in tasks if t.suspect and not t.finished]
        if suspects:  # after a worker died: the units it may have killed run one at a time
            if not running:
                task = suspects[0]
                task.handle, task.alone = runner.submit(fn, task.unit), True
                running.append(task)
        else:
            for task in tasks:  # start waiting units, oldest first, while slots are free
                if len(running) >= slots:
                    break
                if task.handle is None and not task.finished:
                    task.handle, task.alone = runner.submit(fn, task.unit), not running
                    running.append(task)
        while tasks and tasks[0].finished:
            task = tasks.popleft()
            done += 1
            yield UnitDone(task.unit, task.result, done, time.perf_counter() - start)
        if not tasks:
            if exhausted:
                return
            continue
        for task in runner.wait(running):  # the head is running: wait for any task
            _settle(task, runner, schedule.retries, name)


_END = object()


def _settle(task: _Task, runner, retries: int, name) -> None:
    """Record a completed task: its result, or a failure (to retry, or to give up on)."""
    handle, task.handle = task.handle, None
    try:
        task.result = runner.result(handle)
        task.finished = True
        return
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        cause = e
    runner.recover(handle, cause)
    if runner.shared_death(cause) and not task.alone:
        task.suspect = True  # one of the units running beside it may be the culprit
        return
    task.suspect = False
    task.attempts += 1
    if task.attempts > retries:
        raise _failed(task.unit, task.attempts, cause, name, runner.describe(cause)) from cause


def describe_error(e: BaseException) -> str:
    """An exception in one line: a GsvcError's own words, else its type and first line."""
    if isinstance(e, GsvcError):
        return str(e)
    return _cause(e)


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- local worker processes -----------------------------------------------------------

def _init_worker(threads: int) -> None:
    """A new worker: ignore Ctrl-C (the parent cancels), then fix the thread counts."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(threads)


@dataclass
class _LocalRunner:
    """``jobs`` spawned worker processes (concurrent.futures); a pool whose worker died
    is replaced and the units it held are run again."""

    schedule: Schedule
    pool: Any = field(init=False)
    generation: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.slots = self.schedule.jobs
        self.pool = self._new_pool()

    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.schedule.jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.schedule.threads_per_worker(),))

    def submit(self, fn, unit):
        return self.generation, self.pool.submit(fn, unit)

    def wait(self, tasks: list[_Task]) -> list[_Task]:
        from concurrent.futures import FIRST_COMPLETED, wait

        futures = {t.handle[1]: t for t in tasks}
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return [futures[f] for f in done]

    def result(self, handle):
        return handle[1].result()

    def recover(self, handle, cause: BaseException) -> None:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(cause, BrokenProcessPool) and handle[0] == self.generation:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            self.generation += 1

    @staticmethod
    def describe(cause: BaseException) -> str:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(cause, BrokenProcessPool):
            return "a worker process died"
        return _cause(cause)

    @staticmethod
    def shared_death(cause: BaseException) -> bool:
        """A worker died and broke the pool: every unit in it failed, whichever killed it."""
        from concurrent.futures.process import BrokenProcessPool

        return isinstance(cause, BrokenProcessPool)

    def close(self, cancel: bool) -> None:
        if cancel:  # an error or Ctrl-C: stop the workers now, not after their units
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


# --- Ray ------------------------------------------------------------------------------

def _ray_call(fn, threads: int, unit):
    """What a Ray task runs: the unit, with this worker's thread counts set first."""
    set_threads(threads)
    return fn(unit)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GsvcError(RAY_HINT) from None
    return ray


@dataclass
class _RayRunner:
    """Units as Ray tasks of ``threads`` CPUs each; ``slots`` follows the cluster's CPUs."""

    schedule: Schedule

    def __post_init__(self) -> None:
        ray = self.ray = _import_ray()
        self.live: set = set()
        self.started = not ray.is_initialized()  # then close() shuts it down again
        if self.started:
            address = None if self.schedule.ray == "auto" else self.schedule.ray
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise GsvcError(f"--ray {self.schedule.ray}: cannot reach a Ray cluster ({_cause(e)})") from None
        self.threads = self.schedule.threads_per_worker()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, cpus // self.threads)
        self.remote = ray.remote(_ray_call).options(num_cpus=self.threads, max_retries=0)

    def submit(self, fn, unit):
        ref = self.remote.remote(fn, self.threads, unit)
        self.live.add(ref)
        return ref

    def wait(self, tasks: list[_Task]) -> list[_Task]:
        refs = {t.handle: t for t in tasks}
        ready, _ = self.ray.wait(list(refs), num_returns=1)
        return [refs[r] for r in ready]

    def result(self, handle):
        self.live.discard(handle)
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:  # the task raised: its own exception
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, Exception) else e) from None

    def recover(self, handle, cause: BaseException) -> None:
        pass  # Ray replaces a dead worker by itself

    def describe(self, cause: BaseException) -> str:
        if isinstance(cause, (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError)):
            return "its Ray worker died"
        return _cause(cause)

    @staticmethod
    def shared_death(cause: BaseException) -> bool:
        """Ray runs every task in a worker of its own: a death is that task's."""
        return False

    def close(self, cancel: bool) -> None:
        if cancel:
            for ref in self.live:
                self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


# --- image batches --------------------------------------------------------------------

@dataclass
class ImageUnit:
    """One picture of a batch: its pixels and settings (the unit a worker receives)."""

    index: int
    name: str  # the input path, for messages
    rgb: Any  # np.ndarray [H, W, 3] uint8
    settings: Any  # encoder.EncodeSettings


@dataclass
class ImageCoded:
    """What a worker returns for an ``ImageUnit``: the complete .gsv stream."""

    data: bytes
    sizes: list[int]  # [header bytes, layer 1 bytes, ...]
    seconds: float  # fitting and coding, in the worker


def encode_image_unit(unit: ImageUnit) -> ImageCoded:
    """Encode one picture of a batch (runs in a worker)."""
    from .encoder import encode_image

    start = time.perf_counter()
    result = encode_image(unit.rgb, unit.settings)
    return ImageCoded(result.data, result.sizes, time.perf_counter() - start)


def image_unit_name(unit: ImageUnit) -> str:
    return unit.name


def encode_image_batch(units: Iterable[ImageUnit], schedule: Schedule) -> Iterator[UnitDone[ImageUnit, ImageCoded]]:
    """Encode pictures as independent units; yields them in input order as they finish."""
    return run_units(encode_image_unit, units, schedule, image_unit_name)
