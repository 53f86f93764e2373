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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx

from tabserve.artifacts import verify_model_dir
from tabserve.errors import BuildError
from tabserve.training.build.calibrate import ECE_BINS, class_shift, pattern_names, target_floor
from tabserve.training.build.card import write_build_card
from tabserve.training.build.convert import default_opset
from tabserve.training.build.graph import encode_with, ready
from tabserve.training.build.infer import Schema, infer_schema
from tabserve.training.build.read import read_tables
from tabserve.training.build.refit import Refitted, calibrate, refit, refit_report
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
    if spec.refit and (args.model or args.onnx or schema.time_column is None):
        raise BuildError(
            "[split] refit fits the served model again on every row: it needs a model fitted here and a time column"
        )
    pattern_names(schema.pattern_inputs, spec.pattern_names)  # a spec's names refused before any work
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

    refitted: Refitted | None = None
    if args.onnx:
        servable = from_onnx(Path(args.onnx), schema)
        progress.done("train", f"given ONNX model {Path(args.onnx).name}: not trained here")
    elif args.model:
        servable = from_pickle(Path(args.model), schema, frame)
        progress.done("train", f"given fitted {servable.estimator}: not trained here (loaded in a child process)")
    else:
        servable = train_for_me(schema, splits, rows, seed, spec, encode_with)
        rounds = servable.details.get("rounds")
        refitted = refit(schema, splits, frame, rows, seed, spec, encode_with) if spec.refit else None
        refits = "; refitted before the test period and on every row" if refitted else ""
        progress.done("train", servable.estimator + (f", {rounds} rounds (early stopping)" if rounds else "") + refits)
    schema = _restrict(schema, servable.features)

    classes, rows = _class_order(schema, servable, rows) if schema.task == "classification" else ([], rows)
    if classes and classes != schema.classes:
        schema = replace(schema, classes=classes)
        splits = split(frame, rows, schema, seed, shares, validation=early_stopping)
    first = ready(servable, schema, splits, rows)
    tester = refitted.tester_graph.predict if refitted else None
    if refitted:  # served: the model fitted on every row (the first one only calibrates the tester)
        servable, graph, served_splits = refitted.served, refitted.served_graph, refitted.served_splits
    else:
        graph, served_splits = first, splits
    model, output, parity, temperature = graph.model, graph.output, graph.parity, graph.temperature
    fitted_rows = served_splits.train + served_splits.validation if servable.learned_validation else served_splits.train
    checked = (
        f"parity with the original on {parity['rows']} rows, max |Δ| {parity['max_abs_difference']:.2g}"
        if parity
        else "no original to compare"
    )
    progress.done("convert", f"ONNX opset {default_opset(model)}, output {output!r}; {checked}")

    names = pattern_names(schema.pattern_inputs, spec.pattern_names)
    score = "lac" if schema.task == "classification" else spec.score
    floor = target_floor(spec.floor, rows.labels) if schema.task == "regression" else None
    calibrated = calibrate(first.predict, tester, splits, schema.pattern_inputs, schema.task, score, names, floor)
    levels, tests, quantiles = calibrated.levels, calibrated.tests, calibrated.quantiles
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
    if refitted:
        metrics["refit"] = refit_report(refitted, splits)
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
            test_output=calibrated.test_output,
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
            if floor is not None:
                output_spec["floor"] = floor
        optional = set(schema.optional)
        seal(
            out,
            {
                "name": args.name,
                "version": version,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "description": description,
                "training_data": [
                    data_file_entry(f, n)
                    for f, n in (getattr(args, "provenance", None) or zip(files, file_rows, strict=True))
                ],
                "seed": seed,
                "inputs": input_specs(schema, rows, fitted_rows, spec, optional),
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
                    "calibration_rows": calibrated.calibration_rows,
                },
                "example_request": example,
                "metrics": metrics,
                "reference_histograms": reference_histograms(schema, fitted_rows),
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
