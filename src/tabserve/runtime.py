"""Runs a verified model: the manifest's column encoding in plain Python/numpy, then ONNX Runtime.

Input to this module is already validated and normalised by ``features/``: numbers in their canonical
unit (``None`` when absent), categories in canonical spelling (an unseen value stays as given and gets
the column's ``unknown`` code), text as given. Two encoders produce identical matrices: ``encode_row``
for one instance (pure Python, no per-column numpy calls: that is the latency path) and
``encode_columns`` for a batch (vectorised per column). A test keeps them equal.
"""

from __future__ import annotations

import asyncio
import math
import re
import tempfile
import time
from collections.abc import Callable, Container, Mapping, Sequence
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tabserve.artifacts import VerifiedModel
from tabserve.errors import ArtifactError
from tabserve.features.batch import CodedColumn, listed
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


_HIT_CACHE_MAX = 4096


class ColumnEncoder:
    """Turns normalised instances into the float32 matrix the ONNX graph takes.

    The manifest's columns are compiled into a plan grouped by kind: numbers and ordinal codes are copied or
    looked up, one-hot and token columns start at 0.0 and only the columns a value hits are set to 1.0. A text
    value's hits (the token columns its words switch on) are cached, so a known model name costs one lookup.
    """

    def __init__(self, columns: Sequence[ColumnSpec]) -> None:
        self.width = len(columns)
        self._numeric: list[tuple[int, str]] = []
        self._ordinal: list[tuple[int, str, dict[str, float], float, float]] = []
        self._indicator: dict[str, list[tuple[int, str, float]]] = {}
        self._token_cols: dict[str, list[tuple[int, float]]] = {}
        self._token_index: dict[str, dict[str, list[int]]] = {}
        for j, spec in enumerate(columns):
            if isinstance(spec, NumericColumn):
                self._numeric.append((j, spec.input))
            elif isinstance(spec, OrdinalColumn):
                self._ordinal.append((j, spec.input, dict(spec.codes), spec.unknown, spec.missing))
            elif isinstance(spec, IndicatorColumn):
                self._indicator.setdefault(spec.input, []).append((j, spec.value, spec.missing))
            elif isinstance(spec, TokenColumn):
                self._token_cols.setdefault(spec.input, []).append((j, spec.missing))
                index = self._token_index.setdefault(spec.input, {})
                for token in spec.tokens:
                    index.setdefault(token.upper(), []).append(j)
            else:
                raise ArtifactError(f"unsupported column kind {spec!r}")
        self._hits: dict[str, dict[str, tuple[int, ...]]] = {name: {} for name in self._token_index}
        self._indicator_index: dict[str, dict[Any, tuple[int, ...]]] = {}
        for name, cols in self._indicator.items():
            by_value: dict[Any, tuple[int, ...]] = {}
            for j, target, _ in cols:
                by_value[target] = (*by_value.get(target, ()), j)
            self._indicator_index[name] = by_value

    def _token_hits(self, name: str, text: str) -> tuple[int, ...]:
        cache = self._hits[name]
        hit = cache.get(text)
        if hit is None:
            index = self._token_index[name]
            hit = tuple(sorted({j for word in text_tokens(text) for j in index.get(word, ())}))
            if len(cache) >= _HIT_CACHE_MAX:
                cache.clear()
            cache[text] = hit
        return hit

    def encode_row(self, row: Mapping[str, Any]) -> FloatMatrix:
        values = [0.0] * self.width
        get = row.get
        for j, name in self._numeric:
            value = get(name)
            values[j] = _NAN if value is None else value
        for j, name, codes, unknown, missing in self._ordinal:
            value = get(name)
            values[j] = missing if value is None else codes.get(value, unknown)
        for name, cols in self._indicator.items():
            value = get(name)
            for j, target, missing in cols:
                if value is None:
                    values[j] = missing
                elif value == target:
                    values[j] = 1.0
        for name, token_cols in self._token_cols.items():
            value = get(name)
            if value is None:
                for j, missing in token_cols:
                    values[j] = missing
            else:
                for j in self._token_hits(name, value):
                    values[j] = 1.0
        return np.array([values], dtype=np.float32)

    def encode_columns(
        self,
        columns: Mapping[str, Sequence[Any] | npt.NDArray[np.float64] | CodedColumn],
        rows: int,
        arrays: Mapping[str, npt.NDArray[np.float64]] | None = None,
        complete: Container[str] = (),
    ) -> FloatMatrix:
        """Batch encoding: ``columns[input]`` holds one value (or None) per row. ``arrays`` may hold numeric
        inputs already as float arrays, and ``complete`` name inputs known to have no absent value (the
        validator's, so the columns need not be searched for None).

        Each column is built in C-level passes (a map over a lookup table, one fancy-indexed store); a column
        with absent values takes the value-by-value expressions of ``encode_row``."""
        out = np.zeros((rows, self.width), dtype=np.float32)
        absent: Sequence[Any] = [None] * rows
        given = arrays or {}
        for j, name in self._numeric:
            array = given.get(name)
            if array is not None:
                out[:, j] = array
                continue
            given_column = columns.get(name, absent)
            values = listed(given_column) if isinstance(given_column, np.ndarray | CodedColumn) else given_column
            if name in complete or None not in values:
                out[:, j] = values
            elif isinstance(values, list) and values.count(None) == len(values):  # an input left out of every row
                out[:, j] = _NAN
            else:
                out[:, j] = [_NAN if v is None else v for v in values]
        for j, name, codes, unknown, missing in self._ordinal:
            column = columns.get(name, absent)
            if isinstance(column, CodedColumn):  # each distinct value looked up once, then spread by code
                table = [missing if v is None else codes.get(v, unknown) for v in column.values]
                out[:, j] = np.array(table, dtype=np.float32)[column.codes]
                continue
            values = listed(column) if isinstance(column, np.ndarray) else column
            if name not in complete and None in values:
                out[:, j] = [missing if v is None else codes.get(v, unknown) for v in values]
            else:
                out[:, j] = np.fromiter(map(codes.get, values, repeat(unknown, rows)), dtype=np.float32, count=rows)
        for name, cols in self._indicator.items():
            column = columns.get(name, absent)
            if isinstance(column, CodedColumn):
                for j, target, missing in cols:
                    hit = [missing if v is None else (1.0 if v == target else 0.0) for v in column.values]
                    out[:, j] = np.array(hit, dtype=np.float32)[column.codes]
                continue
            values = listed(column) if isinstance(column, np.ndarray) else column
            if name not in complete and None in values:
                for j, target, missing in cols:
                    out[:, j] = [missing if v is None else (1.0 if v == target else 0.0) for v in values]
            else:
                by_value = self._indicator_index[name]
                self._set_hits(out, [by_value.get(v, ()) for v in values])
        for name, token_cols in self._token_cols.items():
            column = columns.get(name, absent)
            hits = self._token_hits
            if isinstance(column, CodedColumn):
                self._set_coded_tokens(out, name, token_cols, column)
                continue
            values = listed(column) if isinstance(column, np.ndarray) else column
            if name not in complete and None in values:
                for i, value in enumerate(values):
                    if value is None:
                        for j, missing in token_cols:
                            out[i, j] = missing
                found = [() if value is None else hits(name, value) for value in values]
            else:
                cached: list[tuple[int, ...] | None] = list(map(self._hits[name].get, values))
                if None in cached:
                    found = [hit if hit is not None else hits(name, v) for hit, v in zip(cached, values, strict=True)]
                else:
                    found = cached  # type: ignore[assignment]  # no None left
            self._set_hits(out, found)
        return out

    def _set_coded_tokens(
        self, out: FloatMatrix, name: str, token_cols: list[tuple[int, float]], values: CodedColumn
    ) -> None:
        """Token columns of a coded text column: each distinct value's hits found once, set for its rows."""
        per_value = [() if v is None else self._token_hits(name, v) for v in values.values]
        codes = values.codes
        if None in values.values:
            absent = np.isin(codes, [k for k, v in enumerate(values.values) if v is None])
            for j, missing in token_cols:
                out[absent, j] = missing
        counts = np.fromiter(map(len, per_value), dtype=np.intp, count=len(per_value))
        lengths = counts[codes]
        total = int(lengths.sum())
        if not total:
            return
        flat = np.fromiter(chain.from_iterable(per_value), dtype=np.intp, count=int(counts.sum()))
        first = np.cumsum(counts) - counts  # where each distinct value's hits start in ``flat``
        row_start = np.cumsum(lengths) - lengths  # where each row's hits start in the output order
        position = np.repeat(first[codes] - row_start, lengths) + np.arange(total)
        out[np.repeat(np.arange(len(codes)), lengths), flat[position]] = 1.0

    @staticmethod
    def _set_hits(out: FloatMatrix, found: Sequence[tuple[int, ...]]) -> None:
        """``out[i, j] = 1.0`` for every column ``j`` in ``found[i]``, in one store."""
        lengths = np.fromiter(map(len, found), dtype=np.intp, count=len(found))
        total = int(lengths.sum())
        if total:
            row_index = np.repeat(np.arange(len(found)), lengths)
            col_index = np.fromiter(chain.from_iterable(found), dtype=np.intp, count=total)
            out[row_index, col_index] = 1.0


