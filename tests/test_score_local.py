"""``tabserve score`` on this machine: outputs, rejects with reasons, counts, workers, resume, Ctrl+C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import MODELS, REPO, TABSERVE, data_dir
from scorefiles import co2_rows, write
from tabserve.cli import main
from tabserve.score.local import Options, _pool, run
from tabserve.score.reader import BatchReader
from tabserve.score.scorer import ModelRef

CO2 = ModelRef("co2", None, MODELS)


def read(path: Path) -> list[dict[str, object]]:
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    return table.to_pylist()


def test_scores_every_row_or_rejects_it_with_its_reasons(tmp_path: Path) -> None:
    rows = co2_rows(data_dir(), 3000, bad=9)
    source = write(rows, tmp_path / "fleet.csv")
    state = run(Options(source, tmp_path / "out.parquet", CO2, workers=1, batch_rows=700))
    assert state.complete
    assert (state.rows_read, state.scored, state.rejected) == (3000, 2991, 9)
    out = read(tmp_path / "out.parquet")
    rejects = read(tmp_path / "out.rejects.csv")
    assert len(out) == 2991
    assert len(rejects) == 9
    assert {r["id"] for r in out} | {r["id"] for r in rejects} == {r["id"] for r in rows}  # none lost
    by_id = {r["id"]: r for r in rejects}
    bad = rows[11]  # the first bad cell: engine_size_cc "abc"
    reject = by_id[bad["id"]]
    assert reject["row"] == 12  # 1-based data row
    assert reject["reject_fields"] == "engine_size_l"
    assert reject["reject_codes"] == "wrong_type"
    assert "engine_size_l" in str(reject["reject_reason"])
    assert reject["engine_size_cc"] == "abc"  # the cell as it was, not repaired
    codes = {str(r["reject_codes"]) for r in rejects}
    assert {"out_of_range", "missing", "not_finite", "not_integer", "wrong_type"} <= codes
    first = out[0]
    assert first["model_name"] == "co2"
    assert first["model_version"] == "3.0.1"  # the default: newest
    assert first["interval_level"] == 0.9
    assert float(first["interval_lower"]) <= float(first["prediction"]) <= float(first["interval_upper"])  # type: ignore[arg-type]
    unseen = [r for r in out if r["make"] == "Zorblax"]
    assert unseen
    assert all(r["out_of_distribution"] for r in unseen)
    assert all("unknown_category" in str(r["warnings"]) for r in unseen)
    assert state.warned == sum(1 for r in out if r["warnings"] != "[]")


def test_two_workers_and_csv_output_give_the_same_answers(tmp_path: Path) -> None:
    source = write(co2_rows(data_dir(), 5000, bad=4), tmp_path / "fleet.parquet")
    one = run(Options(source, tmp_path / "one.parquet", CO2, workers=1, batch_rows=1000))
    two = run(Options(source, tmp_path / "two.csv", CO2, workers=2, batch_rows=1000, rejects=tmp_path / "r.csv"))
    assert (one.scored, one.rejected) == (two.scored, two.rejected) == (4996, 4)
    a, b = read(tmp_path / "one.parquet"), read(tmp_path / "two.csv")
    assert [r["id"] for r in a] == [r["id"] for r in b]  # input order kept
    for x, y in zip(a, b, strict=True):
        for key in ("prediction", "interval_lower", "interval_upper", "out_of_distribution", "warnings"):
            assert x[key] == y[key], key


def interrupt_after(command: list[str], progress: Path, rows: int) -> bytes:
    """Run ``command``, send Ctrl+C once its checkpoint has ``rows`` rows read; its stderr (it must exit 130)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["rows_read"] >= rows:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    return err


def grouped(rows: list[dict[str, object]], path: Path, group_rows: int) -> Path:
    """A Parquet file of many row groups (workers then read their own)."""
    pq.write_table(pq.read_table(write(rows, path)), path, row_group_size=group_rows)
    return path


