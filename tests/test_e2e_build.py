"""``tabserve build`` end to end on data no code here was written for (scikit-learn's bundled diabetes and wine,
written out as CSV): train-for-me, a fitted scikit-learn pipeline, fitted LightGBM and XGBoost models, ONNX files;
every version served by a real ``tabserve serve`` process and predicted over HTTP; a rebuilt version hot-reloaded.

Coverage band: the test split's empirical coverage at 0.9 lies within 0.9 ± (3·sqrt(0.9·0.1·(1/n + 1/m)) + 1/m),
capped at 1, with n test and m calibration rows: three standard deviations of the test rows' binomial spread and of
the calibrated quantile's own (Beta) spread, plus the finite-sample rounding of the conformal rank.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import TABSERVE, ServerProcess, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.training]

TOKEN = "build-e2e-admin-token"


@dataclass(frozen=True)
class Built:
    name: str
    path: Path
    seconds: float
    stdout: str

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        return data


def run_build(models: Path, data: Path, name: str, *extra: str) -> Built:
    started = time.perf_counter()
    args = [
        str(TABSERVE),
        "build",
        "--data",
        str(data),
        "--target",
        "target",
        "--name",
        name,
        "--models-dir",
        str(models),
    ]
    done = subprocess.run([*args, *extra], capture_output=True, text=True, check=False, timeout=300)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    version = done.stdout.split()[2]
    return Built(name, models / name / version, seconds, done.stdout)


def write_data(base: Path) -> dict[str, Path]:
    from sklearn.datasets import load_diabetes, load_wine

    diabetes = load_diabetes(as_frame=True, scaled=False).frame
    diabetes.to_csv(base / "diabetes.csv", index=False)
    mixed = diabetes.copy()
    mixed["sex"] = mixed["sex"].map({1.0: "female", 2.0: "male"})
    mixed.loc[np.random.default_rng(0).random(len(mixed)) < 0.2, "bmi"] = np.nan
    mixed.to_csv(base / "diabetes_mixed.csv", index=False)
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map({0: "cultivar_a", 1: "cultivar_b", 2: "cultivar_c"})
    wine.to_csv(base / "wine.csv", index=False)
    return {"diabetes": base / "diabetes.csv", "mixed": base / "diabetes_mixed.csv", "wine": base / "wine.csv"}


def fit_models(base: Path, data: dict[str, Path]) -> dict[str, Path]:
    """The user's side: models fitted with scikit-learn / LightGBM, saved with joblib or exported to ONNX."""
    import joblib
    import lightgbm as lgb
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    mixed = pd.read_csv(data["mixed"])
    x, y = mixed.drop(columns="target"), mixed["target"]
    numbers = [c for c in x.columns if c != "sex"]

    def prep() -> ColumnTransformer:
        scaled = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
        return ColumnTransformer([("num", scaled, numbers), ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex"])])

    ridge = Pipeline([("prep", prep()), ("ridge", Ridge(alpha=1.0))]).fit(x, y)
    joblib.dump(ridge, base / "diabetes_ridge.joblib")
    boosted = Pipeline([("prep", prep()), ("gbr", GradientBoostingRegressor(random_state=0))]).fit(x, y)
    types = [(c, StringTensorType([None, 1]) if c == "sex" else FloatTensorType([None, 1])) for c in x.columns]
    (base / "diabetes_gbr.onnx").write_bytes(to_onnx(boosted, initial_types=types).SerializeToString())

    wine = pd.read_csv(data["wine"])
    xw, yw = wine.drop(columns="target"), wine["target"]
    joblib.dump(lgb.LGBMClassifier(n_estimators=60, verbose=-1, random_state=0).fit(xw, yw), base / "wine_lgbm.joblib")
    logistic = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=2000))]).fit(xw, yw)
    options = {id(logistic.steps[-1][1]): {"zipmap": False}}
    matrix = [("features", FloatTensorType([None, xw.shape[1]]))]
    (base / "wine_logistic.onnx").write_bytes(
        to_onnx(logistic, initial_types=matrix, options=options).SerializeToString()
    )
    from sklearn.svm import SVR
    from xgboost import XGBRegressor

    plain = pd.read_csv(data["diabetes"])
    xgb = XGBRegressor(n_estimators=80, max_depth=3, learning_rate=0.1, random_state=0)
    joblib.dump(xgb.fit(plain.drop(columns="target"), plain["target"]), base / "diabetes_xgb.joblib")

    joblib.dump(SVR().fit(x[numbers].fillna(0.0), y), base / "diabetes_svr.joblib")
    return {
        "ridge": base / "diabetes_ridge.joblib",
        "gbr": base / "diabetes_gbr.onnx",
        "lgbm": base / "wine_lgbm.joblib",
        "logistic": base / "wine_logistic.onnx",
        "svr": base / "diabetes_svr.joblib",
        "xgb": base / "diabetes_xgb.joblib",
    }


