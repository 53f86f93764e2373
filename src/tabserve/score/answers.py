"""A batch's answers (``confidence.BatchAnswers``) as Arrow columns appended to the scored rows.

Regression: ``prediction``, ``unit``, ``interval_level``, ``interval_lower``, ``interval_upper``; classification:
``prediction``, one ``probability_<class>`` per class, ``prediction_set`` (a JSON array) and ``level``. Then
``warnings`` (the row's warnings as the JSON array ``/predict`` answers with, ``[]`` when none),
``out_of_distribution``, ``model_name`` and ``model_version``. The values are the service's own: the same
float64 numbers, rounded where the service rounds them.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from tabserve.confidence import BatchAnswers, row_warning_dicts
from tabserve.manifest import ClassificationOutput, Manifest
from tabserve.registry import ServingModel
from tabserve.score.columns import output_columns


def answer_schema(manifest: Manifest) -> list[pa.Field]:
    names = output_columns(manifest)
    types: dict[str, pa.DataType] = {"out_of_distribution": pa.bool_()}
    if isinstance(manifest.output, ClassificationOutput):
        types |= {n: pa.float64() for n in names if n.startswith("probability_")}
        types["level"] = pa.float64()
    else:
        types |= {n: pa.float64() for n in ("prediction", "interval_level", "interval_lower", "interval_upper")}
    return [pa.field(n, types.get(n, pa.string()), nullable=False) for n in names]


def _warnings(answers: BatchAnswers) -> pa.Array:
    """Each row's warnings as JSON text: the few distinct texts once, then one code per row (C-level)."""
    rows = answers.rows
    if not answers.runs:
        return pa.repeat("[]", rows)
    texts: dict[str, int] = {"[]": 0}
    codes = np.zeros(rows, dtype=np.int32)
    for i, warnings in row_warning_dicts(answers.runs).items():
        codes[i] = texts.setdefault(json.dumps(warnings, ensure_ascii=False), len(texts))
    dictionary = pa.array(list(texts), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes), dictionary).cast(pa.string())


def answer_columns(model: ServingModel, answers: BatchAnswers) -> list[pa.Array]:
    """The answer columns of a batch, in ``answer_schema`` order (a value every row shares is repeated in C)."""
    rows = answers.rows
    tail = [
        _warnings(answers),
        pa.array(np.asarray(answers.out_of_distribution, dtype=bool)),
        pa.repeat(model.name, rows),
        pa.repeat(model.version, rows),
    ]
    if answers.interval is not None:
        prediction, lower, upper = answers.interval
        return [
            pa.array(prediction, pa.float64()),
            pa.repeat(answers.unit, rows),
            pa.array(np.full(rows, answers.level, dtype=np.float64)),
            pa.array(lower, pa.float64()),
            pa.array(upper, pa.float64()),
            *tail,
        ]
    classified = answers.classified or []
    classes = model.confidence.classes
    probabilities = [pa.array([a["probabilities"][c] for a in classified], pa.float64()) for c in classes]
    return [
        pa.array([a["prediction"] for a in classified], pa.string()),
        *probabilities,
        pa.array([json.dumps(a["prediction_set"], ensure_ascii=False) for a in classified], pa.string()),
        pa.array(np.full(rows, answers.level, dtype=np.float64)),
        *tail,
    ]
