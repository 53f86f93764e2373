"""The penguins classifier: standardised multinomial logistic regression, its temperature, its ONNX graph.

StandardScaler + LogisticRegression is linear up to the softmax, so the exported graph folds scaler,
coefficients and the temperature into one ``MatMul + Add + Softmax``: no converter, no ZipMap, three
probability columns in ``CLASSES`` order. The temperature is chosen on out-of-fold predictions of the
training split, so the calibration split stays untouched for the conformal tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tabserve.training.card import expected_calibration_error
from tabserve.training.penguins_data import CLASSES, PenguinData, augmented, encode, masked, pattern_keys

REGULARISATION_C = 1.0
FOLDS = 5
ECE_BINS = 15
OPSET = 17
IR_VERSION = 8
INPUT_NAME = "X"
OUTPUT_NAME = "probabilities"

Floats = npt.NDArray[np.float64]


def fit_pipeline(data: PenguinData) -> Pipeline:
    """Fit on ``data`` repeated once per island/sex pattern (absent or unknown = all-zero one-hot)."""
    rows = augmented(data)
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("logistic", LogisticRegression(C=REGULARISATION_C, max_iter=5000))]
    )
    pipeline.fit(encode(rows).astype(np.float64), rows.labels)
    classes = [int(c) for c in pipeline.classes_]
    if classes != list(range(len(CLASSES))):
        raise ValueError(f"training data lacks a class: saw {classes}, expected {len(CLASSES)} classes")
    return pipeline


def softmax(logits: Floats) -> Floats:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: Floats = exp / exp.sum(axis=1, keepdims=True)
    return out


def estimator_probabilities(pipeline: Pipeline, temperature: float, matrix: npt.ArrayLike) -> Floats:
    """The trained estimator's probabilities in float64 (the reference the ONNX graph must match)."""
    logits = np.asarray(pipeline.decision_function(np.asarray(matrix, dtype=np.float64)), dtype=np.float64)
    return softmax(logits / temperature)


def log_loss(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    proba = np.asarray(probabilities, dtype=np.float64)
    idx = np.asarray(labels, dtype=np.int64)
    picked = np.clip(proba[np.arange(idx.size), idx], 1e-15, 1.0)
    return float(-np.mean(np.log(picked)))


@dataclass(frozen=True, slots=True)
class TemperatureChoice:
    temperature: float
    fitted: float
    oof_ece_raw: float
    oof_ece_scaled: float
    oof_log_loss_raw: float
    oof_log_loss_scaled: float

    @property
    def applied(self) -> bool:
        return self.temperature != 1.0


def choose_temperature(train: PenguinData, seed: int) -> TemperatureChoice:
    """Fit a temperature on out-of-fold logits (every pattern); keep it only if it lowers out-of-fold ECE."""
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    logit_parts: list[Floats] = []
    label_parts: list[npt.NDArray[np.int64]] = []
    for fit_index, held_index in folds.split(np.zeros(train.rows), train.labels):
        pipeline = fit_pipeline(train.take(fit_index))
        held = train.take(held_index)
        for key in pattern_keys():
            rows = masked(held, key)
            logit_parts.append(np.asarray(pipeline.decision_function(encode(rows).astype(np.float64))))
            label_parts.append(rows.labels)
    logits = np.vstack(logit_parts)
    labels = np.concatenate(label_parts)

    def nll(log_t: float) -> float:
        return log_loss(softmax(logits / math.exp(log_t)), labels)

    fitted = round(math.exp(_golden_minimum(nll, math.log(0.05), math.log(20.0))), 4)
    raw_proba, scaled_proba = softmax(logits), softmax(logits / fitted)
    ece_raw = expected_calibration_error(raw_proba, labels, ECE_BINS)
    ece_scaled = expected_calibration_error(scaled_proba, labels, ECE_BINS)
    return TemperatureChoice(
        temperature=fitted if ece_scaled < ece_raw else 1.0,
        fitted=fitted,
        oof_ece_raw=ece_raw,
        oof_ece_scaled=ece_scaled,
        oof_log_loss_raw=log_loss(raw_proba, labels),
        oof_log_loss_scaled=log_loss(scaled_proba, labels),
    )


def _golden_minimum(func: Callable[[float], float], low: float, high: float, steps: int = 80) -> float:
    """Golden-section search for the minimum of a unimodal ``func`` on [low, high] (deterministic)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = func(c), func(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = func(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = func(d)
    return (a + b) / 2.0


def folded_weights(pipeline: Pipeline, temperature: float) -> tuple[Floats, Floats]:
    """(W [k, c], b [c]) with softmax(X @ W + b) = the pipeline's probabilities at ``temperature``."""
    scaler: StandardScaler = pipeline.named_steps["scale"]
    logistic: LogisticRegression = pipeline.named_steps["logistic"]
    coef = np.asarray(logistic.coef_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    weights = (coef / scale).T / temperature
    bias = (np.asarray(logistic.intercept_, dtype=np.float64) - coef @ (mean / scale)) / temperature
    return weights, bias


def export_onnx(pipeline: Pipeline, temperature: float, path: Path) -> None:
    """Write the folded linear-softmax graph: input ``X`` float32 [n, k], output ``probabilities`` [n, 3]."""
    weights, bias = folded_weights(pipeline, temperature)
    width, classes = weights.shape
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        ],
        name="penguins_linear_softmax",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", width])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), name="W"),
            numpy_helper.from_array(bias.astype(np.float32), name="b"),
        ],
    )
    model = helper.make_model(
        graph, producer_name="tabserve", opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    model.doc_string = f"Palmer penguin species; classes {', '.join(CLASSES)}; temperature {temperature:g}"
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