@dataclass
class World:
    models: Path
    data: dict[str, Path]
    fitted: dict[str, Path]
    built: dict[str, Built]
    server: ServerProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("build")
    models = base / "models"
    data = write_data(base)
    fitted = fit_models(base, data)
    built = {
        "diabetes": run_build(models, data["diabetes"], "diabetes"),
        "diabetes-ridge": run_build(
            models, data["mixed"], "diabetes-ridge", "--model", str(fitted["ridge"]), "--trust-pickle"
        ),
        "diabetes-gbr": run_build(models, data["mixed"], "diabetes-gbr", "--onnx", str(fitted["gbr"])),
        "diabetes-xgb": run_build(
            models, data["diabetes"], "diabetes-xgb", "--model", str(fitted["xgb"]), "--trust-pickle"
        ),
        "wine": run_build(models, data["wine"], "wine"),
        "wine-lgbm": run_build(models, data["wine"], "wine-lgbm", "--model", str(fitted["lgbm"]), "--trust-pickle"),
        "wine-logistic": run_build(models, data["wine"], "wine-logistic", "--onnx", str(fitted["logistic"])),
    }
    server = start_server(base, {"TABSERVE_MODELS_DIR": str(models), "TABSERVE_ADMIN_TOKEN": TOKEN})
    yield World(models, data, fitted, built, server)
    if server.process.poll() is None:
        server.stop(signal.SIGTERM)


def band(n: int, m: int, level: float = 0.9) -> tuple[float, float]:
    half = 3.0 * math.sqrt(level * (1.0 - level) * (1.0 / n + 1.0 / m)) + 1.0 / m
    return level - half, min(1.0, level + half)


FORMS = ["diabetes", "diabetes-ridge", "diabetes-gbr", "diabetes-xgb", "wine", "wine-lgbm", "wine-logistic"]


