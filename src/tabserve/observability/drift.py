"""Input drift: recent normalised inputs against the manifest's ``reference_histograms`` (PSI per feature).

``DriftMonitor`` keeps, per model, a bounded window of the features' values of recent instances: adding one
instance is one tuple and one append, a batch one slice per feature (no statistics on the hot path).
``report(model)`` computes everything lazily, on request; that dict is what ``GET /models/{name}/drift``
returns. ``drift_from_inputs`` computes the same report from a list of input dicts (the prediction log,
for ``tabserve drift``); ``drift_report.write_drift_report`` renders it as JSON + a self-contained HTML page.

Numeric features: the reference is quantile edges + training counts; current values are binned with the
same half-open bins as ``numpy.histogram``; missing values are reported as ``missing_share`` and left out
of the PSI. Category features: shares over the reference categories (incl. ``"(missing)"``) plus one
``"(new)"`` bin for every category training never saw; the new categories are listed with their shares.
PSI = sum((cur - ref) * ln(cur / ref)) with shares floored at ``EPSILON``. Status: ``ok`` below 0.1,
``watch`` below 0.25, ``drift`` above; ``insufficient_data`` while the window holds fewer than
``min_rows`` instances (the PSI is still reported). PSI has a small-sample bias of roughly
(bins - 1) / n, so a 40-category feature reads ~0.2 at n = 200 on unshifted data: hence the default
``min_rows`` of 500 (measured on the co2 data: every feature < 0.06 at n = 1000).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import TypeAdapter

if TYPE_CHECKING:
    import numpy.typing as npt

from tabserve.features.batch import CodedColumn, listed
from tabserve.manifest import CategoryHistogram, Histogram, Manifest, NumericHistogram

EPSILON = 1e-4
WATCH_PSI = 0.1
DRIFT_PSI = 0.25
MISSING = "(missing)"
NEW = "(new)"
MAX_NEW_LISTED = 20
STATUS_ORDER = ("ok", "watch", "drift")

_HISTOGRAMS: TypeAdapter[dict[str, Histogram]] = TypeAdapter(dict[str, Histogram])
DriftObserver = Callable[[str, str, float], None]


def psi(reference: Sequence[float], current: Sequence[float], epsilon: float = EPSILON) -> float:
    """Population stability index of two share vectors over the same bins (shares floored at epsilon)."""
    total = 0.0
    for ref, cur in zip(reference, current, strict=True):
        r = max(ref, epsilon)
        c = max(cur, epsilon)
        total += (c - r) * math.log(c / r)
    return total


def psi_status(value: float) -> str:
    if value >= DRIFT_PSI:
        return "drift"
    if value >= WATCH_PSI:
        return "watch"
    return "ok"


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class _Numeric:
    name: str
    edges: tuple[float, ...]
    inner: tuple[float, ...]
    shares: tuple[float, ...]

    def evaluate(self, values: Iterable[Any], detail: bool) -> dict[str, Any]:
        counts = [0] * len(self.shares)
        inner = self.inner
        missing = 0
        for raw in values:
            value = _as_float(raw)
            if value is None:
                missing += 1
            else:
                counts[bisect_right(inner, value)] += 1
        n = sum(counts)
        total = n + missing
        current = [c / n for c in counts] if n else [0.0] * len(counts)
        out: dict[str, Any] = {
            "kind": "numeric",
            "psi": psi(self.shares, current) if n else None,
            "n": n,
            "missing_share": missing / total if total else 0.0,
        }
        if detail:
            out["reference"] = {"edges": list(self.edges), "shares": list(self.shares)}
            out["current"] = {"shares": current}
        return out


@dataclass(frozen=True, slots=True)
class _Category:
    name: str
    shares: Mapping[str, float]

    def evaluate(self, values: Iterable[Any], detail: bool) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for raw in values:
            key = MISSING if raw is None else raw if isinstance(raw, str) else str(raw)
            counts[key] = counts.get(key, 0) + 1
        n = sum(counts.values())
        known = self.shares
        new = {k: c for k, c in counts.items() if k not in known}
        new_count = sum(new.values())
        keys = list(known)
        reference = [known[k] for k in keys] + [0.0]
        current = [counts.get(k, 0) / n for k in keys] + [new_count / n] if n else [0.0] * (len(keys) + 1)
        listed = sorted(new.items(), key=lambda item: (-item[1], item[0]))[:MAX_NEW_LISTED]
        out: dict[str, Any] = {
            "kind": "category",
            "psi": psi(reference, current) if n else None,
            "n": n,
            "new_share": new_count / n if n else 0.0,
            "new_categories": {k: c / n for k, c in listed},
        }
        if detail:
            out["reference"] = {"shares": dict(known)}
            cur = {k: counts.get(k, 0) / n for k in keys} if n else dict.fromkeys(keys, 0.0)
            cur[NEW] = new_count / n if n else 0.0
            out["current"] = {"shares": cur}
        return out


def _histograms_of(source: Manifest | Mapping[str, Any]) -> dict[str, Histogram]:
    if isinstance(source, Manifest):
        # free text (e.g. a vehicle's model name) has thousands of values: no stable PSI, so not monitored
        text = {spec.name for spec in source.inputs if spec.type == "text"}
        return {k: v for k, v in source.reference_histograms.items() if k not in text}
    raw = source.get("reference_histograms", source) if isinstance(source, Mapping) else source
    return _HISTOGRAMS.validate_python(dict(raw))


class DriftReference:
    """The reference distributions of one model version, compiled for fast binning."""

    def __init__(self, source: Manifest | Mapping[str, Any]) -> None:
        features: list[_Numeric | _Category] = []
        for name, hist in _histograms_of(source).items():
            if isinstance(hist, NumericHistogram):
                total = sum(hist.counts)
                if total <= 0 or len(hist.edges) != len(hist.counts) + 1:
                    raise ValueError(f"reference histogram {name!r} is malformed")
                shares = tuple(c / total for c in hist.counts)
                features.append(_Numeric(name, tuple(hist.edges), tuple(hist.edges[1:-1]), shares))
            elif isinstance(hist, CategoryHistogram):
                features.append(_Category(name, dict(hist.shares)))
        self.features: tuple[_Numeric | _Category, ...] = tuple(features)
        self.names: tuple[str, ...] = tuple(f.name for f in features)

    def row(self, instance: Mapping[str, Any]) -> tuple[Any, ...]:
        """The instance's values of the reference features, in order (the hot-path part)."""
        return tuple(map(instance.get, self.names))

    def evaluate(
        self, rows: Sequence[tuple[Any, ...]], *, min_rows: int, detail: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Per feature: psi, status and the details described in the module docstring."""
        out: dict[str, dict[str, Any]] = {}
        enough = len(rows) >= min_rows
        for j, feature in enumerate(self.features):
            entry = feature.evaluate((row[j] for row in rows), detail)
            value = entry["psi"]
            entry["status"] = (psi_status(value) if enough else "insufficient_data") if value is not None else "no_data"
            out[feature.name] = entry
        return out


def _overall(features: Mapping[str, Mapping[str, Any]], enough: bool) -> str:
    if not enough:
        return "insufficient_data"
    worst = 0
    for entry in features.values():
        status = entry["status"]
        if status in STATUS_ORDER:
            worst = max(worst, STATUS_ORDER.index(status))
    return STATUS_ORDER[worst]


def _report(
    model: str, reference: DriftReference, rows: Sequence[tuple[Any, ...]], window: int, seen: int, min_rows: int,
    detail: bool,
) -> dict[str, Any]:  # fmt: skip
    features = reference.evaluate(rows, min_rows=min_rows, detail=detail)
    return {
        "model": model,
        "window_size": window,
        "n_seen": seen,
        "n": len(rows),
        "min_rows": min_rows,
        "thresholds": {"watch": WATCH_PSI, "drift": DRIFT_PSI},
        "status": _overall(features, len(rows) >= min_rows),
        "features": features,
    }


def drift_from_inputs(
    source: Manifest | Mapping[str, Any],
    inputs: Iterable[Mapping[str, Any]],
    *,
    model: str = "",
    min_rows: int = 500,
    detail: bool = True,
) -> dict[str, Any]:
    """The same report as ``DriftMonitor.report`` over a list of (normalised) input dicts."""
    reference = DriftReference(source)
    rows = [reference.row(instance) for instance in inputs]
    return _report(model, reference, rows, len(rows), len(rows), min_rows, detail)


@dataclass(slots=True)
class _Columns:
    """A batch's rows as it arrived: one list per reference feature (the row tuples are built only by a report)."""

    columns: list[Sequence[Any]]
    n: int


class _Window:
    """The most recent ``limit`` instances of one model, oldest first: single instances as row tuples, batches as
    columns (a 1,000-row batch costs a slice per feature instead of 1,000 tuples built and 1,000 evicted)."""

    __slots__ = ("held", "limit", "reference", "seen", "segments", "version")

    def __init__(self, reference: DriftReference, version: str, limit: int) -> None:
        self.reference = reference
        self.version = version
        self.limit = limit
        self.segments: deque[tuple[Any, ...] | _Columns] = deque()
        self.held = 0
        self.seen = 0

    def add_row(self, row: tuple[Any, ...]) -> None:
        segments = self.segments
        segments.append(row)
        self.seen += 1
        if self.held < self.limit:
            self.held += 1
        elif type(segments[0]) is tuple:  # the usual steady state: one row in, the oldest row out
            segments.popleft()
        else:
            self.held += 1
            self._trim()

    def add_columns(self, columns: list[Sequence[Any]], n: int) -> None:
        self.segments.append(_Columns(columns, n))
        self.held += n
        self.seen += n
        if self.held > self.limit:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest segments that lie wholly outside the window (a batch straddling its edge stays)."""
        segments = self.segments
        while segments:
            first = segments[0]
            size = first.n if type(first) is _Columns else 1
            if self.held - size < self.limit:
                return
            segments.popleft()
            self.held -= size

    def rows(self) -> list[tuple[Any, ...]]:
        """The window's rows, oldest first (at most ``limit``)."""
        out: list[tuple[Any, ...]] = []
        for segment in tuple(self.segments):  # a snapshot: the window keeps moving
            if isinstance(segment, _Columns):
                out.extend(zip(*segment.columns, strict=True))
            else:
                out.append(segment)
        return out[-self.limit :]


class DriftMonitor:
    """Rolling windows of recent inputs per model; PSI computed only when a report is asked for."""

    def __init__(self, window: int = 1000, *, min_rows: int = 500, observer: DriftObserver | None = None) -> None:
        if window < 1:
            raise ValueError("drift window must be at least 1")
        self.window = window
        self.min_rows = min_rows
        self._observer = observer
        self._models: dict[str, _Window] = {}

    def register(self, model: str, source: Manifest | Mapping[str, Any], version: str = "") -> None:
        """Start (or restart, on reload) the window of ``model`` against this reference."""
        if isinstance(source, Manifest) and not version:
            version = source.version
        self._models[model] = _Window(DriftReference(source), version, self.window)

    def unregister(self, model: str) -> None:
        self._models.pop(model, None)

    def models(self) -> list[str]:
        return sorted(self._models)

    def add(self, model: str, instance: Mapping[str, Any]) -> None:
        """Hot path: remember one normalised instance (O(1); unknown model: ignored)."""
        state = self._models.get(model)
        if state is not None:
            state.add_row(tuple(map(instance.get, state.reference.names)))

    def add_columns(
        self, model: str, columns: Mapping[str, Sequence[Any] | npt.NDArray[np.float64] | CodedColumn], n: int
    ) -> None:
        """A batch in column form (``columns[input]`` = one value per row); keeps only the last rows."""
        state = self._models.get(model)
        if state is None or n <= 0:
            return
        start = max(0, n - self.window)
        nones = [None] * (n - start)
        state.add_columns(
            [_window_part(columns[name], start, n) if name in columns else nones for name in state.reference.names],
            n - start,
        )
        state.seen += start  # rows of a batch longer than the window were seen, not kept

    def report(self, model: str, *, detail: bool = True) -> dict[str, Any]:
        """Drift of ``model``'s window; raises KeyError for a model that is not registered."""
        state = self._models[model]
        rows = state.rows()
        out = _report(model, state.reference, rows, self.window, state.seen, self.min_rows, detail)
        out["model_version"] = state.version
        if self._observer is not None:
            for name, entry in out["features"].items():
                if entry["psi"] is not None:
                    self._observer(model, name, entry["psi"])
        return out


def write_drift_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """JSON + self-contained HTML (see ``drift_report``); imports matplotlib, so never on the serving path."""
    from tabserve.observability.drift_report import write_drift_report as write

    return write(report, out_dir)


def _window_part(column: Sequence[Any] | npt.NDArray[np.float64] | CodedColumn, start: int, n: int) -> Sequence[Any]:
    """Rows ``start:n`` of a batch column (a float64 array or a coded column: its values as a list)."""
    if isinstance(column, np.ndarray | CodedColumn):
        return listed(column)[start:n]
    return column[start:n]
