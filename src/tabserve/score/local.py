"""The local run: read batches, score them on every core, write them in order, checkpoint, stop cleanly.

One process (``workers=1``) scores in place; more workers are processes of their own (each loads the model and
verifies its sha256), fed batches in order with at most two per worker in flight, so memory is bounded by the
batch size, not the file. The first Ctrl+C (or SIGTERM) stops reading: the batches already scored are written,
the files are closed valid, the checkpoint records them, and ``--resume`` goes on from there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import pyarrow as pa

from tabserve.errors import ScoreInputError
from tabserve.score import checkpoint as ckpt
from tabserve.score.checkpoint import Checkpoint
from tabserve.score.progress import Progress
from tabserve.score.reader import BatchReader, file_format
from tabserve.score.scorer import BatchScorer, ModelRef, Scored
from tabserve.score.writer import BatchWriter

DEFAULT_BATCH_ROWS = 65_536


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

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


_scorer: BatchScorer | None = None


def _init_worker(ref: ModelRef, level: float | None, schema: pa.Schema) -> None:
    global _scorer  # noqa: PLW0603 - one scorer per worker process, built once
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _scorer = BatchScorer(ref, level, schema)


def _score_in_worker(batch: pa.RecordBatch, first_row: int) -> Scored:
    """The answers only: the parent still holds the batch and puts its input columns back (half the bytes through
    the pipe on the way back)."""
    if _scorer is None:
        raise RuntimeError("worker not initialised")
    return _scorer.score_answers(batch, first_row)


class _Stop:
    """Set by the first SIGINT/SIGTERM; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _scored(options: Options, scorer: BatchScorer, reader: BatchReader, skip: int, stop: _Stop) -> Iterator[Scored]:
    """Scored batches in input order, from this process or from worker processes."""
    workers = options.worker_count()
    first = skip
    if workers == 1:
        for batch in reader.batches(skip):
            if stop.requested:
                return
            yield scorer.score(batch, first)
            first += batch.num_rows
        return
    context = get_context("spawn")
    init = (options.model, scorer.level, reader.schema)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        pending: deque[tuple[pa.RecordBatch, Future[Scored]]] = deque()
        try:
            for batch in reader.batches(skip):
                if stop.requested:
                    break
                pending.append((batch, pool.submit(_score_in_worker, batch, first)))
                first += batch.num_rows
                while len(pending) >= 2 * workers and not stop.requested:
                    done, future = pending.popleft()
                    yield scorer.with_inputs(done, future.result())
            while pending and not stop.requested:
                done, future = pending.popleft()
                yield scorer.with_inputs(done, future.result())
        finally:
            for _, future in pending:
                future.cancel()


def run(options: Options, *, stream: TextIO | None = None, tty: bool | None = None) -> Checkpoint:
    """Score ``options.input`` into ``options.output`` (and the rejects file); the final checkpoint."""
    file_format(options.output)  # an unknown output type is named before any work
    file_format(options.rejects_path())
    reader = BatchReader(options.input, options.batch_rows)
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
        for scored in _scored(options, scorer, reader, state.rows_read, stop):
            output.write(scored.output)
            rejects.write(scored.rejects)
            _account(state, scored)
            state.output_bytes, state.rejects_bytes = output.flush(), rejects.flush()
            ckpt.save(progress_file, state)
            progress.advance(scored.output.num_rows + scored.rejects.num_rows, scored.rejects.num_rows)
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


def _account(state: Checkpoint, scored: Scored) -> None:
    state.rows_read += scored.output.num_rows + scored.rejects.num_rows
    state.scored += scored.output.num_rows
    state.rejected += scored.rejects.num_rows
    state.warned += scored.warned
    state.out_of_distribution += scored.out_of_distribution


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
