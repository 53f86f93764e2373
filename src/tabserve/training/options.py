"""What every model's trainer takes: one dataclass, filled by ``tabserve train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 20261126


@dataclass(frozen=True, slots=True)
class TrainOptions:
    data_dir: Path | None
    """Folder with the training CSVs (co2: the NRCan files)."""
    out_root: Path
    """Where ``<name>/<version>/`` is written (the repo's ``models/``)."""
    version: str
    seed: int = DEFAULT_SEED
    extra: Path | None = None
    """An exported prediction log (``tabserve export``) appended to the training data."""
    plots: bool = True
    """Write the model card's PNG plots (tests may turn them off for speed)."""
