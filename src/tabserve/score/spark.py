"""The same scoring as a Spark job: ``mapInArrow`` over the input, the service's path on every executor.

The driver verifies the model folder (every file's sha256, and the manifest's own sha256 noted), ships it with
``SparkContext.addFile`` and runs ``BatchScorer`` inside ``mapInArrow``: each executor's Python worker checks
the shipped manifest against the driver's sha256, verifies every file again (``ModelRegistry`` does on load),
loads the model once and scores its partitions' Arrow batches. Scored rows and rejects come out of one pass
(each row is one or the other), are kept (``persist``) and written to their own paths, so the counts and both
outputs come from the same single scoring. Input and output are any path Spark reads and writes (local,
``gs://``, ``s3a://``, ``hdfs://``) or a table (``table:NAME``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tabserve.artifacts import model_dir, sha256_file, verify_model_dir
from tabserve.errors import IntegrityError, ScoreInputError
from tabserve.manifest import MANIFEST_FILE
from tabserve.score.scorer import REJECT_FIELDS, BatchScorer, ModelRef

STATUS = "__tabserve_rejected"


@dataclass(slots=True)
class SparkOptions:
    input: str
    output: str
    models: Path
    model: str
    version: str | None = None
    level: float | None = None
    rejects: str | None = None
    master: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    app_name: str = "tabserve-score"


def _format(path: str, given: str | None) -> tuple[str, str]:
    if given:
        return given, path.removeprefix("table:")
    if path.startswith("table:"):
        return "table", path.removeprefix("table:")
    lowered = path.rstrip("/").lower()
    return ("csv" if lowered.endswith(".csv") else "parquet"), path


def _combined_schema(scorer: BatchScorer) -> pa.Schema:
    """Input columns, answer columns and reject columns, all nullable: a row is scored or rejected."""
    fields = [f.with_nullable(True) for f in scorer.output_schema]
    fields += [f.with_nullable(True) for f in REJECT_FIELDS]
    fields.append(pa.field(STATUS, pa.bool_()))
    return pa.schema(fields)


_LOADED: dict[tuple[str, str], BatchScorer] = {}
"""Per Python worker: the scorer of each shipped model (workers are reused across tasks)."""


def partition_scorer(
    folder_name: str, name: str, version: str, manifest_sha256: str, level: float, schema: pa.Schema
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs on the executors."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles

        key = (manifest_sha256, schema.to_string())
        scorer = _LOADED.get(key)
        if scorer is None:
            folder = Path(SparkFiles.get(folder_name))
            actual = sha256_file(folder / MANIFEST_FILE)
            if actual != manifest_sha256:
                raise IntegrityError(
                    f"{folder / MANIFEST_FILE}: sha256 {actual} differs from the driver's {manifest_sha256}",
                    path=str(folder / MANIFEST_FILE),
                    expected=manifest_sha256,
                    actual=actual,
                )
            scorer = BatchScorer(ModelRef.from_folder(folder, name, version), level, schema)
            _LOADED[key] = scorer
        combined = _combined_schema(scorer)
        for raw in batches:
            batch = pa.RecordBatch.from_arrays(list(raw.columns), schema=schema) if raw.schema != schema else raw
            scored = scorer.score(batch, 0)
            yield _as_combined(scored.output, combined, rejected=False)
            if scored.rejects.num_rows:
                yield _as_combined(scored.rejects, combined, rejected=True)

    return score


def _as_combined(batch: pa.RecordBatch, schema: pa.Schema, *, rejected: bool) -> pa.RecordBatch:
    rows = batch.num_rows
    arrays = []
    for field in schema:
        if field.name == STATUS:
            arrays.append(pa.array([rejected] * rows, pa.bool_()))
        elif field.name in batch.schema.names:
            arrays.append(batch.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _read(spark: Any, path: str, fmt: str | None) -> Any:
    kind, where = _format(path, fmt)
    if kind == "table":
        return spark.read.table(where)
    if kind == "csv":  # every column as text, an empty cell null: as the local scorer reads a CSV
        return spark.read.option("header", "true").option("inferSchema", "false").csv(where)
    return spark.read.format(kind).load(where)


def _write(frame: Any, path: str, fmt: str | None) -> None:
    kind, where = _format(path, fmt)
    writer = frame.write.mode("errorifexists")
    if kind == "table":
        writer.saveAsTable(where)
    elif kind == "csv":
        writer.option("header", "true").csv(where)
    else:
        writer.format(kind).save(where)


def session(master: str | None, app_name: str) -> Any:
    from pyspark.sql import SparkSession

    if master and master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        os.environ["PYSPARK_PYTHON"] = sys.executable  # local workers run this interpreter (tabserve installed)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.execution.arrow.useLargeVarTypes", "false")  # plain string columns, as a file's
    return spark


def run_spark(options: SparkOptions, spark: Any = None) -> dict[str, Any]:
    """Score ``options.input`` on Spark; the summary (counts, seconds, rows/s)."""
    from pyspark.sql import functions as F  # noqa: N812 - the usual spelling
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    folder = model_dir(options.models, options.model, options.version)
    verified = verify_model_dir(folder)
    manifest_sha = sha256_file(folder / MANIFEST_FILE)
    spark = spark or session(options.master, options.app_name)
    frame = _read(spark, options.input, options.input_format)
    arrow_in = to_arrow_schema(frame.schema)
    driver_scorer = BatchScorer(
        ModelRef(options.model, verified.manifest.version, options.models), options.level, arrow_in
    )
    combined_schema = _combined_schema(driver_scorer)
    spark.sparkContext.addFile(str(folder.resolve()), recursive=True)
    fn = partition_scorer(
        folder.name, verified.manifest.name, verified.manifest.version, manifest_sha, driver_scorer.level, arrow_in
    )
    started = time.perf_counter()
    combined = frame.mapInArrow(fn, from_arrow_schema(combined_schema)).persist()
    counts = {bool(r[0]): int(r[1]) for r in combined.groupBy(STATUS).count().collect()}
    output_cols = [f.name for f in driver_scorer.output_schema]
    rejects_cols = [f.name for f in driver_scorer.rejects_schema]
    _write(combined.filter(~F.col(STATUS)).select(*output_cols), options.output, options.output_format)
    rejects_path = options.rejects or options.output.rstrip("/") + ".rejects"
    if counts.get(True):
        _write(combined.filter(F.col(STATUS)).select(*rejects_cols), rejects_path, options.output_format)
    seconds = time.perf_counter() - started
    combined.unpersist()
    scored, rejected = counts.get(False, 0), counts.get(True, 0)
    rows = scored + rejected
    if rows != frame.count():
        raise ScoreInputError(f"row count mismatch: {frame.count()} read, {rows} written")
    return {
        "engine": "spark",
        "master": spark.sparkContext.master,
        "input": options.input,
        "output": options.output,
        "rejects": rejects_path if rejected else None,
        "model": verified.manifest.name,
        "version": verified.manifest.version,
        "level": driver_scorer.level,
        "rows_read": rows,
        "scored": scored,
        "rejected": rejected,
        "partitions": combined.rdd.getNumPartitions(),
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds) if seconds > 0 else None,
    }