RowResult = tuple[npt.NDArray[np.float32], float]


class RowCoalescer:
    """Runs single rows submitted during one event-loop turn as one matrix: one ONNX call for them all.

    An ONNX Runtime call has a fixed cost (tens of microseconds for a small graph, whatever the rows), so under
    concurrent load the one-row requests that are ready together share it. A request waits at most one loop
    turn (the flush is scheduled by the first row); alone it is run alone. Each row's output is exactly the one
    it gets on its own (rows are independent in the graph; a test checks it). Used on the event loop only.
    """

    def __init__(self, run: Callable[[FloatMatrix], npt.NDArray[np.float32]]) -> None:
        self._run = run
        self._rows: list[FloatMatrix] = []
        self._waiting: list[asyncio.Future[RowResult]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, row: FloatMatrix) -> asyncio.Future[RowResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RowResult] = loop.create_future()
        if not self._rows:
            self._loop = loop
            loop.call_soon(self._flush)
        elif loop is not self._loop:  # rows pending on another event loop: never mixed, run this one alone
            started = time.perf_counter()
            future.set_result((self._run(row), time.perf_counter() - started))
            return future
        self._rows.append(row)
        self._waiting.append(future)
        return future

    def _flush(self) -> None:
        rows, waiting = self._rows, self._waiting
        self._rows, self._waiting = [], []
        started = time.perf_counter()
        try:
            out = self._run(rows[0] if len(rows) == 1 else np.concatenate(rows))
        except Exception as exc:  # every waiting request answers with the error
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        for i, future in enumerate(waiting):
            if not future.done():  # a cancelled request no longer waits
                future.set_result((out[i : i + 1], seconds))


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread by default: the server scales with processes, not threads per request."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


