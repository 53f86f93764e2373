"""The scorer's answers are the HTTP service's, bit for bit: a sample of a scored file against a real server;
and the Spark job's answers are the local scorer's on the same file (a real Spark on local[2])."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import MODELS, ServerProcess, data_dir
from scorefiles import co2_rows, write
from tabserve.score.local import Options, run
from tabserve.score.scorer import ModelRef

KEYS = ("prediction", "interval_lower", "interval_upper", "out_of_distribution", "warnings")


def request_instance(row: dict[str, Any]) -> dict[str, Any]:
    """The row as a client would post it: numbers as numbers, engine size in cc as the unit object."""
    out: dict[str, Any] = {}
    for name, cell in row.items():
        if name == "id" or cell is None:
            continue
        if name == "engine_size_cc":
            out["engine_size_l"] = {"value": float(cell), "unit": "cc"}
        elif name in ("model_year", "cylinders") or name.startswith("fuel_consumption"):
            out[name] = float(cell)
        else:
            out[name] = cell
    return out


@pytest.mark.e2e
def test_a_sample_of_a_scored_file_matches_the_http_service(tmp_path: Path, server: ServerProcess) -> None:
    rows = co2_rows(data_dir(), 4000)
    source = write(rows, tmp_path / "fleet.csv")
    run(Options(source, tmp_path / "out.parquet", ModelRef("co2", None, MODELS), workers=2, batch_rows=1500))
    scored = {r["id"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    sample = rows[::7][:500]
    body = {"instances": [request_instance(r) for r in sample]}
    response = httpx.post(server.url + "/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert len({json.dumps(a["interval"]["upper"] - a["interval"]["lower"]) for a in answers}) > 1  # patterns vary
    for row, answer in zip(sample, answers, strict=True):
        mine = scored[row["id"]]
        assert mine["prediction"] == answer["prediction"]
        assert (mine["interval_lower"], mine["interval_upper"]) == (
            answer["interval"]["lower"],
            answer["interval"]["upper"],
        )
        assert mine["out_of_distribution"] == answer["out_of_distribution"]
        assert json.loads(mine["warnings"]) == answer["warnings"]


@pytest.mark.spark
@pytest.mark.filterwarnings("ignore::FutureWarning")  # pyspark's note about pandas 3
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_spark_job_gives_the_local_scorers_answers(tmp_path: Path) -> None:
    if shutil.which("java") is None:
        pytest.fail("Java 17 is needed for the Spark test (the machine's default java)")
    from tabserve.score.spark import SparkOptions, run_spark

    source = write(co2_rows(data_dir(), 3000, bad=6), tmp_path / "fleet.csv")
    local = run(Options(source, tmp_path / "local.parquet", ModelRef("co2", None, MODELS), workers=1))
    summary = run_spark(
        SparkOptions(
            input=str(source),
            output=str(tmp_path / "spark-out"),
            rejects=str(tmp_path / "spark-rejects"),
            models=MODELS,
            model="co2",
            master="local[2]",
        )
    )
    assert (summary["scored"], summary["rejected"]) == (local.scored, local.rejected) == (2994, 6)
    mine = {r["id"]: r for r in pq.read_table(tmp_path / "local.parquet").to_pylist()}
    theirs = pq.read_table(tmp_path / "spark-out").to_pylist()
    assert len(theirs) == len(mine)
    for row in theirs:
        expected = mine[row["id"]]
        assert {k: row[k] for k in KEYS} == {k: expected[k] for k in KEYS}
    spark_rejects = {r["id"]: r["reject_reason"] for r in pq.read_table(tmp_path / "spark-rejects").to_pylist()}
    local_rejects = {r["id"]: r["reject_reason"] for r in pacsv.read_csv(tmp_path / "local.rejects.csv").to_pylist()}
    assert spark_rejects == local_rejects
