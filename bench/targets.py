"""The servers under test and the points each is measured at (one place to see every command and setting).

* ``tabserve``      ``tabserve serve`` as shipped (one worker), only the co2 model, prediction log OFF; the batch in
                    both forms: rows to ``/predict`` (``batch``) and MLServer's V2 columns to
                    ``/v2/models/co2/infer`` (``batch_v2``).
* ``tabserve-log``  the same with the prediction log ON (SQLite under a fresh data dir).
* ``floor``         bench/peers/noop_app.py on uvicorn + uvloop + httptools, one worker, no access log.
* ``typical``       bench/peers/typical_app.py (FastAPI + pydantic + sklearn pipeline on a one-row DataFrame)
                    on uvicorn with its defaults.
* ``mlserver``      MLServer 1.7.1 + mlserver-sklearn in bench/.venv-mlserver (``uvloop<0.22`` pinned, default
                    ``parallel_workers: 1``), V2 REST infer with a pandas-codec body.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import free_ports

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work"
MAIN_BIN = REPO / ".venv" / "bin"
MLSERVER_BIN = REPO / "bench" / ".venv-mlserver" / "bin"

SINGLE_CONNECTIONS = 16
BATCH_CONNECTIONS = 4
BATCH_ROWS = 1000


@dataclass(frozen=True)
class Point:
    """A load point: which body, how many connections, and the route when it is not the target's predict route."""

    key: str
    body: str
    connections: int
    path: str | None = None


C16 = Point("c16", "single", SINGLE_CONNECTIONS)
C1 = Point("c1", "single", 1)
BATCH = Point("batch", "batch", BATCH_CONNECTIONS)
BATCH_V2 = Point("batch_v2", "v2_batch", BATCH_CONNECTIONS, "/v2/models/co2/infer")  # the body MLServer gets
V2_C16 = Point("c16", "v2_single", SINGLE_CONNECTIONS)
V2_C1 = Point("c1", "v2_single", 1)
V2_BATCH = Point("batch", "v2_batch", BATCH_CONNECTIONS)


@dataclass(frozen=True)
class Target:
    """How to start one server and what to send it."""

    name: str
    title: str
    kind: str  # "tabserve" | "floor" | "peer"
    argv: Callable[[int], list[str]]
    ready_path: str
    predict_path: str
    points: tuple[Point, ...]
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[int], None] | None = None
    notes: str = ""

    def path(self, point: Point) -> str:
        """The route ``point`` is sent to."""
        return point.path or self.predict_path


def _tabserve_argv(port: int) -> list[str]:
    return [str(MAIN_BIN / "tabserve"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def tabserve_env(label: str, prediction_log: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a tabserve server: co2 only, a fresh data dir per label, the log on or off."""
    data = WORK / f"var-{label}"
    env = {
        "TABSERVE_MODELS_DIR": str(REPO / "models"),
        "TABSERVE_MODELS": "co2",
        "TABSERVE_DATA_DIR": str(data),
        "TABSERVE_PREDICTION_LOG": "true" if prediction_log else "false",
    }
    env.update(extra or {})
    return env


def fresh_data_dir(label: str) -> Callable[[int], None]:
    def prepare(_port: int) -> None:
        shutil.rmtree(WORK / f"var-{label}", ignore_errors=True)
        (WORK / f"var-{label}").mkdir(parents=True, exist_ok=True)

    return prepare


def _uvicorn_argv(app: str, extra: list[str]) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return [str(MAIN_BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra]

    return argv


def _mlserver_argv(_port: int) -> list[str]:
    return [str(MLSERVER_BIN / "mlserver"), "start", str(WORK / "mlserver")]


def _two_other_ports(port: int) -> tuple[int, int]:
    """Two free ports other than ``port`` (MLServer also listens for gRPC and metrics)."""
    others = [p for p in free_ports(3) if p != port]
    return others[0], others[1]


def _mlserver_prepare(port: int) -> None:
    """Write MLServer's settings.json (ports) and the co2 model-settings.json beside the trained pipeline."""
    root = WORK / "mlserver"
    (root / "co2").mkdir(parents=True, exist_ok=True)
    grpc_port, metrics_port = _two_other_ports(port)
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    (root / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    model = {
        "name": "co2",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (root / "co2" / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")


def all_targets() -> dict[str, Target]:
    """Every server, in the order they run."""
    targets = [
        Target(
            "tabserve",
            "tabserve (log off)",
            "tabserve",
            _tabserve_argv,
            "/ready",
            "/predict",
            (C16, C1, BATCH, BATCH_V2),
            env=tabserve_env("tabserve", prediction_log=False),
            prepare=fresh_data_dir("tabserve"),
            notes="tabserve serve --workers 1, TABSERVE_MODELS=co2, TABSERVE_PREDICTION_LOG=false, rest as shipped",
        ),
        Target(
            "tabserve-log",
            "tabserve (log on, SQLite)",
            "tabserve",
            _tabserve_argv,
            "/ready",
            "/predict",
            (C16, BATCH, BATCH_V2),
            env=tabserve_env("tabserve-log", prediction_log=True),
            prepare=fresh_data_dir("tabserve-log"),
            notes="as above with TABSERVE_PREDICTION_LOG=true (SQLite under a fresh TABSERVE_DATA_DIR)",
        ),
        Target(
            "floor",
            "no-op floor",
            "floor",
            _uvicorn_argv(
                "bench.peers.noop_app:app",
                ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            ),
            "/ready",
            "/predict",
            (C16, C1),
            notes="uvicorn + uvloop + httptools, 1 worker, no access log; reads the body, returns a constant JSON",
        ),
        Target(
            "typical",
            "typical FastAPI + sklearn",
            "peer",
            _uvicorn_argv("bench.peers.typical_app:app", []),
            "/health",
            "/predict",
            (C16, C1),
            env={"BENCH_PIPELINE": str(WORK / "typical" / "model.joblib")},
            notes="uvicorn defaults (uvloop + httptools auto-selected, access log on); sync def endpoint",
        ),
        Target(
            "mlserver",
            "MLServer 1.7.1 sklearn",
            "peer",
            _mlserver_argv,
            "/v2/models/co2/ready",
            "/v2/models/co2/infer",
            (V2_C16, V2_C1, V2_BATCH),
            prepare=_mlserver_prepare,
            notes="own venv, uvloop<0.22 pinned, default parallel_workers: 1, V2 REST pandas-codec request",
        ),
    ]
    return {t.name: t for t in targets}