@pytest.mark.parametrize("name", FORMS)
def test_built_version_is_served_with_confidence(world: World, name: str) -> None:
    built = world.built[name]
    manifest = built.manifest()
    assert f"built {name} " in built.stdout and "curl -s -X POST" in built.stdout
    example = manifest["example_request"]
    response = httpx.post(f"{world.server.url}/models/{name}/predict", json=example, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    if manifest["output"]["task"] == "regression":
        interval = answer["interval"]
        assert interval["level"] == 0.9 and interval["lower"] <= answer["prediction"] <= interval["upper"]
    else:
        assert answer["prediction"] in manifest["output"]["classes"]
        assert answer["prediction"] in answer["prediction_set"]
        assert math.isclose(sum(answer["probabilities"].values()), 1.0, abs_tol=1e-4)
    tests = manifest["metrics"]["test"]
    key = "1" * len(manifest["conformal"]["pattern_inputs"])
    full = tests[key or "all"]
    cover = full["set_coverage" if "set_coverage" in full else "coverage"]["0.9"]
    low, high = band(full["rows"], manifest["conformal"]["calibration_rows"][key])
    assert low <= cover <= high, (name, cover, full["rows"])


def test_curl_command_printed_by_the_build_answers(world: World) -> None:
    line = next(ln for ln in world.built["diabetes"].stdout.splitlines() if ln.startswith("curl "))
    body = json.loads(line.split(" -d ", 1)[1].strip("'"))
    response = httpx.post(f"{world.server.url}/models/diabetes/predict", json=body, timeout=30)
    assert response.status_code == 200 and "interval" in response.json()


def test_absent_optional_input_gets_its_own_pattern(world: World) -> None:
    manifest = world.built["diabetes-ridge"].manifest()
    assert manifest["conformal"]["pattern_inputs"] == ["bmi"]
    example = {k: v for k, v in manifest["example_request"].items() if k != "bmi"}
    answer = httpx.post(f"{world.server.url}/models/diabetes-ridge/predict", json=example, timeout=30).json()
    width = answer["interval"]["upper"] - answer["interval"]["lower"]
    assert math.isclose(width, 2 * manifest["conformal"]["quantiles"]["0"]["0.9"], abs_tol=2e-3)


def test_inputs_are_checked_against_the_inferred_schema(world: World) -> None:
    manifest = world.built["diabetes-ridge"].manifest()
    sex = next(i for i in manifest["inputs"] if i["name"] == "sex")
    assert sex["categories"] == ["FEMALE", "MALE"]
    bad = {**manifest["example_request"], "bp": 1e6}
    response = httpx.post(f"{world.server.url}/models/diabetes-ridge/predict", json=bad, timeout=30)
    assert response.status_code == 422 and "bp" in response.text


def test_parity_and_forms_recorded(world: World) -> None:
    ridge = world.built["diabetes-ridge"].manifest()["metrics"]
    assert ridge["model"]["form"] == "model" and ridge["parity"]["max_abs_difference"] < 1e-3
    assert world.built["wine-lgbm"].manifest()["metrics"]["parity"]["max_abs_difference"] < 1e-4
    xgb = world.built["diabetes-xgb"].manifest()["metrics"]
    assert xgb["model"]["estimator"] == "XGBRegressor" and xgb["parity"]["max_abs_difference"] < 1e-2
    assert world.built["wine-logistic"].manifest()["output"]["classes"] == ["cultivar_a", "cultivar_b", "cultivar_c"]


def test_unsupported_estimator_is_named(world: World) -> None:
    args = [str(TABSERVE), "build", "--data", str(world.data["mixed"]), "--target", "target", "--name", "svr"]
    args += ["--models-dir", str(world.models), "--model", str(world.fitted["svr"]), "--trust-pickle"]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1
    assert "unsupported estimator SVR" in done.stderr and "supported: Pipeline, ColumnTransformer" in done.stderr
    assert not (world.models / "svr").exists()


def test_rebuilt_version_is_hot_reloaded(world: World) -> None:
    rebuilt = run_build(world.models, world.data["diabetes"], "diabetes", "--seed", "7")
    assert rebuilt.path.name == "1.1.0"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{world.server.url}/admin/reload", json={"model": "diabetes"}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    example = rebuilt.manifest()["example_request"]
    answer = httpx.post(f"{world.server.url}/models/diabetes/predict", json=example, timeout=30).json()
    assert answer["model"]["version"] == "1.1.0"


def test_new_model_name_is_served_after_a_reload(world: World) -> None:
    """Serving every model on disk (no ``TABSERVE_MODELS``): a name built while serving is served on reload."""
    late = run_build(world.models, world.data["wine"], "wine-late")
    missing = httpx.post(f"{world.server.url}/models/wine-late/predict", json={}, timeout=30)
    assert missing.status_code == 404
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{world.server.url}/admin/reload", json={"model": "wine-late"}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["previous_version"] is None
    answer = httpx.post(
        f"{world.server.url}/models/wine-late/predict", json=late.manifest()["example_request"], timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["model"]["name"], answer.json()["model"]["version"]) == ("wine-late", late.path.name)
    names = [m["name"] for m in httpx.get(f"{world.server.url}/models", timeout=30).json()["models"]]
    assert "wine-late" in names


@pytest.mark.parametrize(("name", "data"), [("diabetes-ridge", "mixed"), ("wine-lgbm", "wine")])
def test_tabserve_score_answers_like_the_server(world: World, name: str, data: str, tmp_path: Path) -> None:
    """A built version scores a file (``tabserve score``) with the server's answers, row for row."""
    import pyarrow.parquet as pq

    out = tmp_path / "scored.parquet"
    args = [str(TABSERVE), "score", str(world.data[data]), str(out), "--model", name, "--models", str(world.models)]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    scored = pq.read_table(out).to_pylist()
    rows = pd.read_csv(world.data[data]).drop(columns="target")
    assert len(scored) == len(rows)
    for index in range(0, len(rows), 37):
        instance = {k: v for k, v in rows.iloc[index].to_dict().items() if not (isinstance(v, float) and math.isnan(v))}
        answer = httpx.post(f"{world.server.url}/models/{name}/predict", json=instance, timeout=30).json()
        row = scored[index]
        assert row["prediction"] == answer["prediction"], (index, row, answer)
        if "interval" in answer:
            assert (row["interval_lower"], row["interval_upper"]) == (
                answer["interval"]["lower"],
                answer["interval"]["upper"],
            )
        else:
            assert json.loads(row["prediction_set"]) == answer["prediction_set"], (index, row, answer)  # a JSON array
