"""``tabserve build``: read, infer, train (or convert), calibrate, card — one sealed, servable version, or a
one-line refusal naming the column, row or file.

Every check that needs no model runs first (arguments, version, spec, file, schema), so bad input costs
nothing. The version is built in a private folder and moved into the models root whole, then verified and
answered once through the serving path (validator, encoder, ONNX Runtime, conformal tables).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from pydantic import TypeAdapter

from tabserve.artifacts import verify_model_dir
from tabserve.errors import BuildError
from tabserve.manifest import ColumnSpec
from tabserve.runtime import ColumnEncoder
from tabserve.training.build.calibrate import (
    ECE_BINS,
    class_shift,
    conformal_tables,
    fit_temperature,
    pattern_names,
    test_metrics,
)
from tabserve.training.build.card import write_build_card
from tabserve.training.build.convert import choose_output, default_opset, keep_output, with_temperature
from tabserve.training.build.infer import Schema, infer_schema
from tabserve.training.build.read import read_tables
from tabserve.training.build.sources import Servable, from_onnx, from_pickle, onnx_classes, train_for_me
from tabserve.training.build.spec import BuildSpec, read_spec
from tabserve.training.build.table import Rows, normalise, split
from tabserve.training.build.write import (
    check_spec_ranges,
    choose_version,
    example_request,
    input_specs,
    reference_histograms,
    seal,
    staging,
)
from tabserve.training.describe import data_file_entry, library_versions
from tabserve.training.options import DEFAULT_SEED

ONNX_FILE = "model.onnx"
REGRESSION_RTOL = 1e-4
REGRESSION_ATOL_SHARE = 1e-4
"""Parity of a converted regressor: |onnx − original| ≤ 1e-4·|original| + 1e-4·(target's standard deviation)."""
PROBABILITY_ATOL = 1e-4
"""Parity of a converted classifier: every probability within 1e-4 of the original's."""
STAGES = ("read", "infer", "train", "convert", "calibrate", "card")


class Progress:
    """One line per stage on stderr: ``[build 3/6] train      … (2.1 s)``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self._stage_started = self.started
        self.seconds: dict[str, float] = {}

    def done(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._stage_started, 3)
        self._stage_started = now
        number = STAGES.index(stage) + 1
        print(f"[build {number}/{len(STAGES)}] {stage:<9} {message} ({now - self.started:.1f} s)", file=self.stream)
        self.stream.flush()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True, slots=True)
class BuildResult:
    path: Path
    version: str
    metrics: dict[str, Any]
    example: dict[str, Any]
    seconds: float
    stages: dict[str, float]


def _encoder(columns: list[dict[str, Any]]) -> ColumnEncoder:
    return ColumnEncoder(TypeAdapter(list[ColumnSpec]).validate_python(columns))


def _encode_with(columns: list[dict[str, Any]]) -> Callable[[Rows], npt.NDArray[np.float32]]:
    encoder = _encoder(columns)
    return lambda rows: encoder.encode_columns(rows.columns, rows.rows)


def _predictor(model: onnx.ModelProto, servable: Servable, output: str, task: str) -> Callable[[Rows], Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    encode = _encode_with(servable.columns)

    def predict(rows: Rows) -> npt.NDArray[np.float64]:
        if rows.rows == 0:
            return np.empty((0,) if task == "regression" else (0, 0))
        out = np.asarray(session.run([output], {servable.input_name: encode(rows)})[0], dtype=np.float64)
        return out.reshape(-1) if task == "regression" else out

    return predict


def _restrict(schema: Schema, used: list[str]) -> Schema:
    """The schema of the inputs a given model actually reads."""
    unused = [f.name for f in schema.features if f.name not in used]
    dropped = {**schema.dropped, **dict.fromkeys(unused, "not an input of the given model")}
    order = {name: i for i, name in enumerate(used)}
    features = sorted((f for f in schema.features if f.name in order), key=lambda f: order[f.name])
    return replace(
        schema,
        features=features,
        pattern_inputs=[n for n in schema.pattern_inputs if n in order],
        optional=[n for n in schema.optional if n in order],
        dropped=dropped,
    )


def _class_order(schema: Schema, servable: Servable, rows: Rows) -> tuple[list[str], Rows]:
    """The manifest's classes in the graph's probability order, and labels re-indexed to it."""
    graph = servable.classes or (onnx_classes(servable.model) if servable.form == "onnx" else None)
    if graph is None:
        return schema.classes, rows
    if sorted(graph) != sorted(schema.classes):
        raise BuildError(f"the model's classes {graph} are not the target's classes {schema.classes}")
    mapping = np.array([graph.index(c) for c in schema.classes], dtype=np.int64)
    return graph, Rows(rows.columns, mapping[rows.labels], rows.file_rows)


def _parity(
    predict: Callable[[Rows], Any], rows: Rows, reference: npt.NDArray[np.float64], task: str
) -> dict[str, Any]:
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


def _check_arguments(args: argparse.Namespace, spec: BuildSpec) -> None:
    if args.model and args.onnx:
        raise BuildError("give either --model or --onnx, not both")
    if args.model and not args.trust_pickle:
        raise BuildError(
            f"{args.model}: loading a pickle/joblib file runs any code inside it; pass --trust-pickle if you trust "
            "this file (it is then opened only in a child process and converted to ONNX; the server never loads it)"
        )
    if (args.model or args.onnx) and any(c.data_unit for c in spec.columns.values()):
        raise BuildError("spec data_unit converts the data, but a given model was fitted on the data as it is")


def run_build(args: argparse.Namespace, stream: TextIO = sys.stderr) -> BuildResult:
    # OpenMP threads that spin while waiting make LightGBM's 2-thread fit ~8x slower on a busy machine (measured:
    # 35 s vs 4.2 s for 100 rounds): wait passively. Read when the OpenMP runtime loads (scikit-learn or LightGBM,
    # both imported after this line), and inherited by the child that converts a pickle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    progress = Progress(stream)
    spec = read_spec(Path(args.spec) if args.spec else None)
    _check_arguments(args, spec)
    target = args.target or spec.target
    if not target:
        raise BuildError("no target: pass --target COLUMN (or set [model] target in the spec)")
    models = Path(args.models_dir)
    version = choose_version(models, args.name, args.version)
    seed = DEFAULT_SEED if args.seed is None else args.seed
    files = [Path(p) for p in args.data]
    frame, file_rows = read_tables(files)
    file_names = " + ".join(f.name for f in files)
    progress.done("read", f"{file_names}: {len(frame)} rows × {frame.shape[1]} columns")

    schema, frame = infer_schema(frame, target, spec, args.task, args.time_column)
    rows = normalise(frame, schema, spec)
    check_spec_ranges(rows, schema, spec)
    shares = (spec.calibration_share, spec.test_share)
    early_stopping = not (args.model or args.onnx) and spec.estimator in ("lightgbm", "per_pattern")
    splits = split(frame, rows, schema, seed, shares, validation=early_stopping)
    text = [f.name for f in schema.features if f.kind == "text"]
    if text and (args.model or args.onnx):
        raise BuildError(
            f'spec type = "text" ({", ".join(text)}) makes token features for a model fitted here; a given model '
            "reads its text columns as they are: leave the type out"
        )
    kinds = ", ".join(f"{f.name}:{f.kind[:3]}" for f in schema.features[:12]) + (
        " …" if len(schema.features) > 12 else ""
    )
    progress.done(
        "infer", f"{schema.task} of {target!r}; {len(schema.features)} inputs ({kinds}); splits {splits.sizes()}"
    )
    shift = class_shift(splits.calibration, splits.test, schema.classes) if splits.temporal and schema.classes else None
    for warning in [*schema.warnings, *([shift] if shift else [])]:
        print(f"[build] warning: {warning}", file=stream)

    if args.onnx:
        servable = from_onnx(Path(args.onnx), schema)
        progress.done("train", f"given ONNX model {Path(args.onnx).name}: not trained here")
    elif args.model:
        servable = from_pickle(Path(args.model), schema, frame)
        progress.done("train", f"given fitted {servable.estimator}: not trained here (loaded in a child process)")
    else:
        servable = train_for_me(schema, splits, rows, seed, spec, _encode_with)
        rounds = servable.details.get("rounds")
        progress.done("train", servable.estimator + (f", {rounds} rounds (early stopping)" if rounds else ""))
    schema = _restrict(schema, servable.features)

    classes, rows = _class_order(schema, servable, rows) if schema.task == "classification" else ([], rows)
    if classes and classes != schema.classes:
        schema = replace(schema, classes=classes)
        splits = split(frame, rows, schema, seed, shares, validation=early_stopping)
    output = choose_output(servable.model, schema.task, len(schema.classes))
    model = keep_output(servable.model, output)
    predict = _predictor(model, servable, output, schema.task)
    parity = None
    if servable.reference is not None:
        parity = _parity(predict, servable.checked or rows, servable.reference, schema.task)
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
            predict = _predictor(model, servable, output, schema.task)
    checked = (
        f"parity with the original on {parity['rows']} rows, max |Δ| {parity['max_abs_difference']:.2g}"
        if parity
        else "no original to compare"
    )
    progress.done("convert", f"ONNX opset {default_opset(model)}, output {output!r}; {checked}")

    names = pattern_names(schema.pattern_inputs)
    score = "lac" if schema.task == "classification" else spec.score
    levels, quantiles, cal_rows = conformal_tables(
        predict, splits.calibration, schema.pattern_inputs, schema.task, score
    )
    if not levels:
        raise BuildError(f"the calibration split is too small for any confidence level: rows per pattern {cal_rows}")
    tests = test_metrics(predict, splits.test, schema.pattern_inputs, schema.task, score, levels, quantiles, names)
    full_key = "1" * len(schema.pattern_inputs) or "all"
    headline = tests[full_key]
    cover_key = "set_coverage" if schema.task == "classification" else "coverage"
    progress.done(
        "calibrate",
        f"{len(quantiles)} patterns, levels {levels}; test coverage at 0.9: "
        f"{headline[cover_key].get('0.9', float('nan')):.3f} (every input given)",
    )

    metrics: dict[str, Any] = {
        "test": tests,
        "split": {"seed": seed, "temporal": splits.temporal, "time_column": schema.time_column, "rows": splits.sizes()},
        "model": {"form": servable.form, "estimator": servable.estimator, **servable.details},
        "dropped_columns": schema.dropped,
    }
    if parity:
        metrics["parity"] = parity
    if temperature is not None:
        metrics["temperature"] = temperature
    if schema.task == "classification":
        metrics["ece_bins"] = ECE_BINS
    description = spec.description or (
        f"{schema.task.capitalize()} of {target} from {', '.join(f.name for f in schema.features[:6])}"
        f"{' …' if len(schema.features) > 6 else ''}; built by tabserve build from {file_names}."
    )
    example = example_request(schema, splits.test)
    with staging(models, args.name, version) as out:
        onnx.save(model, str(out / ONNX_FILE))
        full_test = splits.test
        write_build_card(
            out,
            name=args.name,
            version=version,
            description=description,
            schema=schema,
            splits=splits,
            source=" + ".join(f"`{f.name}`" for f in files)
            + (f" and {servable.estimator}" if servable.form != "train" else ""),
            metrics=metrics,
            levels=levels,
            test_output=predict(full_test),
            test=full_test,
            unit=spec.output_unit,
            notes=[]
            if servable.form == "train"
            else [
                "The given model's training rows are unknown: if it was fitted on the calibration or test rows, "
                "the coverage and metrics here are optimistic."
            ],
        )
        output_spec: dict[str, Any] = {"task": schema.task, "name": target}
        output_spec["description"] = spec.output_description or f"{target} (as in the training data)"
        if schema.task == "classification":
            output_spec["classes"] = schema.classes
        else:
            output_spec["unit"] = spec.output_unit
        optional = set(schema.optional)
        seal(
            out,
            {
                "name": args.name,
                "version": version,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "description": description,
                "training_data": [data_file_entry(f, n) for f, n in zip(files, file_rows, strict=True)],
                "seed": seed,
                "inputs": input_specs(schema, rows, splits.train, spec, optional),
                "output": output_spec,
                "columns": servable.columns,
                "onnx": {
                    "file": ONNX_FILE,
                    "input_name": servable.input_name,
                    "output_name": output,
                    "opset": default_opset(model),
                },
                "conformal": {
                    "method": "split",
                    "score": score,
                    "levels": levels,
                    "pattern_inputs": schema.pattern_inputs,
                    "pattern_names": names,
                    "quantiles": quantiles,
                    "calibration_rows": cal_rows,
                },
                "example_request": example,
                "metrics": metrics,
                "reference_histograms": reference_histograms(schema, splits.train),
                "library_versions": library_versions(),
            },
        )
    path = models / args.name / version
    _served_once(path, example)
    progress.done("card", f"sealed {path} (manifest, {ONNX_FILE}, MODEL_CARD.md, plots)")
    return BuildResult(path, version, metrics, example, progress.total, progress.seconds)


def _served_once(path: Path, example: dict[str, Any]) -> None:
    """Verify the sealed folder and answer its example through the serving path, as the server will."""
    from tabserve.confidence import Confidence
    from tabserve.features.validation import InstanceValidator
    from tabserve.runtime import OnnxModel

    verified = verify_model_dir(path)
    served = OnnxModel(verified)
    instance = InstanceValidator(verified.manifest).one(example)
    raw = served.run(served.encoder.encode_row(instance.values))
    confidence = Confidence.from_manifest(verified.manifest)
    if confidence.task == "regression":
        confidence.regression(float(raw[0]), instance.pattern, confidence.default_level)
    else:
        confidence.classification(raw[0], instance.pattern, confidence.default_level)
