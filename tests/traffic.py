"""``Traffic``: client threads posting co2 predictions to a real server in a loop while a test injects a
fault; it keeps the request id of every 200 and describes every other outcome (status or exception)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from conftest import MODELS

EXAMPLE = json.loads((MODELS / "co2" / "1.0.0" / "manifest.json").read_text())["example_request"]


class Traffic:
    """Clients posting predictions in a loop; keeps the request id of every 200 and every other status."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.served: list[str] = []
        self.failures: list[str] = []
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    response = client.post("/predict", json=EXAMPLE)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies_s.append(time.perf_counter() - began)
                if response.status_code == 200:
                    self.served.append(response.json()["request_id"])
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(15)


def p99_ms(latencies_s: list[float]) -> float:
    ordered = sorted(latencies_s)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
