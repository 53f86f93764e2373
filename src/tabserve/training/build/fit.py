"""Train-for-me: LightGBM with sane defaults and early stopping on the validation split, exported to ONNX.

The matrix is the manifest's own column layout (numbers as they are, a category one-hot up to
``ONE_HOT_MAX`` values and ordinal codes beyond), built by the serving ``ColumnEncoder``; the training rows are
augmented with copies missing the pattern inputs, so the model has seen every absence a request may bring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from tabserve.training.build.convert import lightgbm_thresholds, round_thresholds_down
from tabserve.training.build.infer import Schema
from tabserve.training.build.table import Rows, augmented, every_pattern

ONE_HOT_MAX = 12
ORDINAL_UNKNOWN = -2.0
ORDINAL_MISSING = -1.0
MAX_ROUNDS = 2000
LARGE_ROWS = 20_000
"""From this many fitting rows on, the learning rate doubles, the rounds and the patience halve and numbers get 63
histogram bins instead of 255 (same reach, half the trees, a quicker fit; measured in bench/build_bench.py)."""
EARLY_STOPPING_ROUNDS = 50
LEARNING_RATE = 0.05
MIN_DELTA = 1e-4
"""An improvement of the validation loss below this does not count (a tiny, separable validation split would
else never stop); for a regression, below this share of the target's variance (``min_delta``: the l2 loss is in
the target's squared unit, so a fixed figure stops a small-valued target at once and never stops a large one)."""


def min_delta(task: str, labels: npt.NDArray[Any]) -> float:
    if task == "classification":
        return MIN_DELTA
    return MIN_DELTA * (float(np.var(labels)) or 1.0)


OPSET = 15


def column_layout(
    schema: Schema,
    ordinal: frozenset[str] = frozenset(),
    tokens: Mapping[str, Mapping[str, list[str]]] | None = None,
) -> list[dict[str, Any]]:
    """The manifest's ``columns`` for a model tabserve fits (categories named in ``ordinal`` as one ordinal column
    whatever their count, so that their absence is one code a graph can test; a text column as the token columns
    ``tokens[name]`` chose)."""
    columns: list[dict[str, Any]] = []
    for feature in schema.features:
        if feature.kind == "number":
            columns.append({"kind": "numeric", "input": feature.name})
        elif feature.kind == "text":
            chosen = (tokens or {}).get(feature.name, {})
            columns += [{"kind": "token", "input": feature.name, "tokens": words} for words in chosen.values()]
        elif len(feature.categories) <= ONE_HOT_MAX and feature.name not in ordinal:
            columns += [
                {"kind": "indicator", "input": feature.name, "value": value, "missing": 0.0}
                for value in feature.categories
            ]
        else:
            codes = {value: float(i) for i, value in enumerate(feature.categories)}
            columns.append(
                {
                    "kind": "ordinal",
                    "input": feature.name,
                    "codes": codes,
                    "unknown": ORDINAL_UNKNOWN,
                    "missing": ORDINAL_MISSING,
                }
            )
    return columns


@dataclass(frozen=True, slots=True)
class Fitted:
    model: Any
    rounds: int
    params: dict[str, Any]
    out_of_fold: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]] | None = None
    """A classifier's out-of-fold probabilities and labels on the training rows (linear: cheap to refit), which its
    temperature is fitted on instead of the small validation split."""


def lightgbm_params(rows: int, task: str, classes: int, seed: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "n_estimators": MAX_ROUNDS if rows < LARGE_ROWS else MAX_ROUNDS // 2,
        "learning_rate": LEARNING_RATE if rows < LARGE_ROWS else 2 * LEARNING_RATE,
        "num_leaves": 31 if rows >= 5000 else 15 if rows >= 1000 else 7,
        "min_child_samples": 20 if rows >= 2000 else 10,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "max_bin": 255 if rows < LARGE_ROWS else 63,
        "random_state": seed,
        "n_jobs": 2,
        "verbose": -1,
    }
    if task == "classification":
        params["objective"] = "binary" if classes == 2 else "multiclass"
    return params


def fit_lightgbm(
    schema: Schema,
    encode: Any,
    train: Rows,
    validation: Rows,
    seed: int,
    learn_validation: bool = False,
) -> Fitted:
    """Fit on augmented training rows; stop when the augmented validation rows stop improving. With
    ``learn_validation`` (a regression on a temporal split, whose validation rows are the newest) it is then
    refitted on training + validation rows with the rounds found."""
    import lightgbm as lgb

    fit_rows = augmented(train, schema.pattern_inputs, seed)
    val_rows = augmented(validation, schema.pattern_inputs, seed + 1)
    x_fit: npt.NDArray[np.float32] = encode(fit_rows)
    x_val: npt.NDArray[np.float32] = encode(val_rows)
    params = lightgbm_params(fit_rows.rows, schema.task, len(schema.classes), seed)
    patience = EARLY_STOPPING_ROUNDS if fit_rows.rows < LARGE_ROWS else EARLY_STOPPING_ROUNDS // 2
    model: Any = lgb.LGBMClassifier(**params) if schema.task == "classification" else lgb.LGBMRegressor(**params)
    model.fit(
        x_fit,
        fit_rows.labels,
        eval_X=(x_val,),
        eval_y=(val_rows.labels,),
        callbacks=[lgb.early_stopping(patience, verbose=False, min_delta=min_delta(schema.task, fit_rows.labels))],
    )
    rounds = int(model.best_iteration_ or params["n_estimators"])
    if learn_validation:
        model = lgb.LGBMRegressor(**{**params, "n_estimators": rounds})
        model.fit(np.vstack([x_fit, x_val]), np.concatenate([fit_rows.labels, val_rows.labels]))
    return Fitted(model, rounds, {k: v for k, v in params.items() if k not in ("n_jobs", "verbose")})


