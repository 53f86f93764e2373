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


def render_docs(text: str, examples: dict[str, dict[str, Any]]) -> str:
    from tabserve.config import settings_table

    def golden(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in examples:
            raise KeyError(f"docs name golden example {name!r}, which tests/golden/ lacks")
        return match.group(1) + render(examples[name]) + match.group(4)

    text = BLOCK.sub(golden, text)
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
