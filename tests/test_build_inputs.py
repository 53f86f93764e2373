"""``tabserve build`` on bad input: every refusal is a one-line message naming the column / row / file, exit code 1,
and comes before any model is fitted; plus the inference rules (task, kinds, patterns, identifiers, spec)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tabserve.cli import main
from tabserve.errors import BuildError
from tabserve.training.build.infer import MIN_ROWS, infer_schema
from tabserve.training.build.spec import BuildSpec, parse_spec

pytestmark = pytest.mark.training


def synthetic(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(10.0, 2.0, n)
    x2 = rng.uniform(0.0, 5.0, n)
    colour = rng.choice(["red", "Green", "blue"], n)
    y = 3.0 * x1 - 2.0 * x2 + np.where(colour == "red", 4.0, 0.0) + rng.normal(0.0, 1.0, n)
    return pd.DataFrame({"x1": x1.round(3), "x2": x2.round(3), "colour": colour, "y": y.round(3)})


def build(tmp_path: Path, frame: pd.DataFrame | None, *extra: str, csv: str | None = None) -> list[str]:
    data = tmp_path / "data.csv"
    if csv is not None:
        data.write_text(csv, encoding="utf-8")
    elif frame is not None:
        frame.to_csv(data, index=False)
    args = ["build", "--data", str(data), "--name", "demo", "--models-dir", str(tmp_path / "models"), *extra]
    if "--target" not in extra:
        args += ["--target", "y"]
    return args


def refused(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tabserve build:")]
    assert len(lines) == 1, err
    assert "[build 3/6]" not in err, "refused after training started"
    return lines[0]


def test_target_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, build(tmp_path, synthetic(), "--target", "price"))
    assert "target column 'price' is not in the file" in line and "x1" in line


def test_target_constant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic().assign(y=7.0)
    assert "target column 'y' is constant" in refused(capsys, build(tmp_path, frame))


def test_target_without_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic().assign(y=np.nan)
    assert "target column 'y' has no values" in refused(capsys, build(tmp_path, frame))


def test_too_few_rows_says_how_many_are_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, build(tmp_path, synthetic(n=100)))
    assert "too few rows to calibrate: 100 rows" in line
    assert f"at least {MIN_ROWS} are needed" in line


def test_feature_equal_to_target_is_a_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic()
    frame["y_copy"] = frame["y"]
    line = refused(capsys, build(tmp_path, frame))
    assert "column 'y_copy' equals the target 'y'" in line and "leak" in line


def test_category_determining_the_class_is_a_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic()
    frame["label"] = np.where(frame["x1"] > 10, "high", "low")
    frame["label_code"] = np.where(frame["label"] == "high", "H", "L")
    line = refused(capsys, build(tmp_path, frame, "--target", "label"))
    assert "column 'label_code' equals the target 'label'" in line


def test_mixed_types_name_column_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic().astype({"x2": object})
    frame.loc[41, "x2"] = "about four"
    line = refused(capsys, build(tmp_path, frame))
    assert "column 'x2' mixes numbers and text: row 42 has 'about four'" in line


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "the file is empty" in refused(capsys, build(tmp_path, None, csv=""))


def test_header_without_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, build(tmp_path, None, csv="x1,x2,y\n"))
    assert "has a header (x1, x2, y) but no data rows" in line


def test_rare_class_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic()
    frame["kind"] = np.where(frame.index < 3, "rare", np.where(frame["x1"] > 10, "a", "b"))
    line = refused(capsys, build(tmp_path, frame, "--target", "kind"))
    assert "class 'rare' has 3 rows" in line


def test_pickle_refused_without_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.joblib"
    model.write_bytes(b"\x80\x04not really")
    line = refused(capsys, build(tmp_path, synthetic(), "--model", str(model)))
    assert "runs any code inside it; pass --trust-pickle" in line


def test_onnx_inputs_must_match_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Identity", ["weight"], ["out"])],
        "g",
        [helper.make_tensor_value_info("weight", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 1])],
    )
    path = tmp_path / "m.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    line = refused(capsys, build(tmp_path, synthetic(), "--onnx", str(path)))
    assert "model's inputs ['weight'] are not columns of the data" in line


def test_version_exists_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models" / "demo" / "2.0.0").mkdir(parents=True)
    line = refused(capsys, build(tmp_path, synthetic(), "--version", "2.0.0"))
    assert "already exists: versions are never overwritten" in line


def test_identifier_is_warned_and_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic()
    frame.insert(0, "row_id", np.arange(1000, 1000 + len(frame)))
    frame.insert(1, "ticket", [f"T-{i:05d}" for i in range(len(frame))])
    assert main(build(tmp_path, frame)) == 0
    err = capsys.readouterr().err
    assert "column 'row_id' is unique per row and ordered like a row counter: dropped as an identifier" in err
    assert "column 'ticket' is unique per row: dropped as an identifier" in err
    manifest = json.loads((tmp_path / "models" / "demo" / "1.0.0" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["x1", "x2", "colour"]
    assert manifest["metrics"]["dropped_columns"]["ticket"] == "identifier (unique per row)"


def test_inference_task_kinds_and_patterns() -> None:
    frame = synthetic()
    frame.loc[frame.index % 4 == 0, "colour"] = np.nan
    schema, _ = infer_schema(frame, "y", BuildSpec(), None, None)
    assert schema.task == "regression"
    assert [(f.name, f.kind) for f in schema.features] == [("x1", "number"), ("x2", "number"), ("colour", "category")]
    colour = schema.feature("colour")
    assert colour.categories == sorted(colour.categories, key=lambda c: -colour.counts[c])
    assert set(colour.categories) == {"RED", "GREEN", "BLUE"} and colour.missing == 100
    assert schema.pattern_inputs == ["colour"]
    labelled = frame.assign(grade=np.where(frame["y"] > 25, 1, 0)).drop(columns="y")
    schema, _ = infer_schema(labelled, "grade", BuildSpec(), None, None)
    assert schema.task == "classification" and schema.classes == ["0", "1"]


def test_spec_refuses_unknown_keys_and_units() -> None:
    with pytest.raises(BuildError, match=r"\[columns.x1\] has unknown keys \['colour'\]"):
        parse_spec('[columns.x1]\ncolour = "red"\n')
    with pytest.raises(BuildError, match="data_unit 'furlong' is not a unit of 'mm'"):
        parse_spec('[columns.x1]\nunit = "mm"\ndata_unit = "furlong"\n')
    spec = parse_spec('[model]\ntarget = "y"\noptional = ["x2"]\n[columns.x1]\nunit = "mm"\ndata_unit = "cm"\n')
    assert spec.target == "y" and spec.optional == ("x2",) and spec.column("x1").data_unit == "cm"


def test_spec_split_shares_are_checked_and_change_the_rows_needed() -> None:
    spec = parse_spec("[split]\ncalibration = 0.3\ntest = 0.25\n")
    assert (spec.calibration_share, spec.test_share) == (0.3, 0.25)
    assert (BuildSpec().calibration_share, BuildSpec().test_share) == (0.2, 0.2)
    with pytest.raises(BuildError, match=r"\[split\] has unknown keys \['validation'\]"):
        parse_spec("[split]\nvalidation = 0.1\n")
    with pytest.raises(BuildError, match=r"\[split\] test must be a share of the rows between 0 and 1, not 1.5"):
        parse_spec("[split]\ntest = 1.5\n")
    with pytest.raises(BuildError, match=r"calibration \+ test = 0.9 leaves too little to fit on"):
        parse_spec("[split]\ncalibration = 0.5\ntest = 0.4\n")
    frame = pd.DataFrame({"x": np.arange(120.0) % 17, "y": np.arange(120.0) * 0.5})
    with pytest.raises(BuildError, match=r"120 rows with a target; at least 150 are needed .* 20% of the rows"):
        infer_schema(frame, "y", BuildSpec(), None, None)
    schema, _ = infer_schema(frame, "y", spec, None, None)  # 30 calibration rows at 0.3 need 100
    assert schema.task == "regression"


def test_spec_range_excluding_data_names_the_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text("[columns.x2]\nmin = 0.0\nmax = 4.0\n", encoding="utf-8")
    frame = synthetic()
    row = int(np.flatnonzero(frame["x2"] > 4.0)[0])
    line = refused(capsys, build(tmp_path, frame, "--spec", str(spec)))
    assert f"column 'x2' row {row + 1} is {frame['x2'].iloc[row]:g}, outside the spec's range 0.0 to 4.0" in line


def test_cli_parser_imports_nothing_of_the_build() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tabserve.cli import build_parser; build_parser().parse_args(['build', '--data', 'x', "
        "'--name', 'n']); heavy = {'pandas', 'sklearn', 'lightgbm', 'onnx', 'tabserve.training.build.command'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_parity_failure_names_the_rows() -> None:
    from tabserve.training.build.graph import check_parity as _parity
    from tabserve.training.build.table import Rows

    rows = Rows({"x": [1.0, 2.0, 3.0, 4.0]}, np.array([10.0, 20.0, 30.0, 40.0]), np.array([5, 6, 7, 8]))
    reference = np.array([10.0, 20.0, 30.0, 40.0])

    def predict(_: Rows) -> np.ndarray:
        return np.array([10.0, 20.5, 30.0, 39.0])

    with pytest.raises(BuildError, match=r"disagrees with the original model on 2 of 4 rows .*: rows 6, 8 "):
        _parity(predict, rows, reference, "regression")
    assert _parity(lambda _: reference + 1e-6, rows, reference, "regression")["rows"] == 4


def test_adapter_feeds_named_inputs_from_the_matrix() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tabserve.training.build.convert import MATRIX_INPUT, InputSource, adapt_to_matrix

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["n"], ["n32"], to=TensorProto.FLOAT),
            helper.make_node("Identity", ["c"], ["text"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("n", TensorProto.DOUBLE, [None, 1]),
            helper.make_tensor_value_info("c", TensorProto.STRING, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("n32", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    adapted = adapt_to_matrix(model, [InputSource("n", 1), InputSource("c", 0, ("", "Red", "Blue"))], 2)
    session = ort.InferenceSession(adapted.SerializeToString(), providers=["CPUExecutionProvider"])
    matrix = np.array([[0.0, 1.5], [1.0, -2.0], [-1.0, 7.0], [5.0, 0.0]], dtype=np.float32)
    numbers, text = session.run(None, {MATRIX_INPUT: matrix})
    assert numbers[:, 0].tolist() == [1.5, -2.0, 7.0, 0.0]
    assert text[:, 0].tolist() == ["Red", "Blue", "", "Blue"]  # -1 (unknown/missing) -> "", out of range -> clipped


def test_parquet_spec_units_and_temporal_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = synthetic()
    frame["measured_on"] = pd.date_range("2020-01-01", periods=len(frame), freq="D")[::-1]
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[model]\ndescription = "A demo"\noptional = ["colour"]\n'
        '[columns.x1]\nunit = "mm"\ndata_unit = "cm"\ndescription = "Length"\n'
        '[columns.colour]\naliases = { "Verde" = "green" }\n',
        encoding="utf-8",
    )
    args = ["build", "--data", str(tmp_path / "data.parquet"), "--target", "y", "--name", "demo"]
    args += ["--models-dir", str(tmp_path / "models"), "--spec", str(spec), "--time-column", "measured_on"]
    assert main(args) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "models" / "demo" / "1.0.0" / "manifest.json").read_text())
    assert manifest["description"] == "A demo"
    assert manifest["metrics"]["split"]["temporal"] is True
    inputs = {i["name"]: i for i in manifest["inputs"]}
    assert "measured_on" not in inputs
    x1 = inputs["x1"]
    assert x1["unit"] == "mm" and x1["units"] == ["mm", "cm", "in"] and x1["description"] == "Length"
    assert x1["training"]["min"] > 10 * frame["x1"].min() - 1e-6  # stored in mm: the file's cm × 10
    assert inputs["colour"]["aliases"] == {"VERDE": "GREEN"} and inputs["colour"]["required"] is False
    assert manifest["conformal"]["pattern_inputs"] == ["colour"]
    from fastapi.testclient import TestClient

    from tabserve.api import create_app
    from tabserve.config import Settings

    with TestClient(create_app(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "var"))) as client:
        body = {**manifest["example_request"], "x1": {"value": 1.0, "unit": "cm"}, "colour": "verde"}
        answer = client.post("/models/demo/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["interval"]["level"] == 0.9


def test_parquet_text_column_of_numbers_with_a_word_is_mixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = synthetic()
    frame["x2"] = frame["x2"].astype(str)  # a text column of numbers, as exports often write them
    frame.loc[7, "x2"] = "n/a (sensor off)"
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    args = ["build", "--data", str(tmp_path / "data.parquet"), "--target", "y", "--name", "demo"]
    line = refused(capsys, [*args, "--models-dir", str(tmp_path / "models")])
    assert "column 'x2' mixes numbers and text: row 8 has 'n/a (sensor off)'" in line
