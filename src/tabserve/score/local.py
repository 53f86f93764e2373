"""The local run: read batches, score them on every core, write them in order, checkpoint, stop cleanly.

One process (``workers=1``) scores in place; more workers are processes of their own (each loads the model and
verifies its sha256), fed batches in order with at most two per worker in flight, so memory is bounded by the
batch size, not the file. A worker scores a batch and encodes it for both files (``writer.encode_part``): the
parent reads, appends bytes and checkpoints, so scoring and encoding, most of a row's cost, run on every core.
Workers are forked from a server process that imported the scorer once, and start while this process loads.
The first Ctrl+C (or SIGTERM) stops reading: the batches already scored are written, the files are closed valid,
the checkpoint records them, and ``--resume`` goes on from there.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

import pyarrow as pa

from tabserve.errors import ScoreInputError
from tabserve.score import checkpoint as ckpt
from tabserve.score.checkpoint import Checkpoint
from tabserve.score.progress import Progress
from tabserve.score.reader import BatchReader, file_format, group_batches
from tabserve.score.scorer import BatchScorer, ModelRef
from tabserve.score.writer import BatchWriter, Encoded, encode_part

DEFAULT_BATCH_ROWS = 65_536
R = TypeVar("R")


@dataclass(slots=True)
class Options:
    input: Path
    output: Path
    model: ModelRef
    level: float | None = None
    workers: int = 0
    """0: every core."""
    batch_rows: int = DEFAULT_BATCH_ROWS
    rejects: Path | None = None
    resume: bool = False

    def rejects_path(self) -> Path:
        return self.rejects or self.output.with_name(self.output.stem + ".rejects.csv")

    def worker_count(self, batches: int | None = None) -> int:
        """``workers``, or by default every core but no more processes than the file has ``batches``: a file of
        one batch is scored in this process, sooner than a worker could start."""
        if self.workers > 0:
            return self.workers
        cores = os.cpu_count() or 1
        return cores if batches is None else max(1, min(cores, batches))


@dataclass(frozen=True, slots=True)
class Part:
    """One scored batch, encoded for the output and rejects files where it was scored, and its counts."""

    output: Encoded
    rejects: Encoded
    warned: int
    out_of_distribution: int


def _encoded(
    scorer: BatchScorer,
    batch: pa.RecordBatch,
    first_row: int,
    formats: tuple[str, str],
    spools: tuple[Path, Path] | tuple[None, None] = (None, None),
) -> Part:
    scored = scorer.score(batch, first_row)
    return Part(
        encode_part(scored.output, formats[0], spools[0]),
        encode_part(scored.rejects, formats[1], spools[1]),
        scored.warned,
        scored.out_of_distribution,
    )


_worker_args: tuple[ModelRef, float | None, pa.Schema, tuple[str, str]] | None = None
_worker: tuple[BatchScorer, tuple[str, str]] | None = None


def _init_worker(ref: ModelRef, level: float | None, schema: pa.Schema, formats: tuple[str, str]) -> None:
    global _worker_args  # noqa: PLW0603 - what this worker process scores with, set once
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _worker_args = (ref, level, schema, formats)


def _loaded() -> tuple[BatchScorer, tuple[str, str]]:
    """This worker's scorer, loaded (and verified) on its first batch: a model or level the parent refuses is then
    reported once, by the parent, instead of by every worker as it starts."""
    global _worker  # noqa: PLW0603 - one scorer per worker process, built once
    if _worker is None:
        if _worker_args is None:
            raise RuntimeError("worker not initialised")
        ref, level, schema, formats = _worker_args
        _worker = (BatchScorer(ref, level, schema), formats)
    return _worker


def _score_in_worker(batch: pa.RecordBatch, first_row: int) -> Part:
    """Scored and encoded in the worker: the parent only appends the bytes."""
    scorer, formats = _loaded()
    return _encoded(scorer, batch, first_row, formats)


@dataclass(frozen=True, slots=True)
class GroupTask:
    """One row group for a worker to read itself: skip its first ``skip`` rows (a resumed run), whose first
    scored row is the file's row ``first_row``; the encoded parts go to files in ``spool``."""

    path: Path
    group: int
    skip: int
    first_row: int
    batch_rows: int
    spool: Path


def _score_group_in_worker(task: GroupTask) -> list[Part]:
    """A row group read, scored and encoded in the worker (its parts spooled to files): the parent reads nothing."""
    scorer, formats = _loaded()
    parts, first = [], task.first_row
    batches = group_batches(task.path, task.group, task.skip, task.batch_rows, scorer.schema)
    for i, batch in enumerate(batches):
        spools = (task.spool / f"{task.group}-{i}.output", task.spool / f"{task.group}-{i}.rejects")
        parts.append(_encoded(scorer, batch, first, formats, spools))
        first += batch.num_rows
    return parts


class _Stop:
    """Set by the first SIGINT/SIGTERM; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _context() -> BaseContext:
    """Workers forked from a fresh server process that has imported the scorer once (``forkserver``: no threads
    of this process are copied, and a worker starts in milliseconds instead of importing everything again);
    ``spawn`` where there is no fork."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(["__main__", "tabserve.score.local"])  # the main module once, not per worker
    return context


@dataclass(slots=True)
class _Workers:
    pool: ProcessPoolExecutor
    count: int
    spool: Path
    """Where workers reading their own row groups leave their encoded parts for this process to append."""


