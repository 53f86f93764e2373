"""Runs a verified model: the manifest's column encoding in plain Python/numpy, then ONNX Runtime.

Input to this module is already validated and normalised by ``features/``: numbers in their canonical
unit (``None`` when absent), categories in canonical spelling (an unseen value stays as given and gets
the column's ``unknown`` code), text as given. Two encoders produce identical matrices: ``encode_row``
for one instance (pure Python, no per-column numpy calls: that is the latency path) and
``encode_columns`` for a batch (vectorised per column). A test keeps them equal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tabserve.artifacts import VerifiedModel
from tabserve.errors import ArtifactError
from tabserve.manifest import (
    ColumnSpec,
    IndicatorColumn,
    Manifest,
    NumericColumn,
    OrdinalColumn,
    TokenColumn,
)

FloatMatrix = npt.NDArray[np.float32]
_WORD = re.compile(r"[A-Z0-9]+")
_NAN = math.nan


def text_tokens(text: str) -> frozenset[str]:
    """Words of a text for token columns: upper-cased runs of letters and digits."""
    return frozenset(_WORD.findall(text.upper()))


@dataclass(frozen=True, slots=True)
class _Column:
    kind: str
    input: str
    codes: Mapping[str, float]
    unknown: float
    missing: float
    value: str
    tokens: frozenset[str]


def _compile(spec: ColumnSpec) -> _Column:
    if isinstance(spec, NumericColumn):
        return _Column("numeric", spec.input, {}, _NAN, _NAN, "", frozenset())
    if isinstance(spec, OrdinalColumn):
        return _Column("ordinal", spec.input, dict(spec.codes), spec.unknown, spec.missing, "", frozenset())
    if isinstance(spec, IndicatorColumn):
        return _Column("indicator", spec.input, {}, 0.0, spec.missing, spec.value, frozenset())
    if isinstance(spec, TokenColumn):
        return _Column("token", spec.input, {}, 0.0, spec.missing, "", frozenset(spec.tokens))
    raise ArtifactError(f"unsupported column kind {spec!r}")


class ColumnEncoder:
    """Turns normalised instances into the float32 matrix the ONNX graph takes."""

    def __init__(self, columns: Sequence[ColumnSpec]) -> None:
        self._columns = tuple(_compile(spec) for spec in columns)
        self.width = len(self._columns)

    def encode_row(self, row: Mapping[str, Any]) -> FloatMatrix:
        values: list[float] = []
        append = values.append
        token_cache: dict[str, frozenset[str]] = {}
        for col in self._columns:
            raw = row.get(col.input)
            if raw is None:
                append(col.missing)
            elif col.kind == "numeric":
                append(raw)
            elif col.kind == "ordinal":
                append(col.codes.get(raw, col.unknown))
            elif col.kind == "indicator":
                append(1.0 if raw == col.value else 0.0)
            else:
                words = token_cache.get(raw)
                if words is None:
                    words = token_cache[raw] = text_tokens(raw)
                append(1.0 if words & col.tokens else 0.0)
        return np.array([values], dtype=np.float32)

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], rows: int) -> FloatMatrix:
        """Batch encoding: ``columns[input]`` holds one value (or None) per row."""
        out = np.empty((rows, self.width), dtype=np.float32)
        token_sets: dict[str, list[frozenset[str] | None]] = {}
        for j, col in enumerate(self._columns):
            values = columns.get(col.input)
            if values is None:
                out[:, j] = col.missing
                continue
            if col.kind == "numeric":
                out[:, j] = [_NAN if v is None else v for v in values]
            elif col.kind == "ordinal":
                codes, unknown, absent = col.codes, col.unknown, col.missing
                out[:, j] = [absent if v is None else codes.get(v, unknown) for v in values]
            elif col.kind == "indicator":
                target, absent = col.value, col.missing
                out[:, j] = [absent if v is None else (1.0 if v == target else 0.0) for v in values]
            else:
                words = token_sets.get(col.input)
                if words is None:
                    words = token_sets[col.input] = [None if v is None else text_tokens(v) for v in values]
                tokens, absent = col.tokens, col.missing
                out[:, j] = [absent if w is None else (1.0 if w & tokens else 0.0) for w in words]
        return out


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread by default: the server scales with processes, not threads per request."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


class OnnxModel:
    """A verified model version ready to score: encoder + ONNX Runtime session."""

    def __init__(self, verified: VerifiedModel, *, threads: int = 1) -> None:
        self.manifest: Manifest = verified.manifest
        self.path = verified.path
        self.encoder = ColumnEncoder(self.manifest.columns)
        try:
            self._session = ort.InferenceSession(
                str(verified.onnx_path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ArtifactError(f"{verified.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
        self._input = self.manifest.onnx.input_name
        self._outputs = [self.manifest.onnx.output_name]
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if self._input not in inputs:
            raise ArtifactError(f"{verified.onnx_path}: graph has no input {self._input!r} (has {list(inputs)})")
        outputs = {o.name for o in self._session.get_outputs()}
        if self.manifest.onnx.output_name not in outputs:
            raise ArtifactError(
                f"{verified.onnx_path}: graph has no output {self.manifest.onnx.output_name!r} (has {sorted(outputs)})"
            )

    def run(self, matrix: FloatMatrix) -> npt.NDArray[np.float32]:
        """Raw model output for an encoded matrix: shape [n] (regression) or [n, k] (classification)."""
        result = self._session.run(self._outputs, {self._input: matrix})[0]
        out = np.asarray(result, dtype=np.float32)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """Convenience for tests and the CLI: encode row by row, run once."""
        if not rows:
            return np.empty((0,), dtype=np.float32)
        return self.run(np.vstack([self.encoder.encode_row(r) for r in rows]))
