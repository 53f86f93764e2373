"""``POST /predict`` in-process: the ASGI app called directly (no socket, no HTTP parser), µs per request.

    .venv/bin/python -m bench.inprocess [--requests 20000] [--repeats 3] [--log] [--adaptive] [--batch 1000]

``--batch N`` sends the bench's N-vehicle batch (``bench/bodies.py``) instead of the single example vehicle and
also prints rows/s; with ``--log`` the rows/s include the prediction log's writer thread (same process, same
core as the request path when the process is pinned: ``taskset -c 0``).

For before/after comparisons of hot-path changes (run both trees interleaved, e.g. with ``PYTHONPATH`` set to
another checkout's ``src``); prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def _run(
    requests: int, repeats: int, log: bool, adaptive: bool, batch: int = 0, journal: bool = True
) -> dict[str, Any]:
    from tabserve.api import create_app
    from tabserve.config import Settings

    data = Path(tempfile.mkdtemp(prefix="tabserve-inprocess-"))
    extra: dict[str, Any] = {"coverage_adaptive": True} if adaptive else {}
    if not journal:
        extra["log_journal"] = False
    settings = Settings(
        models_dir=REPO / "models", data_dir=data, access_log=False, prediction_log=log, log_level="WARNING", **extra
    )
    app = create_app(settings)
    if batch:
        from bench.bodies import batch_vehicles

        body = json.dumps({"instances": batch_vehicles(batch)}).encode()
    else:
        example = json.loads((REPO / "models" / "co2" / "1.0.0" / "manifest.json").read_text())["example_request"]
        body = json.dumps(example).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080), "state": {},
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    per_request: list[float] = []
    async with app.api.router.lifespan_context(app.api):
        for _ in range(500 if not batch else 20):
            await app(dict(scope), receive, send)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            if log:  # the writer's share of the work counts: wait until it has written everything
                app.state.ctx.log.flush(60)
            per_request.append((time.perf_counter() - t0) / requests * 1e6)
    if set(statuses) != {200}:
        raise SystemExit(f"unexpected statuses {sorted(set(statuses))}")
    median = statistics.median(per_request)
    out: dict[str, Any] = {"us_per_request": [round(v, 2) for v in per_request], "median_us": round(median, 2)}
    if batch:
        out["rows_per_s"] = round(batch / median * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log", action="store_true", help="prediction log on (SQLite under a temp folder)")
    parser.add_argument("--adaptive", action="store_true", help="TABSERVE_COVERAGE_ADAPTIVE=true")
    parser.add_argument("--batch", type=int, default=0, help="rows per request (0: the single example vehicle)")
    parser.add_argument("--no-journal", action="store_true", help="TABSERVE_LOG_JOURNAL=false (with --log)")
    args = parser.parse_args()
    result = asyncio.run(_run(args.requests, args.repeats, args.log, args.adaptive, args.batch, not args.no_journal))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