@contextmanager
def _pool(options: Options, reader: BatchReader, formats: tuple[str, str]) -> Iterator[_Workers | None]:
    """The worker processes (none for one worker), started at once so they load while this process does."""
    workers = options.worker_count(reader.most_batches())
    if workers == 1:
        yield None
        return
    init = (options.model, options.level, reader.schema, formats)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=f".{options.output.name}.", suffix=".spool", dir=options.output.parent))
    try:
        with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init_worker, initargs=init) as pool:
            # a process per task submitted while none is idle: all of them now, from a thread, as starting one
            # waits for the fork server's imports and this process has its own model to load meanwhile
            starting = threading.Thread(target=_start, args=(pool, workers), name="tabserve-score-start")
            starting.start()
            try:
                yield _Workers(pool, workers, spool)
            finally:
                starting.join()
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _start(pool: ProcessPoolExecutor, workers: int) -> None:
    for _ in range(workers):
        pool.submit(_started)


def _started() -> None:
    """Nothing: submitted to start the workers early."""


def _parts(
    workers: _Workers | None,
    scorer: BatchScorer,
    reader: BatchReader,
    skip: int,
    stop: _Stop,
    formats: tuple[str, str],
) -> Iterator[Part]:
    """Scored, encoded batches in input order: from this process, from workers reading their own row groups
    (a Parquet file with at least two per worker), or from workers fed the batches this process reads."""
    if workers is None:
        first = skip
        for batch in reader.batches(skip):
            if stop.requested:
                return
            yield _encoded(scorer, batch, first, formats)
            first += batch.num_rows
        return
    pool = workers.pool
    if len(reader.group_rows) >= 2 * workers.count:
        tasks = (GroupTask(reader.path, *group, reader.batch_rows, workers.spool) for group in reader.groups(skip))
        for parts in _in_order((pool.submit(_score_group_in_worker, t) for t in tasks), workers.count + 1, stop):
            for part in parts:
                if stop.requested:
                    return
                yield part
        return

    def fed() -> Iterator[Future[Part]]:
        first = skip
        for batch in reader.batches(skip):
            yield pool.submit(_score_in_worker, batch, first)
            first += batch.num_rows

    yield from _in_order(fed(), 2 * workers.count, stop)


def _in_order(futures: Iterator[Future[R]], limit: int, stop: _Stop) -> Iterator[R]:
    """The results of ``futures`` (each submitted as it is drawn) in order, at most ``limit`` in flight; those
    not yet taken when a stop is requested are cancelled."""
    pending: deque[Future[R]] = deque()
    try:
        for future in futures:
            pending.append(future)
            while len(pending) >= limit and not stop.requested:
                yield pending.popleft().result()
            if stop.requested:
                break
        while pending and not stop.requested:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def run(options: Options, *, stream: TextIO | None = None, tty: bool | None = None) -> Checkpoint:
    """Score ``options.input`` into ``options.output`` (and the rejects file); the final checkpoint."""
    formats = (file_format(options.output), file_format(options.rejects_path()))  # named before any work
    reader = BatchReader(options.input, options.batch_rows)
    with _pool(options, reader, formats) as workers:
        return _run(options, reader, workers, formats, stream, tty)


def _run(
    options: Options,
    reader: BatchReader,
    workers: _Workers | None,
    formats: tuple[str, str],
    stream: TextIO | None,
    tty: bool | None,
) -> Checkpoint:
    scorer = BatchScorer(options.model, options.level, reader.schema)
    state = Checkpoint(
        str(options.input.resolve()), scorer.model.name, scorer.model.version, scorer.level, options.batch_rows
    )
    progress_file = ckpt.path_for(options.output)
    resume_rows: tuple[int | None, int | None] = (None, None)
    if options.resume:
        previous = ckpt.load(progress_file)
        if not previous.same_run(state):
            raise ScoreInputError(f"{progress_file}: the checkpoint is for another input, model or options")
        if previous.complete:
            return previous
        state = previous
        resume_rows = (previous.scored, previous.rejected)
    output = BatchWriter(
        options.output, scorer.output_schema, resume_rows=resume_rows[0], resume_bytes=state.output_bytes
    )
    rejects = BatchWriter(
        options.rejects_path(), scorer.rejects_schema, resume_rows=resume_rows[1], resume_bytes=state.rejects_bytes
    )
    progress = Progress(reader.total_rows, done=state.rows_read, stream=stream, tty=tty)
    stop = _Stop()
    previous_handlers = _install(stop)
    try:
        for part in _parts(workers, scorer, reader, state.rows_read, stop, formats):
            output.append(part.output)
            rejects.append(part.rejects)
            _account(state, part)
            state.output_bytes, state.rejects_bytes = output.flush(), rejects.flush()
            ckpt.save(progress_file, state)
            progress.advance(part.output.rows + part.rejects.rows, part.rejects.rows)
        state.complete = not stop.requested
    finally:
        _restore(previous_handlers)
        output.close()
        rejects.close()
        progress.close()
        state.output_bytes, state.rejects_bytes = _size(options.output), _size(options.rejects_path())
        ckpt.save(progress_file, state)
    if state.rows_read != state.scored + state.rejected:
        raise ScoreInputError(f"row count mismatch: {state.rows_read} read, {state.scored + state.rejected} written")
    return state


def _account(state: Checkpoint, part: Part) -> None:
    state.rows_read += part.output.rows + part.rejects.rows
    state.scored += part.output.rows
    state.rejected += part.rejects.rows
    state.warned += part.warned
    state.out_of_distribution += part.out_of_distribution


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _install(stop: _Stop) -> list[Any]:
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return []
    return [signal.signal(signal.SIGINT, stop), signal.signal(signal.SIGTERM, stop)]


def _restore(handlers: list[Any]) -> None:
    if handlers:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