PROVIDERS = ["CPUExecutionProvider"]


def open_session(graph: bytes, threads: int = 1) -> tuple[ort.InferenceSession, str]:
    """An ONNX Runtime session for the (verified) ONNX ``graph`` bytes, built from the graph converted to ORT
    format; also the format it was opened from (``"ort"``, or ``"onnx"`` after the fallback below).

    A session opened from an ONNX file keeps every ``NodeProto`` of the loaded model for its lifetime, a
    duplicate of the attributes its nodes already own (microsoft/onnxruntime#32047). For a tree ensemble the
    attributes are the model: co2's session held 15 MB of live heap from the ONNX file and 6.5 MB from the same
    graph in ORT format. So the graph is optimised once, saved in ORT format to a private temporary directory,
    and the serving session is opened from that (same kernels, outputs bitwise equal; a test checks it); the
    file is deleted once loaded. If that fails (no writable temporary directory, a full disk), the session is
    opened from the ONNX bytes directly, and any error of the model itself is raised from there.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="tabserve-ort-") as tmp:
            converted = Path(tmp) / "model.ort"
            convert = session_options(threads)
            convert.optimized_model_filepath = str(converted)
            convert.add_session_config_entry("session.save_model_format", "ORT")
            ort.InferenceSession(graph, sess_options=convert, providers=PROVIDERS)
            session = ort.InferenceSession(str(converted), sess_options=session_options(threads), providers=PROVIDERS)
            return session, "ort"
    except Exception:  # onnxruntime's own untyped exceptions, or OSError from the temporary directory
        session = ort.InferenceSession(graph, sess_options=session_options(threads), providers=PROVIDERS)
        return session, "onnx"


class OnnxModel:
    """A verified model version ready to score: encoder + ONNX Runtime session."""

    def __init__(self, verified: VerifiedModel, *, threads: int = 1) -> None:
        self.manifest: Manifest = verified.manifest
        self.path = verified.path
        self.encoder = ColumnEncoder(self.manifest.columns)
        self._coalescer = RowCoalescer(self.run)
        graph = verified.onnx_bytes()  # IntegrityError if the file changed since it was verified
        try:
            self._session, self.session_format = open_session(graph, threads)
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

    async def run_row(self, row: FloatMatrix) -> tuple[npt.NDArray[np.float32], float]:
        """One encoded row's output, run together with the other rows submitted in the same event-loop turn
        (one ONNX call for concurrent requests); also the seconds that call took."""
        return await self._coalescer.submit(row)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """Convenience for tests and the CLI: encode row by row, run once."""
        if not rows:
            return np.empty((0,), dtype=np.float32)
        return self.run(np.vstack([self.encoder.encode_row(r) for r in rows]))