def export_lightgbm(fitted: Fitted, width: int) -> tuple[onnx.ModelProto, str, str]:
    """The fitted booster (up to its best iteration) as ONNX: (model, input name, output name)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = fitted.model.booster_
    booster.best_iteration = fitted.rounds
    model = convert_lightgbm(
        fitted.model,
        initial_types=[("X", FloatTensorType([None, width]))],
        target_opset=OPSET,
        zipmap=False,
    )
    round_thresholds_down(model, lightgbm_thresholds(booster))
    names = [o.name for o in model.graph.output]
    output = "probabilities" if "probabilities" in names else names[0]
    return model, "X", output


FOLDS = 5
LINEAR_C = 1.0
LINEAR_ALPHA = 1.0


LINEAR_EVERY_PATTERN_MAX_ROWS = 200_000
"""The linear fit sees every training row once per pattern (``every_pattern``) while that makes at most this many
rows; beyond, the random masked copy of ``augmented``."""


def _linear_rows(rows: Rows, pattern_inputs: list[str], seed: int) -> Rows:
    if rows.rows * 2 ** len(pattern_inputs) <= LINEAR_EVERY_PATTERN_MAX_ROWS:
        return every_pattern(rows, pattern_inputs)
    return augmented(rows, pattern_inputs, seed)


def fit_linear(schema: Schema, encode: Any, train: Rows, seed: int) -> Fitted:
    """Median imputation, standard scaling, then ridge (regression) or multinomial logistic regression, fitted on
    the training rows once per missing-input pattern; a classifier also gets out-of-fold probabilities (5 folds,
    each held-out fold seen in every pattern) for its temperature."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    def make() -> Pipeline:
        last: Any = (
            LogisticRegression(C=LINEAR_C, max_iter=5000)
            if schema.task == "classification"
            else Ridge(alpha=LINEAR_ALPHA, random_state=seed)
        )
        impute = SimpleImputer(strategy="median", keep_empty_features=True)
        return Pipeline([("impute", impute), ("scale", StandardScaler()), ("fit", last)])

    fit_rows = _linear_rows(train, schema.pattern_inputs, seed)
    pipeline = make().fit(encode(fit_rows).astype(np.float64), fit_rows.labels)
    out_of_fold = None
    if schema.task == "classification":
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
        proba: list[npt.NDArray[np.float64]] = []
        labels: list[npt.NDArray[np.int64]] = []
        for k, (fit_index, held_index) in enumerate(folds.split(np.zeros(train.rows), train.labels)):
            part = _linear_rows(train.take(fit_index), schema.pattern_inputs, seed + k)
            held = _linear_rows(train.take(held_index), schema.pattern_inputs, seed + 100 + k)
            fold_model = make().fit(encode(part).astype(np.float64), part.labels)
            proba.append(np.asarray(fold_model.predict_proba(encode(held).astype(np.float64)), dtype=np.float64))
            labels.append(np.asarray(held.labels, dtype=np.int64))
        out_of_fold = (np.vstack(proba), np.concatenate(labels))
    name = "LogisticRegression" if schema.task == "classification" else "Ridge"
    params = {"C": LINEAR_C} if schema.task == "classification" else {"alpha": LINEAR_ALPHA}
    return Fitted(pipeline, 0, {"estimator": f"median imputer + standard scaler + {name}", **params}, out_of_fold)


def export_linear(fitted: Fitted, width: int, task: str) -> tuple[onnx.ModelProto, str, str]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = fitted.model.steps[-1][1]
    options = {id(final): {"zipmap": False}} if task == "classification" else None
    model = to_onnx(
        fitted.model, initial_types=[("X", FloatTensorType([None, width]))], options=options, target_opset=OPSET
    )
    names = [o.name for o in model.graph.output]
    return model, "X", "probabilities" if "probabilities" in names else names[0]


def reference_outputs(fitted: Fitted, matrix: npt.NDArray[np.float32], task: str) -> npt.NDArray[np.float64]:
    """The fitted estimator's own outputs (float64) on the serving matrix: what the ONNX graph must reproduce."""
    rows = matrix.astype(np.float64) if not hasattr(fitted.model, "booster_") else matrix
    if task == "classification":
        return np.asarray(fitted.model.predict_proba(rows), dtype=np.float64)
    return np.asarray(fitted.model.predict(rows), dtype=np.float64).reshape(-1)
