"""One ``tabserve build`` of a table with a spec text, through the CLI: the sealed manifest, for the build tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from tabserve.cli import main


def build_with_spec(tmp_path: Path, name: str, frame: pd.DataFrame, spec_text: str) -> dict[str, Any]:
    """Build ``frame`` (written as CSV) with the spec ``spec_text`` into ``tmp_path``; the manifest of 1.0.0."""
    data = tmp_path / f"{name}.csv"
    frame.to_csv(data, index=False)
    spec = tmp_path / f"{name}.toml"
    spec.write_text(spec_text + "\n", "utf-8")
    args = ["build", "--data", str(data), "--name", name, "--spec", str(spec), "--models-dir", str(tmp_path)]
    assert main(args) == 0
    manifest: dict[str, Any] = json.loads((tmp_path / name / "1.0.0" / "manifest.json").read_text("utf-8"))
    return manifest
