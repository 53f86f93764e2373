"""The docs cannot drift: golden examples match the service, docs embed them verbatim, settings documented."""

from __future__ import annotations

import pytest

from docsync import DOCS, call, goldens, live_client, render_docs
from tabserve.config import Settings


def test_golden_examples_match_the_service() -> None:
    examples = goldens()
    assert len(examples) >= 6
    with live_client() as client:
        for name, example in examples.items():
            status, body = call(client, example)
            assert (status, body) == (example["response"]["status"], example["response"]["body"]), name


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_embed_the_golden_examples_and_settings(path: object) -> None:
    text = path.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    assert render_docs(text, goldens()) == text, "run: .venv/bin/python tests/docsync.py --write"


def test_every_golden_example_is_shown_in_the_docs() -> None:
    shown = "".join(p.read_text(encoding="utf-8") for p in DOCS)
    for name in goldens():
        assert f"<!-- golden:{name} -->" in shown, name


def test_every_setting_is_in_the_readme() -> None:
    readme = DOCS[0].read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`TABSERVE_{name.upper()}`" in readme, name
