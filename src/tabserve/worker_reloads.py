"""Hot reloads shared by the workers of one server (``TABSERVE_WORKERS`` > 1).

Every worker is a process with its own registry, and a ``POST /admin/reload`` reaches one of them. That worker
reloads, then records the order (the model, the version it now serves, a sequence number) in ``reloads.json`` in
the data dir. Every worker looks at the file once per ``POLL_S`` (one ``stat``), applies the orders newer than
the last it applied, and writes an acknowledgement (``reload-acks/<pid>.json``: the sequence and any error). The
route waits, bounded, until every other worker has acknowledged and says how many serve the version. A worker
that starts later (uvicorn replaces one that died) applies the orders at start-up, so a rollback outlives a
worker. ``tabserve serve`` clears the orders before it forks: a new server starts from its configuration.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabserve.processes import pid_alive

POLL_S = 0.25
"""How often a worker looks for new orders (one ``stat`` of a small file)."""
ORDERS_FILE = "reloads.json"
ACKS_DIR = "reload-acks"


@dataclass(frozen=True, slots=True)
class Order:
    seq: int
    model: str
    version: str
    """The version the ordering worker serves: the others load exactly it."""
    newest: bool
    """The reload asked for no version (the newest on disk): a worker starting later loads the newest then, so
    a restart (SIGHUP to ``tabserve serve`` restarts the workers) picks up versions added since."""

    def wanted(self, at_start: bool) -> str | None:
        return None if at_start and self.newest else self.version


@dataclass(frozen=True, slots=True)
class Acks:
    """The other workers' answers to one order."""

    done: int
    errors: dict[int, str]


class WorkerReloads:
    """This worker's view of the orders file and the acknowledgements, under ``data_dir``."""

    def __init__(self, data_dir: Path, pid: int | None = None) -> None:
        self.path = data_dir / ORDERS_FILE
        self.lock_path = data_dir / (ORDERS_FILE + ".lock")
        self.acks_dir = data_dir / ACKS_DIR
        self.pid = os.getpid() if pid is None else pid
        self.applied = 0
        self._seen: tuple[int, int] | None = None

    @staticmethod
    def clear(data_dir: Path) -> None:
        """Forget every order and acknowledgement (``tabserve serve``, before the workers start)."""
        (data_dir / ORDERS_FILE).unlink(missing_ok=True)
        acks = data_dir / ACKS_DIR
        if acks.is_dir():
            for entry in acks.iterdir():
                entry.unlink(missing_ok=True)

    def publish(self, model: str, version: str, newest: bool) -> int:
        """Record that ``model`` serves ``version`` from now on; the order's sequence number. This worker
        already serves it, so it counts as applied here."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            seq = int(state.get("seq", 0)) + 1
            models = dict(state.get("models", {}))
            models[model] = {"version": version, "newest": newest, "seq": seq}
            _write_json(self.path, {"seq": seq, "models": models})
        self.applied = max(self.applied, seq)
        self.acknowledge(seq, {})
        return seq

    def pending(self) -> list[Order]:
        """The orders this worker has not applied yet, oldest first (empty without reading when the file did not
        change since the last look)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return []
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return []
        state = self._read()
        orders = [
            Order(int(entry["seq"]), name, str(entry["version"]), bool(entry.get("newest", False)))
            for name, entry in dict(state.get("models", {})).items()
            if int(entry["seq"]) > self.applied
        ]
        if not orders:
            self._seen = seen
        return sorted(orders, key=lambda order: order.seq)

    def applied_up_to(self, seq: int, errors: dict[str, str]) -> None:
        """Orders up to ``seq`` were applied (``errors``: model -> why its reload failed here)."""
        self.applied = max(self.applied, seq)
        self._seen = None
        self.acknowledge(self.applied, errors)

    def acknowledge(self, seq: int, errors: dict[str, str]) -> None:
        self.acks_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.acks_dir / f"{self.pid}.json", {"seq": seq, "errors": errors})

    def acks(self, seq: int) -> Acks:
        """How many other workers have applied order ``seq`` (or a later one), and their errors."""
        done = 0
        errors: dict[int, str] = {}
        if not self.acks_dir.is_dir():
            return Acks(0, {})
        for entry in self.acks_dir.glob("*.json"):
            pid = int(entry.stem) if entry.stem.isdigit() else -1
            if pid == self.pid or not pid_alive(pid):
                continue
            try:
                ack = json.loads(entry.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being replaced (written whole by rename): read at the next look
            if int(ack.get("seq", 0)) >= seq:
                done += 1
                if ack.get("errors"):
                    errors[pid] = "; ".join(f"{k}: {v}" for k, v in sorted(ack["errors"].items()))
        return Acks(done, errors)

    def _read(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return state


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)
