"""The ``tabserve score`` command line (argparse only: importing this loads nothing of the scorer)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_score_parser(sub: Any, handler: Callable[[argparse.Namespace], int], models: str) -> None:
    score = sub.add_parser(
        "score",
        help="score a CSV/Parquet file (or, with --engine spark, any path or table Spark reads)",
        description="Score every row of INPUT with a model, through the same checks and confidence as the service.",
    )
    score.add_argument("input", help="CSV or Parquet file (Spark: any path Spark reads, or table:NAME)")
    score.add_argument("output", help="Parquet or CSV file, by its extension (Spark: a folder, or table:NAME)")
    score.add_argument("--model", required=True)
    score.add_argument("--version", help="model version (default: newest)")
    score.add_argument("--level", type=float, help="confidence level (default 0.9)")
    score.add_argument("--models", default=models, help="models root (default: models)")
    score.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    score.add_argument("--batch-rows", type=int, default=65_536, help="rows per record batch (default 65536)")
    score.add_argument("--rejects", help="file for invalid rows and their reasons (default: OUTPUT.rejects.csv)")
    score.add_argument("--resume", action="store_true", help="go on after the last complete batch of a stopped run")
    score.add_argument("--progress", choices=["auto", "bar", "plain"], default="auto")
    score.add_argument("--engine", choices=["local", "spark"], default="local")
    score.add_argument("--master", help="Spark master URL (default: the session's, e.g. from spark-submit)")
    score.add_argument("--input-format", choices=["csv", "parquet", "table"], help="Spark: default from the path")
    score.add_argument("--output-format", choices=["csv", "parquet", "table"], help="Spark: default from the path")
    score.set_defaults(func=handler)
