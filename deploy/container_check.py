"""HTTP and prediction-log checks of a running tabserve container (stdlib only; used by container-test.sh
and bluegreen.sh).

Sub-commands:
  wait-ready URL --timeout S [--since EPOCH]   poll URL/ready until 200; print the seconds since EPOCH
  compare URL MODEL REQUEST EXPECTED [--tol T] POST REQUEST to URL/models/MODEL/predict; every number in the
                                               response must be within T of EXPECTED (a `tabserve predict`
                                               output), every other value equal (request_id ignored)
  count-rows SQLITE_FILE                       print the rows of the prediction log (`predictions` and the rows
                                               of `prediction_batches`)
Exit status 0 = check passed, 1 = failed (the reason on stderr).
"""

# ruff: noqa: T201 - a command-line tool: it reports on stdout/stderr

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

IGNORED_KEYS = frozenset({"request_id"})


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - URL from the operator
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - URL from the operator
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, timeout: float, since: float) -> int:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = _get(url.rstrip("/") + "/ready", timeout=2.0)
        except (OSError, urllib.error.URLError) as exc:  # refused while the server starts
            last = str(exc)
        else:
            if status == 200:
                print(f"{time.time() - since:.2f}")
                return 0
            last = f"HTTP {status}"
        time.sleep(0.1)
    print(f"not ready after {timeout:.0f}s ({last})", file=sys.stderr)
    return 1


def differences(actual: Any, expected: Any, tol: float, where: str = "$") -> list[str]:
    """Human-readable differences between two JSON values (numbers compared within ``tol``)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if math.isclose(float(actual), float(expected), rel_tol=0.0, abs_tol=tol):
            return []
        return [f"{where}: {actual!r} differs from {expected!r} by more than {tol}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted((set(expected) | set(actual)) - IGNORED_KEYS):
            if key not in actual or key not in expected:
                out.append(f"{where}.{key}: only in {'expected' if key in expected else 'actual'}")
            else:
                out.extend(differences(actual[key], expected[key], tol, f"{where}.{key}"))
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{where}: {len(actual)} items != {len(expected)}"]
        return [
            d
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for d in differences(a, e, tol, f"{where}[{i}]")
        ]
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def compare(url: str, model: str, request_file: Path, expected_file: Path, tol: float) -> int:
    body = request_file.read_bytes()
    status, raw = _post(f"{url.rstrip('/')}/models/{model}/predict", body, timeout=10.0)
    if status != 200:
        print(f"{model}: HTTP {status}: {raw[:500]!r}", file=sys.stderr)
        return 1
    actual = json.loads(raw)
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    problems = differences(actual, expected, tol)
    if problems:
        print(f"{model}: the served answer differs from `tabserve predict`:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    shown = {k: actual[k] for k in ("prediction", "interval", "prediction_set", "level") if k in actual}
    print(f"{model}: matches the offline prediction within {tol}: {json.dumps(shown)}")
    return 0


def count_rows(path: Path) -> int:
    if not path.is_file():
        print(f"{path}: no prediction log file", file=sys.stderr)
        return 1
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "prediction_batches" in tables:  # batch requests, one columnar record each (migration 4)
            (batched,) = conn.execute("SELECT COALESCE(SUM(rows), 0) FROM prediction_batches").fetchone()
            rows += batched
    print(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("wait-ready")
    ready.add_argument("url")
    ready.add_argument("--timeout", type=float, default=60.0)
    ready.add_argument("--since", type=float, default=None, help="epoch seconds to measure from (default: now)")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("url")
    cmp_.add_argument("model")
    cmp_.add_argument("request", type=Path)
    cmp_.add_argument("expected", type=Path)
    cmp_.add_argument("--tol", type=float, default=1e-3)
    rows = sub.add_parser("count-rows")
    rows.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "wait-ready":
        return wait_ready(args.url, args.timeout, time.time() if args.since is None else args.since)
    if args.command == "compare":
        return compare(args.url, args.model, args.request, args.expected, args.tol)
    return count_rows(args.path)


if __name__ == "__main__":
    raise SystemExit(main())