@pytest.mark.parametrize("output", ["parquet", "csv"])
def test_workers_reading_their_own_row_groups_write_what_one_process_writes(tmp_path: Path, output: str) -> None:
    source = grouped(co2_rows(data_dir(), 9000, bad=9), tmp_path / "fleet.parquet", 700)
    assert pq.ParquetFile(source).metadata.num_row_groups == 13  # at least two per worker: they read them
    one = run(Options(source, tmp_path / f"one.{output}", CO2, workers=1, batch_rows=500))
    two = run(Options(source, tmp_path / f"two.{output}", CO2, workers=2, batch_rows=500))
    assert (one.scored, one.rejected, one.warned) == (two.scored, two.rejected, two.warned) == (8991, 9, one.warned)
    assert read(tmp_path / f"two.{output}") == read(tmp_path / f"one.{output}")
    assert read(tmp_path / "two.rejects.csv") == read(tmp_path / "one.rejects.csv")
    bad_rows = sorted((k * 37 + 11) % 9000 + 1 for k in range(9))
    assert [r["row"] for r in read(tmp_path / "two.rejects.csv")] == bad_rows
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".spool")]  # the workers' parts are gone


def test_ctrl_c_with_workers_on_row_groups_and_resume_finish_the_run(tmp_path: Path) -> None:
    source = grouped(co2_rows(data_dir(), 60_000, bad=20), tmp_path / "fleet.parquet", 1500)
    command = [str(TABSERVE), "score", str(source), str(tmp_path / "out.parquet"), "--model", "co2"]
    command += ["--models", str(MODELS), "--workers", "2", "--batch-rows", "400", "--progress", "plain"]
    progress = tmp_path / "out.parquet.progress.json"
    assert b"--resume" in interrupt_after(command, progress, 2000)
    stopped = json.loads(progress.read_text())
    assert 0 < stopped["rows_read"] < 60_000
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_rows == stopped["scored"]
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert (json.loads(resumed.stdout)["rows_read"], json.loads(resumed.stdout)["rejected"]) == (60_000, 20)
    run(Options(source, tmp_path / "whole.parquet", CO2, workers=1, batch_rows=400))
    assert read(tmp_path / "out.parquet") == read(tmp_path / "whole.parquet")
    assert read(tmp_path / "out.rejects.csv") == read(tmp_path / "whole.rejects.csv")


def test_a_refused_level_with_workers_is_one_line_not_a_traceback_per_worker(tmp_path: Path) -> None:
    source = grouped(co2_rows(data_dir(), 400), tmp_path / "fleet.parquet", 50)
    command = [str(TABSERVE), "score", str(source), str(tmp_path / "o.parquet"), "--model", "co2", "--level", "5"]
    command += ["--models", str(MODELS), "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tabserve score: query.level: level 5.0 is not available; allowed levels: 0.5, 0.8, 0.9, 0.95, 0.99"
    ]


def test_penguins_get_probabilities_and_prediction_sets(tmp_path: Path) -> None:
    source = data_dir() / "palmer_penguins.csv"
    state = run(Options(source, tmp_path / "p.parquet", ModelRef("penguins", None, MODELS), workers=1))
    out = read(tmp_path / "p.parquet")
    rejects = read(tmp_path / "p.rejects.csv")
    assert state.rows_read == 344 == len(out) + len(rejects)
    assert rejects  # rows without measurements ("NA") are rejected, not guessed
    assert all("bill_length_mm" in str(r["reject_reason"]) for r in rejects)
    species = {"Adelie", "Chinstrap", "Gentoo"}
    for row in out:
        assert row["prediction"] in species
        assert row["prediction"] in json.loads(str(row["prediction_set"]))
        total = sum(float(row[f"probability_{s.lower()}"]) for s in species)  # type: ignore[arg-type]
        assert abs(total - 1.0) < 1e-5


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "x.csv"
    source.write_text("engine_size_l,engine_size_cc\n2,2000\n", encoding="utf-8")
    code = main(["score", str(source), str(tmp_path / "o.parquet"), "--model", "co2", "--models", str(MODELS)])
    assert code == 1
    assert "engine_size_l given by engine_size_l, engine_size_cc" in capsys.readouterr().err
    code = main(["score", str(tmp_path / "none.csv"), str(tmp_path / "o.parquet"), "--model", "co2"])
    assert code == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["score", str(source), str(tmp_path / "o.json"), "--model", "co2"]) == 1
    assert "unknown file type" in capsys.readouterr().err


