"""The ``tabserve build`` sub-command's arguments (argparse only: importing this loads nothing of the build)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_build_parser(sub: Any, func: Callable[[argparse.Namespace], int], default_models: str) -> None:
    build = sub.add_parser(
        "build",
        help="a CSV/Parquet (and optionally a fitted model or ONNX file) to a served, calibrated model version",
    )
    build.add_argument(
        "--data",
        required=True,
        action="append",
        help="CSV or Parquet file with the inputs and the target; repeat to add rows with the same columns (e.g. an "
        "exported prediction log with feedback)",
    )
    build.add_argument("--target", help="the column to predict (or [model] target in the spec)")
    build.add_argument("--name", required=True, help="model name (lower-case letters, digits, _ or -)")
    build.add_argument("--task", choices=["regression", "classification"], help="default: inferred from the target")
    build.add_argument("--spec", help="TOML spec: units, aliases, descriptions, time column, columns to drop")
    build.add_argument("--time-column", help="split by this column's order (train oldest, test newest)")
    build.add_argument("--version", help="default 1.0.0, or the next minor after the newest; never overwritten")
    build.add_argument("--models-dir", default=default_models, help=f"models root (default: {default_models})")
    build.add_argument("--onnx", help="serve this ONNX model (inputs matched to the data's columns by name)")
    build.add_argument("--model", help="serve this fitted scikit-learn / LightGBM model (joblib/pickle)")
    build.add_argument(
        "--trust-pickle", action="store_true", help="allow --model: it is opened in a child process, converted to ONNX"
    )
    build.add_argument("--seed", type=int, help="random seed of the splits and the model")
    build.add_argument("--port", type=int, default=8080, help="port in the printed curl command (default 8080)")
    build.set_defaults(func=func)
