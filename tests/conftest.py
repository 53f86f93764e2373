"""Shared fixtures: isolated apps (in-process) and real server processes (end-to-end)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tabserve.api import create_app
from tabserve.config import Settings

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TABSERVE = Path(sys.executable).with_name("tabserve")


def varied_co2_instances(example: dict[str, Any], n: int, seed: int = 5) -> list[dict[str, Any]]:
    """co2 instances from the example with the fuel figures dropped in every combination (the co2 graph routes
    rows by them), engine sizes and model years varied."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = dict(example)
        for name in ("fuel_consumption_city_l_per_100km", "fuel_consumption_hwy_l_per_100km"):
            if rng.random() < 0.4:
                row.pop(name, None)
        if rng.random() < 0.5:
            row.pop("fuel_consumption_comb_l_per_100km", None)
        row["engine_size_l"] = round(rng.uniform(1.0, 6.0), 1)
        row["model_year"] = rng.randint(1995, 2020)
        out.append(row)
    return out


def data_dir() -> Path:
    """The NRCan CSV folder (``../shared/data`` beside the repo, or TABSERVE_TEST_DATA_DIR); skips the calling
    test when the co2 training data is not there (a checkout outside the workspace)."""
    override = os.environ.get("TABSERVE_TEST_DATA_DIR")
    path = Path(override) if override else REPO.parent / "shared" / "data"
    if not (path / "fuel_consumption_ratings_1995_2014_5cycle.csv").is_file():
        pytest.skip(f"co2 training data not found in {path} (set TABSERVE_TEST_DATA_DIR)")
    return path


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build an isolated app (own registry, metrics, logger, SQLite log under tmp) and enter its lifespan."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "models_dir": MODELS,
            "data_dir": tmp_path / f"data{len(clients)}",
            "log_format": "json",
            "access_log": False,
        }
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A real ``tabserve serve`` process on a free port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_server(tmp_path: Path, env: dict[str, str] | None = None, *, wait_ready: bool = True) -> ServerProcess:
    port = free_port()
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("TABSERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    full_env.update(
        {
            "TABSERVE_MODELS_DIR": str(MODELS),
            "TABSERVE_DATA_DIR": str(tmp_path / "var"),
            "TABSERVE_HOST": "127.0.0.1",
            "TABSERVE_PORT": str(port),
        }
    )
    full_env.update(env or {})
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(TABSERVE), "serve"], env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    if wait_ready:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server not ready in 20 s:\n{server.log()}")
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(env: dict[str, str] | None = None, *, wait_ready: bool = True, subdir: str = "") -> ServerProcess:
        base = tmp_path / (subdir or f"s{len(started)}")
        base.mkdir(parents=True, exist_ok=True)
        proc = start_server(base, env, wait_ready=wait_ready)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        if proc.process.poll() is None:
            proc.stop(signal.SIGKILL)


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh PostgreSQL schema with the prediction-log tables (real server, database ``test``), dropped after."""
    import uuid

    from tabserve.store.postgres import PostgresStore

    url = os.environ.get("TABSERVE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"t_{uuid.uuid4().hex[:12]}"
    direct = PostgresStore(url, schema=name)
    direct.migrate()
    yield name
    direct.drop_schema()
    direct.close()


def add_model_version(models: Path, name: str, source: str, version: str) -> Path:
    """Copy ``name/source`` to ``name/version`` and re-seal it (manifest version edited, hashes recomputed)."""
    import json
    import shutil

    from tabserve.artifacts import write_manifest

    target = models / name / version
    shutil.copytree(models / name / source, target)
    data = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    data["version"] = version
    write_manifest(target, data)
    return target