def test_ctrl_c_leaves_valid_files_and_resume_finishes_the_run(tmp_path: Path) -> None:
    source = write(co2_rows(data_dir(), 60_000, bad=20), tmp_path / "fleet.csv")
    command = [str(TABSERVE), "score", str(source), str(tmp_path / "out.parquet"), "--model", "co2"]
    command += ["--models", str(MODELS), "--workers", "1", "--batch-rows", "500", "--progress", "plain"]
    progress = tmp_path / "out.parquet.progress.json"
    err = interrupt_after(command, progress, 2000)
    assert b"--resume" in err
    stopped = json.loads(progress.read_text())
    assert not stopped["complete"]
    assert 0 < stopped["rows_read"] < 60_000
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_rows == stopped["scored"]  # valid, complete
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["complete"]
    assert (summary["rows_read"], summary["rejected"]) == (60_000, 20)
    whole = run(Options(source, tmp_path / "whole.parquet", CO2, workers=1, batch_rows=500))
    assert read(tmp_path / "out.parquet") == read(tmp_path / "whole.parquet")
    assert read(tmp_path / "out.rejects.csv") == read(tmp_path / "whole.rejects.csv")
    assert whole.rejected == 20


def test_resume_refuses_another_run(tmp_path: Path) -> None:
    source = write(co2_rows(data_dir(), 100), tmp_path / "a.csv")
    run(Options(source, tmp_path / "o.parquet", CO2, workers=1))
    with pytest.raises(Exception, match="another input, model or options"):
        run(Options(source, tmp_path / "o.parquet", CO2, workers=1, level=0.8, resume=True))


def test_nothing_of_the_scorer_is_imported_by_the_cli_module() -> None:
    probe = (
        "import sys, tabserve.cli\n"
        "heavy = {'pyarrow', 'tqdm', 'pyspark'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or (m.startswith('tabserve.score.') and m != 'tabserve.score.arguments')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=dict(os.environ)
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("rows", "batch_rows"), [(0, 10), (1, 10), (10, 10), (11, 10), (250, 7)])
def test_most_batches_is_never_fewer_than_the_batches_read(tmp_path: Path, rows: int, batch_rows: int) -> None:
    """The bound that caps the default worker count: exact for a Parquet file, never below the truth for a CSV,
    even one of empty cells (one byte per column)."""
    table = pa.table({name: pa.array([None] * rows, pa.string()) for name in "abc"})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=max(1, batch_rows // 2))
    pacsv.write_csv(table, tmp_path / "in.csv")
    for name in ("in.parquet", "in.csv"):
        reader = BatchReader(tmp_path / name, batch_rows)
        read = sum(1 for batch in reader.batches() if batch.num_rows)
        assert reader.most_batches() >= read
        if name == "in.parquet":
            assert reader.most_batches() == read


def test_the_default_worker_count_starts_no_worker_for_a_file_of_one_batch(tmp_path: Path) -> None:
    table = pa.table({"make": ["TOYOTA"] * 50})
    pacsv.write_csv(table, tmp_path / "in.csv")
    reader = BatchReader(tmp_path / "in.csv", 65_536)
    options = Options(tmp_path / "in.csv", tmp_path / "out.csv", ModelRef("co2", None, MODELS))
    assert options.worker_count(reader.most_batches()) == 1
    assert Options(options.input, options.output, options.model, workers=2).worker_count(1) == 2  # asked: kept
    with _pool(options, reader, ("csv", "csv")) as workers:
        assert workers is None
    assert options.worker_count(None) == (os.cpu_count() or 1)
