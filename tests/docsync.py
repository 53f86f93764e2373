"""Golden request/response examples and the generated parts of the docs, kept in agreement.

``tests/golden/<name>.json`` holds a request (method, path, headers, body) and the exact response the
service gives (status, body). Markdown files embed them between ``<!-- golden:NAME -->`` and
``<!-- /golden -->``, and the settings table between ``<!-- settings-table:start -->`` and its end marker.
``tests/test_docs.py`` fails when any of the three (service, golden file, docs) disagree;
``.venv/bin/python tests/docsync.py --write`` regenerates golden responses from the service and the docs.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- golden:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /golden -->)", re.S)
METRICS = re.compile(r"(<!-- model-metrics:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /model-metrics -->)", re.S)
BENCH = re.compile(r"(<!-- bench-table:start -->\n)(?P<body>.*?)(<!-- bench-table:end -->)", re.S)
SETTINGS = re.compile(r"(<!-- settings-table:start -->\n)(?P<body>.*?)(<!-- settings-table:end -->)", re.S)


def goldens() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(GOLDEN.glob("*.json"))}


@contextmanager
def live_client() -> Iterator[TestClient]:
    from tabserve.api import create_app
    from tabserve.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(models_dir=REPO / "models", data_dir=Path(tmp), access_log=False)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client


def call(client: TestClient, example: dict[str, Any]) -> tuple[int, Any]:
    request = example["request"]
    headers = {"x-request-id": f"golden-{example['name']}", **request.get("headers", {})}
    if "body" in request:
        response = client.request(request["method"], request["path"], json=request["body"], headers=headers)
    else:
        response = client.request(request["method"], request["path"], headers=headers)
    return response.status_code, response.json()


def render(example: dict[str, Any]) -> str:
    request = example["request"]
    lines = [f"`{request['method']} {request['path']}`", ""]
    if "body" in request:
        lines += ["```json", json.dumps(request["body"], indent=2, ensure_ascii=False), "```", ""]
    lines += [
        f"→ `{example['response']['status']}`",
        "",
        "```json",
        json.dumps(example["response"]["body"], indent=2, ensure_ascii=False),
        "```",
        "",
    ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def render_metrics(name: str) -> str:
    """Metrics tables of a committed model, straight from its manifest (so the docs cannot drift)."""
    from tabserve.artifacts import list_versions

    newest = list_versions(REPO / "models", name)[-1]  # the default version
    manifest = json.loads((REPO / "models" / name / newest / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    levels = [f"{lv:g}" for lv in manifest["conformal"]["levels"]]
    if manifest["output"]["task"] == "regression" and "test" in metrics:
        return _regression_metrics(metrics, levels)
    test = metrics["test"]
    rows = [
        [
            f"`{key}` {entry['name']}",
            str(entry["rows"]),
            f"{entry['accuracy']:.3f}",
            f"{entry['log_loss']:.4f}",
            f"{entry['ece']:.4f}",
            *(f"{entry['lac_coverage'][lv]:.2f}" for lv in levels),
        ]
        for key, entry in sorted(test.items(), reverse=True)
    ]
    header = [
        "inputs given",
        "rows",
        "accuracy",
        "log loss",
        f"ECE ({metrics['ece_bins']} bins)",
        *(f"raw LAC coverage {lv}" for lv in levels),
    ]
    return _table(header, rows) + "\n"


def _regression_metrics(metrics: dict[str, Any], levels: list[str]) -> str:
    """A ``tabserve build`` regression: error and coverage per pattern on the test split, and the fits behind them."""
    test, split = metrics["test"], metrics["split"]
    rows = [
        [
            f"`{key}` {entry['name']}",
            str(entry["rows"]),
            f"{entry['mae']:.2f}",
            f"{entry['rmse']:.2f}",
            f"{entry['r2']:.4f}",
            *(f"{entry['coverage'][lv]:.3f}" for lv in levels),
            f"{entry['mean_width']['0.9']:.1f}",
        ]
        for key, entry in sorted(test.items(), reverse=True)
    ]
    header = ["inputs given", "rows", "MAE", "RMSE", "R²", *(f"coverage {lv}" for lv in levels), "90% width"]
    sizes = ", ".join(f"{k} {v}" for k, v in split["rows"].items())
    lines = [f"Split: {'temporal on ' + split['time_column'] if split['temporal'] else 'random'} ({sizes} rows)."]
    if "refit" in metrics:
        refit = metrics["refit"]
        lines[0] += (
            f" Refit: {refit['rule']}; served model fitted on {refit['served']['train_rows']} + "
            f"{refit['served']['validation_rows']} rows, tester on {refit['tester']['train_rows']} + "
            f"{refit['tester']['validation_rows']}."
        )
    return "\n".join([*lines, "", _table(header, rows)]) + "\n"


def render_bench() -> str:
    """The side-by-side and targets tables of the latest benchmark run (``bench/results/latest.md``)."""
    latest = (REPO / "bench" / "results" / "latest.md").read_text(encoding="utf-8")
    header = latest.splitlines()[0].removeprefix("# ")
    start = latest.index("## Side by side")
    end = latest.index("## Overload")
    body = latest[start:end].replace("## ", "#### ")
    return f"_{header}_ — full report: [bench/results/latest.md](bench/results/latest.md)\n\n{body.strip()}\n"


def render_docs(text: str, examples: dict[str, dict[str, Any]]) -> str:
    from tabserve.config import settings_table

    def golden(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in examples:
            raise KeyError(f"docs name golden example {name!r}, which tests/golden/ lacks")
        return match.group(1) + render(examples[name]) + match.group(4)

    text = BLOCK.sub(golden, text)
    text = BENCH.sub(lambda m: m.group(1) + render_bench() + m.group(3), text)
    text = METRICS.sub(lambda m: m.group(1) + render_metrics(m.group("name")) + m.group(4), text)
    return SETTINGS.sub(lambda m: m.group(1) + settings_table() + "\n" + m.group(3), text)


def write() -> None:
    examples = goldens()
    with live_client() as client:
        for name, example in examples.items():
            status, body = call(client, example)
            example["response"] = {"status": status, "body": body}
            (GOLDEN / f"{name}.json").write_text(json.dumps(example, indent=2, ensure_ascii=False) + "\n")
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        new = render_docs(text, examples)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(REPO)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/docsync.py --write")
    sys.path.insert(0, str(REPO / "src"))
    write()
