"""The checkpoint of a run (``OUTPUT.progress.json``): how far it got, written after every complete batch.

``--resume`` reads it, checks it belongs to the same input, model and options, and the run goes on after the
last batch it records. It is replaced atomically (write then rename), so it always describes files that are
complete up to that batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tabserve.errors import ScoreInputError


@dataclass(slots=True)
class Checkpoint:
    input: str
    model: str
    version: str
    level: float
    batch_rows: int
    rows_read: int = 0
    scored: int = 0
    rejected: int = 0
    warned: int = 0
    out_of_distribution: int = 0
    output_bytes: int = 0
    rejects_bytes: int = 0
    complete: bool = False

    def same_run(self, other: Checkpoint) -> bool:
        keys = ("input", "model", "version", "level", "batch_rows")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def path_for(output: Path) -> Path:
    return output.with_name(output.name + ".progress.json")


def save(path: Path, checkpoint: Checkpoint) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(checkpoint), indent=1), encoding="utf-8")
    tmp.replace(path)


def load(path: Path) -> Checkpoint:
    try:
        return Checkpoint(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ScoreInputError(f"{path}: no checkpoint to resume from (run without --resume)") from exc
    except (ValueError, TypeError) as exc:
        raise ScoreInputError(f"{path}: not a tabserve score checkpoint: {exc}") from exc
