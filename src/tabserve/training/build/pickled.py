"""A user's fitted model (joblib/pickle): opened only here, only with ``--trust-pickle``, only in a child process.

Unpickling runs code, so the build process never does it: ``convert_in_child`` writes the rows to a private
folder and starts ``python -m tabserve.training.build.pickled FOLDER``, which loads the file, checks every estimator
against ``SUPPORTED``, converts it to ONNX (skl2onnx, with onnxmltools' LightGBM converter registered) and
writes the graph, the original model's predictions on the rows and its classes. The parent reads only ONNX,
NumPy and JSON back. Numbers reach the original float32-rounded, as the server's matrix holds them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.errors import BuildError

SUPPORTED = (
    "Pipeline",
    "ColumnTransformer",
    "OneHotEncoder",
    "OrdinalEncoder",
    "SimpleImputer",
    "StandardScaler",
    "MinMaxScaler",
    "MaxAbsScaler",
    "RobustScaler",
    "LinearRegression",
    "Ridge",
    "Lasso",
    "ElasticNet",
    "LogisticRegression",
    "DecisionTreeRegressor",
    "DecisionTreeClassifier",
    "RandomForestRegressor",
    "RandomForestClassifier",
    "ExtraTreesRegressor",
    "ExtraTreesClassifier",
    "GradientBoostingRegressor",
    "GradientBoostingClassifier",
    "HistGradientBoostingRegressor",
    "HistGradientBoostingClassifier",
    "LGBMRegressor",
    "LGBMClassifier",
    "XGBRegressor",
    "XGBClassifier",
)
CHILD_TIMEOUT_S = 900
OPSET = 15


@dataclass(frozen=True, slots=True)
class Converted:
    onnx_bytes: bytes
    predictions: npt.NDArray[np.float64]
    classes: list[str]
    features: list[str]
    per_column: bool
    """True: the graph has one input per feature (named by it); False: one matrix input, features in order."""
    estimator: str


def convert_in_child(model_path: Path, frame: Any, types: dict[str, str], task: str) -> Converted:
    """Run the child on ``frame`` (feature columns, raw values); BuildError with the child's reason if it fails."""
    if not model_path.is_file():
        raise BuildError(f"{model_path}: no such file")
    with tempfile.TemporaryDirectory(prefix="tabserve-pickle-") as tmp:
        work = Path(tmp)
        frame.to_parquet(work / "rows.parquet", index=False)
        request = {"model": str(model_path.resolve()), "types": types, "task": task}
        (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
        try:
            done = subprocess.run(  # noqa: S603 - our own module, run by this interpreter, no shell
                [sys.executable, "-m", "tabserve.training.build.pickled", str(work)],
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{model_path}: converting the model took over {CHILD_TIMEOUT_S} s") from exc
        result_path = work / "result.json"
        if not result_path.is_file():
            tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise BuildError(f"{model_path}: the model could not be loaded (child exited {done.returncode}: {tail[0]})")
        result = json.loads(result_path.read_text(encoding="utf-8"))
        if "error" in result:
            raise BuildError(f"{model_path}: {result['error']}")
        return Converted(
            onnx_bytes=(work / "model.onnx").read_bytes(),
            predictions=np.load(work / "predictions.npy"),
            classes=list(result["classes"]),
            features=list(result["features"]),
            per_column=bool(result["per_column"]),
            estimator=str(result["estimator"]),
        )


# --- the child --------------------------------------------------------------------------------------


def _walk(estimator: Any) -> list[Any]:
    """Every estimator inside a pipeline / column transformer, the containers included."""
    found = [estimator]
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for _, step in steps:
            found += _walk(step)
    transformers = getattr(estimator, "transformers_", None)
    if transformers is not None:
        for _, transformer, _ in transformers:
            if not isinstance(transformer, str):
                found += _walk(transformer)
    return found


def _check_supported(estimator: Any) -> None:
    for part in _walk(estimator):
        name = type(part).__name__
        if name not in SUPPORTED:
            raise BuildError(
                f"unsupported estimator {name} (in {type(estimator).__name__}); supported: {', '.join(SUPPORTED)}"
            )


def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )


def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
    )


