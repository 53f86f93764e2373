"""Where the model comes from: fitted here (LightGBM), an ONNX file, or a fitted model converted in a child process.

Each form ends as a ``Servable``: a graph with the server's one float-matrix input, the output it reads, the
manifest's column layout, the inputs it uses and (for a converted model) the original's predictions on every
row, which the build checks the graph against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pandas as pd
from onnx import TensorProto

from tabserve.errors import BuildError
from tabserve.training.build.convert import (
    MATRIX_INPUT,
    NUMERIC_TYPES,
    InputSource,
    adapt_to_matrix,
    cast_matrix_input,
    graph_inputs,
)
from tabserve.training.build.fit import (
    column_layout,
    export_lightgbm,
    export_linear,
    fit_lightgbm,
    fit_linear,
    reference_outputs,
)
from tabserve.training.build.infer import Schema
from tabserve.training.build.per_pattern import details as per_pattern_details
from tabserve.training.build.per_pattern import export_per_pattern, fit_per_pattern
from tabserve.training.build.pickled import convert_in_child
from tabserve.training.build.spec import BuildSpec
from tabserve.training.build.table import Rows, Splits, every_pattern
from tabserve.training.build.tokens import choose_tokens

OWN_CHECK_ROWS = 20_000
CODE_UNKNOWN = -1.0
"""Ordinal code of an unknown or absent category fed to a converted graph: decoded to the empty string."""


@dataclass(slots=True)
class Servable:
    model: onnx.ModelProto
    input_name: str
    columns: list[dict[str, Any]]
    features: list[str]
    form: str
    estimator: str
    classes: list[str] | None = None
    """Probability columns' class names in the graph's order (None: the schema's order)."""
    reference: npt.NDArray[np.float64] | None = None
    """The original model's outputs on ``checked`` (every row when None), to check the graph against."""
    checked: Rows | None = None
    details: dict[str, Any] = field(default_factory=dict)
    learned_validation: bool = False
    """Fitted on the validation rows too (refitted after early stopping): they count as training rows."""


def _check_per_pattern(schema: Schema, spec: BuildSpec, rows: Rows) -> None:
    if schema.task != "regression":
        raise BuildError(f"estimator per_pattern fits regression only; {schema.target!r} is a {schema.task} target")
    numbers = {f.name for f in schema.features if f.kind == "number"}
    wrong = [name for name in spec.proportional_to if name not in numbers]
    if wrong:
        raise BuildError(
            f"spec proportional_to names {wrong}, which are not numeric inputs (numeric: {sorted(numbers)})"
        )
    text = [f.name for f in schema.features if f.kind == "text" and f.name in schema.pattern_inputs]
    if text:
        raise BuildError(
            f"estimator per_pattern reads a row's pattern from its absent inputs, but {text} are text "
            "(no absent code): make them required or not optional"
        )
    negative = np.flatnonzero(rows.labels <= 0.0)
    if spec.proportional_to and negative.size:
        raise BuildError(
            f"spec proportional_to models the log of {schema.target!r} and needs a positive target; row "
            f"{int(rows.file_rows[negative[0]])} has {float(rows.labels[negative[0]]):g}"
        )


def train_for_me(schema: Schema, splits: Splits, rows: Rows, seed: int, spec: BuildSpec, encode_with: Any) -> Servable:
    """Fit here (the spec's estimator: "lightgbm", "linear" or "per_pattern"); the reference is the fitted
    estimator's output on up to ``OWN_CHECK_ROWS`` rows (a seeded sample: the conversion is exact by construction,
    this confirms it)."""
    estimator = spec.estimator
    if estimator == "per_pattern":
        _check_per_pattern(schema, spec, rows)
    tokens = {
        f.name: choose_tokens(splits.train.columns[f.name], splits.train.labels, schema.task, spec.column(f.name))
        for f in schema.features
        if f.kind == "text"
    }
    ordinal = frozenset(schema.pattern_inputs) if estimator == "per_pattern" else frozenset()
    columns = column_layout(schema, ordinal, tokens)
    encode = encode_with(columns)
    if rows.rows > OWN_CHECK_ROWS:
        sample = np.sort(np.random.default_rng(seed).choice(rows.rows, OWN_CHECK_ROWS, replace=False))
        checked = rows.take(sample)
    else:
        checked = rows
    details: dict[str, Any]
    if estimator == "per_pattern":
        # every pattern's submodel and the graph's dispatch are checked: the sample once per pattern
        width = 2 ** len(schema.pattern_inputs)
        checked = every_pattern(
            checked.take(np.arange(min(checked.rows, OWN_CHECK_ROWS // width))), schema.pattern_inputs
        )
        per_pattern = fit_per_pattern(
            schema, encode, columns, spec.proportional_to, splits.train, splits.validation, seed
        )
        return Servable(
            model=export_per_pattern(per_pattern, len(columns)),
            input_name="X",
            columns=columns,
            features=[f.name for f in schema.features],
            form="train",
            estimator=f"LightGBM per missing-input pattern ({len(per_pattern.models)} LGBMRegressor)"
            + (f", proportional to {', '.join(spec.proportional_to)}" if spec.proportional_to else ""),
            reference=per_pattern.predict(encode(checked)),
            checked=checked,
            details=per_pattern_details(per_pattern, spec.proportional_to),
            learned_validation=True,
        )
    learned = False
    if estimator == "linear":
        fitted = fit_linear(schema, encode, splits.train, seed)
        model, input_name, _ = export_linear(fitted, len(columns), schema.task)
        name, details = str(fitted.params["estimator"]), {"params": fitted.params}
        if fitted.out_of_fold is not None:
            details["out_of_fold"] = fitted.out_of_fold
    else:
        learned = splits.temporal and schema.task == "regression"
        fitted = fit_lightgbm(schema, encode, splits.train, splits.validation, seed, learn_validation=learned)
        model, input_name, _ = export_lightgbm(fitted, len(columns))
        name = "LightGBM " + ("LGBMClassifier" if schema.task == "classification" else "LGBMRegressor")
        details = {"rounds": fitted.rounds, "params": fitted.params, "early_stopping": "validation split"}
        if learned:
            details["refitted"] = "on training + validation rows (the newest) with the rounds found"
    return Servable(
        model=model,
        input_name=input_name,
        columns=columns,
        features=[f.name for f in schema.features],
        form="train",
        estimator=name,
        reference=reference_outputs(fitted, encode(checked), schema.task),
        checked=checked,
        details=details,
        learned_validation=learned,
    )


def _per_column(
    model: onnx.ModelProto, schema: Schema, names: list[str]
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Adapter + layout for a graph with one input per column: graph input ``j`` reads the data's column
    ``names[j]`` (the converter may have renamed it, e.g. ``/`` to ``_``)."""
    tensors = graph_inputs(model)
    if len(tensors) != len(names):
        raise BuildError(f"the converted graph has {len(tensors)} inputs for {len(names)} columns")
    columns: list[dict[str, Any]] = []
    sources: list[InputSource] = []
    for j, (name, tensor) in enumerate(zip(names, tensors, strict=True)):
        feature = schema.feature(name)
        if tensor.elem_type == TensorProto.STRING:
            if feature.kind != "category":
                raise BuildError(f"the model's input {name!r} is text but the data's column {name!r} holds numbers")
            codes = {value: float(i) for i, value in enumerate(feature.categories)}
            columns.append(
                {"kind": "ordinal", "input": name, "codes": codes, "unknown": CODE_UNKNOWN, "missing": CODE_UNKNOWN}
            )
            spellings = ("", *[feature.raw_spelling.get(c, c) for c in feature.categories])
            sources.append(InputSource(tensor.name, j, spellings))
        elif tensor.elem_type in NUMERIC_TYPES:
            if feature.kind != "number":
                kind = tensor.type_name
                raise BuildError(
                    f"the model's input {name!r} is a number ({kind}) but the data's column {name!r} is text"
                )
            columns.append({"kind": "numeric", "input": name})
            sources.append(InputSource(tensor.name, j))
        else:
            raise BuildError(
                f"the model's input {name!r} has type {tensor.type_name}: only numbers and text are supported"
            )
    return adapt_to_matrix(model, sources, len(names)), columns


def _matrix(schema: Schema, features: list[str], width: int) -> list[dict[str, Any]]:
    if width != len(features):
        raise BuildError(f"the model's input takes {width} columns but {len(features)} features were matched")
    text = [n for n in features if schema.feature(n).kind != "number"]
    if text:
        raise BuildError(
            f"the model takes one numeric matrix but columns {text} are text: encode them in the model "
            "(a pipeline with a ColumnTransformer) so its inputs are named columns"
        )
    return [{"kind": "numeric", "input": n} for n in features]


def from_onnx(path: Path, schema: Schema) -> Servable:
    """An ONNX file: inputs matched to the data's columns by name (or one matrix input, columns in file order)."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises its own untyped errors (DecodeError, ValidationError, OSError)
        raise BuildError(f"{path}: not a readable ONNX model: {exc}") from exc
    inputs = graph_inputs(model)
    names = [t.name for t in inputs]
    features = [f.name for f in schema.features]
    numeric = [f.name for f in schema.features if f.kind == "number"]
    if len(inputs) == 1 and names[0] not in features and len(inputs[0].shape) == 2:
        width = inputs[0].shape[1]
        if width == len(numeric) and inputs[0].elem_type == TensorProto.FLOAT:
            columns = _matrix(schema, numeric, len(numeric))
            return Servable(
                model, names[0], columns, numeric, "onnx", "ONNX graph (one matrix input, file column order)"
            )
    unknown = [n for n in names if n not in features]
    if unknown:
        raise BuildError(
            f"{path}: inputs are matched by name and the model's inputs {unknown} are not columns of the data "
            f"(its usable columns: {', '.join(features)}; or one float matrix input [n, {len(numeric)}] of the numeric "
            "columns in file order)"
        )
    adapted, columns = _per_column(model, schema, names)
    return Servable(adapted, MATRIX_INPUT, columns, names, "onnx", f"ONNX graph ({len(names)} named inputs)")


def from_pickle(path: Path, schema: Schema, frame: pd.DataFrame) -> Servable:
    """A fitted model, converted (and its predictions taken) in a child process."""
    names = [f.name for f in schema.features]
    types = {f.name: "float" if f.kind == "number" else "string" for f in schema.features}
    raw = frame[names].copy()
    for feature in schema.features:
        if feature.kind == "category":
            raw[feature.name] = raw[feature.name].map(lambda v: None if pd.isna(v) else str(v)).astype(object)
        else:
            raw[feature.name] = pd.to_numeric(raw[feature.name], errors="coerce").astype(np.float64)
    converted = convert_in_child(path, raw, types, schema.task)
    model = onnx.load_from_string(converted.onnx_bytes)
    if converted.per_column:
        adapted, columns = _per_column(model, schema, converted.features)
        input_name = MATRIX_INPUT
    else:
        columns = _matrix(schema, converted.features, len(converted.features))
        adapted, input_name = cast_matrix_input(model), MATRIX_INPUT
    return Servable(
        model=adapted,
        input_name=input_name,
        columns=columns,
        features=converted.features,
        form="model",
        estimator=converted.estimator,
        classes=converted.classes or None,
        reference=converted.predictions,
    )


def onnx_classes(model: onnx.ModelProto) -> list[str] | None:
    """Class labels an ONNX classifier names in its nodes (``classlabels_strings`` / ``classlabels_int64s``)."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings":
                return [s.decode("utf-8") for s in attribute.strings]
            if attribute.name == "classlabels_int64s":
                return [str(i) for i in attribute.ints]
    return None
