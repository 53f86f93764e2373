"""A servable's graph made ready to answer: the output the server reads kept, a classifier's temperature fitted,
the graph checked against the original model, and the whole as a function of ``Rows`` through the serving encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from pydantic import TypeAdapter

from tabserve.errors import BuildError
from tabserve.manifest import ColumnSpec
from tabserve.runtime import ColumnEncoder
from tabserve.training.build.calibrate import Predict, fit_temperature
from tabserve.training.build.convert import choose_output, keep_output, with_temperature
from tabserve.training.build.infer import Schema
from tabserve.training.build.sources import Servable
from tabserve.training.build.table import Rows, Splits

REGRESSION_RTOL = 1e-4
REGRESSION_ATOL_SHARE = 1e-4
"""Parity of a converted regressor: |onnx − original| ≤ 1e-4·|original| + 1e-4·(target's standard deviation)."""
PROBABILITY_ATOL = 1e-4
"""Parity of a converted classifier: every probability within 1e-4 of the original's."""


def encode_with(columns: list[dict[str, Any]]) -> Callable[[Rows], npt.NDArray[np.float32]]:
    """The manifest's own ``ColumnEncoder`` for this column layout, as a function of ``Rows``."""
    encoder = ColumnEncoder(TypeAdapter(list[ColumnSpec]).validate_python(columns))
    return lambda rows: encoder.encode_columns(rows.columns, rows.rows)


def predictor(model: onnx.ModelProto, servable: Servable, output: str, task: str) -> Predict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    encode = encode_with(servable.columns)

    def predict(rows: Rows) -> npt.NDArray[np.float64]:
        if rows.rows == 0:
            return np.empty((0,) if task == "regression" else (0, 0))
        out = np.asarray(session.run([output], {servable.input_name: encode(rows)})[0], dtype=np.float64)
        return out.reshape(-1) if task == "regression" else out

    return predict


def check_parity(predict: Predict, rows: Rows, reference: npt.NDArray[np.float64], task: str) -> dict[str, Any]:
    """The graph's outputs against the original's on ``rows``, or a refusal naming the rows that differ."""
    got = predict(rows)
    if got.shape != reference.shape:
        raise BuildError(f"the ONNX graph's output has shape {got.shape}, the original's {reference.shape}")
    diff = np.abs(got - reference)
    if task == "regression":
        spread = float(np.std(rows.labels)) or 1.0
        limit = REGRESSION_RTOL * np.abs(reference) + REGRESSION_ATOL_SHARE * spread
        bad = np.flatnonzero(diff > limit)
        tolerance = f"1e-4·|original| + 1e-4·std(target) (= {REGRESSION_ATOL_SHARE * spread:.3g})"
    else:
        bad = np.flatnonzero(diff.max(axis=1) > PROBABILITY_ATOL)
        tolerance = f"{PROBABILITY_ATOL:g} per probability"
    if bad.size:
        shown = ", ".join(str(int(rows.file_rows[i])) for i in bad[:8])
        raise BuildError(
            f"the ONNX graph disagrees with the original model on {bad.size} of {rows.rows} rows beyond the tolerance "
            f"{tolerance}: rows {shown}{' …' if bad.size > 8 else ''} (largest difference {float(diff.max()):.3g})"
        )
    return {"rows": rows.rows, "max_abs_difference": float(diff.max()) if diff.size else 0.0, "tolerance": tolerance}


@dataclass(frozen=True, slots=True)
class Graph:
    model: onnx.ModelProto
    output: str
    predict: Predict
    parity: dict[str, Any] | None
    temperature: float | None


def ready(servable: Servable, schema: Schema, splits: Splits, rows: Rows) -> Graph:
    """Keep the output to serve, check parity with the original, and fit a classifier's temperature on the rows
    it was not fitted on (the validation split of a model fitted here, the training split of a given one)."""
    output = choose_output(servable.model, schema.task, len(schema.classes))
    model = keep_output(servable.model, output)
    predict = predictor(model, servable, output, schema.task)
    parity = None
    if servable.reference is not None:
        parity = check_parity(predict, servable.checked or rows, servable.reference, schema.task)
    temperature = None
    if schema.task == "classification":
        fit_rows = splits.validation if servable.form == "train" else splits.train
        out_of_fold = servable.details.pop("out_of_fold", None)
        if out_of_fold is not None:  # a linear fit: out-of-fold probabilities on the training rows
            temperature = fit_temperature(out_of_fold[0], out_of_fold[1])
        else:
            temperature = fit_temperature(predict(fit_rows), fit_rows.labels)
        if temperature != 1.0:
            model, output = with_temperature(model, output, temperature)
            predict = predictor(model, servable, output, schema.task)
    return Graph(model, output, predict, parity, temperature)