def _features(estimator: Any, frame: Any) -> list[str]:
    """The columns the model was fitted on, in its order; BuildError when it has none or the data lacks some."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None and hasattr(estimator, "feature_name_"):
        names = estimator.feature_name_
    if names is None:
        raise BuildError(
            f"{type(estimator).__name__} was fitted without column names (on an array), so its inputs cannot be "
            "matched to the data's columns by name: fit it on a pandas DataFrame"
        )
    features = [str(n) for n in names]
    missing = [n for n in features if n not in frame.columns]
    if missing:
        raise BuildError(f"the model was fitted on columns the data does not have: {missing}")
    return features


def _convert(estimator: Any, features: list[str], types: dict[str, str], task: str) -> tuple[Any, bool]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _register_lightgbm()
    parts = _walk(estimator)
    if any(type(part).__name__.startswith("XGB") for part in parts):
        _register_xgboost()
        for part in parts:  # onnxmltools reads XGBoost features as f0, f1, …: the order is what matters
            if type(part).__name__.startswith("XGB"):
                part.get_booster().feature_names = None
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if task == "classification" else None
    has_text = any(types[n] == "string" for n in features)
    per_column = has_text or any(type(part).__name__ == "ColumnTransformer" for part in parts)
    if per_column:
        initial = [
            (n, StringTensorType([None, 1]) if types[n] == "string" else FloatTensorType([None, 1])) for n in features
        ]
    else:
        initial = [("X", FloatTensorType([None, len(features)]))]
    model = to_onnx(estimator, initial_types=initial, options=options, target_opset={"": OPSET, "ai.onnx.ml": 3})
    from tabserve.training.build.convert import lightgbm_thresholds, round_thresholds_down

    thresholds = [t for part in parts if hasattr(part, "booster_") for t in lightgbm_thresholds(part.booster_)]
    if thresholds:
        round_thresholds_down(model, thresholds)
    return model, per_column


def _original_predictions(estimator: Any, frame: Any, features: list[str], task: str) -> npt.NDArray[np.float64]:
    rows = frame[features]
    if task == "classification":
        return np.asarray(estimator.predict_proba(rows), dtype=np.float64)
    return np.asarray(estimator.predict(rows), dtype=np.float64).reshape(-1)


def child_main(work: Path) -> int:
    """Load, check, convert, predict; write ``result.json`` (``{"error": ...}`` on a refusal)."""
    import warnings

    import joblib
    import pandas as pd

    request = json.loads((work / "request.json").read_text(encoding="utf-8"))
    result: dict[str, Any]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator = joblib.load(request["model"])
            _check_supported(estimator)
            if request["task"] == "classification" and not hasattr(estimator, "predict_proba"):
                raise BuildError(f"{type(estimator).__name__} gives no class probabilities (predict_proba)")
            frame = pd.read_parquet(work / "rows.parquet")
            for name, kind in request["types"].items():
                if kind == "float":
                    frame[name] = frame[name].astype(np.float32).astype(np.float64)
            features = _features(estimator, frame)
            predictions = _original_predictions(estimator, frame, features, request["task"])
            model, per_column = _convert(estimator, features, request["types"], request["task"])
        (work / "model.onnx").write_bytes(model.SerializeToString())
        np.save(work / "predictions.npy", predictions)
        classes = [str(c) for c in getattr(estimator, "classes_", [])]
        result = {"classes": classes, "features": features, "per_column": per_column}
        result["estimator"] = type(estimator).__name__
    except BuildError as exc:
        result = {"error": exc.detail}
    except Exception as exc:  # the user's object or a converter failed: its own words, named
        result = {"error": f"conversion to ONNX failed: {type(exc).__name__}: {exc}"}
    (work / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(child_main(Path(sys.argv[1])))
