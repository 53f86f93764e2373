"""Shipped models that are a spec file plus the generic build (``tabserve train co2|penguins``): where their spec and
their default data are, and (co2) the model-specific step that turns published files into one table, turned into
the ``tabserve build`` arguments that make them."""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import tempfile
from pathlib import Path

from tabserve.errors import BuildError

DATA_FILES = {"penguins": "palmer_penguins.csv"}
"""The file a ``--data`` folder is searched for (the name in ``../shared/data``)."""
TABLE_WRITERS = {"co2": "tabserve.training.co2_data"}
"""Models whose data is several published files: a module whose ``write_table(folder, extra, out)`` writes the one
canonical CSV to build and returns the published files read (with their row counts) for the manifest."""
BUNDLED_DATA = {"penguins": ("palmerpenguins", "data/penguins.csv")}
"""The default data: a file inside a package of the train extra (palmerpenguins' CSV is byte for byte the shared
copy)."""


def spec_path(name: str) -> Path:
    return Path(str(importlib.resources.files("tabserve.training") / "specs" / f"{name}.toml"))


def spec_models() -> list[str]:
    """The shipped models built from a packaged spec."""
    return sorted([*DATA_FILES, *TABLE_WRITERS])


def default_data(name: str) -> Path:
    package, resource = BUNDLED_DATA[name]
    path = Path(str(importlib.resources.files(package) / resource))
    if not path.is_file():
        raise BuildError(f"{name}: no bundled training data at {path}; pass --data FILE")
    return path


def build_arguments(
    name: str, data: Path | None, extra: Path | None, out: Path, version: str | None, seed: int | None
) -> argparse.Namespace:
    """``tabserve build --data DATA [--data EXTRA] --name NAME --spec <packaged spec> --models-dir OUT``; for a
    model with a table writer, DATA is its folder of published files and the table is written to a temporary
    folder (``table_dir``, for the caller to remove), the published files recorded as the training data."""
    provenance, table_dir = None, None
    if name in TABLE_WRITERS:
        if data is None or not data.is_dir():
            raise BuildError(f"tabserve train {name} needs --data DIR (the folder of its published files)")
        table = Path(tempfile.mkdtemp(prefix=f"tabserve-{name}-table-"))
        writer = importlib.import_module(TABLE_WRITERS[name])
        provenance = writer.write_table(data, extra, table / f"{name}.csv")
        files, table_dir = [table / f"{name}.csv"], table
    else:
        if data is not None and data.is_dir():
            data = data / DATA_FILES[name]
        files = [data or default_data(name)] + ([extra] if extra else [])
    return argparse.Namespace(
        provenance=provenance,
        table_dir=table_dir,
        data=[str(f) for f in files],
        target=None,
        name=name,
        task=None,
        spec=str(spec_path(name)),
        time_column=None,
        version=version,
        models_dir=str(out),
        onnx=None,
        model=None,
        trust_pickle=False,
        seed=seed,
        port=8080,
    )
