"""``tabserve score``: the arguments turned into a local run or a Spark job, and the summary it prints."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tabserve.errors import ScoreInputError
from tabserve.score.checkpoint import Checkpoint

INTERRUPTED = 130


def summary(state: Checkpoint, seconds: float | None = None) -> dict[str, object]:
    """What the run did: rows read = scored + rejected (none lost, none repaired)."""
    body: dict[str, object] = {
        k: v for k, v in asdict(state).items() if k not in ("output_bytes", "rejects_bytes", "batch_rows")
    }
    if seconds is not None:
        body["seconds"] = round(seconds, 3)
    return body


def run_command(args: argparse.Namespace) -> int:
    if args.batch_rows < 1:
        raise ScoreInputError("--batch-rows must be at least 1")
    if args.engine == "spark":
        from tabserve.score.spark import SparkOptions, run_spark

        result = run_spark(
            SparkOptions(
                input=args.input,
                output=args.output,
                rejects=args.rejects,
                models=Path(args.models),
                model=args.model,
                version=args.version,
                level=args.level,
                master=args.master,
                input_format=args.input_format,
                output_format=args.output_format,
            )
        )
        print(  # noqa: T201 - the command reports on stdout/stderr
            json.dumps(result, indent=2)
        )
        return 0
    import time

    from tabserve.score.local import Options, run
    from tabserve.score.scorer import ModelRef

    options = Options(
        input=Path(args.input),
        output=Path(args.output),
        model=ModelRef(args.model, args.version, Path(args.models)),
        level=args.level,
        workers=args.workers,
        batch_rows=args.batch_rows,
        rejects=Path(args.rejects) if args.rejects else None,
        resume=args.resume,
    )
    tty = None if args.progress == "auto" else args.progress == "bar"
    started = time.perf_counter()
    state = run(options, tty=tty)
    print(  # noqa: T201 - the command reports on stdout/stderr
        json.dumps(summary(state, time.perf_counter() - started), indent=2)
    )
    if not state.complete:
        print(  # noqa: T201 - the command reports on stdout/stderr
            f"tabserve score: stopped after {state.rows_read:,} rows; the files are valid; "
            "run again with --resume to go on",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0
