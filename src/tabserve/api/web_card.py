"""A model's card as a web page: ``MODEL_CARD.md`` and its plots, read only after their sha256 matched the
manifest's ``files`` (the same check ``verify_model_dir`` makes at load time, made again on every read).

Markdown is rendered by markdown-it-py (CommonMark plus tables) with raw HTML off: every character of the card
is escaped, links and images pass markdown-it's URL check (no ``javascript:`` and the like). An image is shown
only when it names a verified file of the same folder (served by ``GET /models/{name}/card/{file}``); any other
image becomes its alt text. Wide tables sit in a keyboard-focusable scrolling region.
"""

from __future__ import annotations

import hashlib
import html
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tabserve.errors import IntegrityError, NotFoundError
from tabserve.registry import ServingModel

CARD_FILE = "MODEL_CARD.md"
PLOT_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
"""Files of a model folder the card page may show, by suffix (never the ONNX graph or the manifest)."""


def verified_bytes(model: ServingModel, file: str) -> bytes:
    """The bytes of one file the manifest lists, after their sha256 matched; NotFoundError for any other name,
    IntegrityError when the file changed on disk since the manifest was sealed."""
    expected = model.manifest.files.get(file)
    if expected is None or "/" in file or "\\" in file or file.startswith("."):
        raise NotFoundError(f"model {model.name!r} {model.version} has no file {file!r}")
    path = model.path / file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be read", path=str(path), expected=expected, actual=None) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"{path}: sha256 mismatch (expected {expected}, actual {actual})",
            path=str(path),
            expected=expected,
            actual=actual,
        )
    return data


def plot(model: ServingModel, file: str) -> tuple[bytes, str]:
    """(bytes, media type) of one of the card's plots."""
    media = PLOT_TYPES.get(Path(file).suffix.lower())
    if media is None:
        raise NotFoundError(f"{file!r} is not a plot of model {model.name!r}")
    return verified_bytes(model, file), media


@lru_cache(maxsize=1)
def _markdown() -> Any:
    """The renderer, built on first use (markdown-it-py is imported then, not when the service starts)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

    def table_open(_renderer: Any, _tokens: Any, _idx: int, _options: Any, env: Any) -> str:
        env["tables"] = env.get("tables", 0) + 1
        label = f"Table {env['tables']} (scrolls sideways)"
        return f'<div class="table-wrap" role="region" tabindex="0" aria-label="{label}"><table>\n'

    def table_close(*_: Any) -> str:
        return "</table></div>\n"

    def image(_renderer: Any, tokens: Any, idx: int, _options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = html.escape(token.content)
        src = str(token.attrGet("src") or "")
        if src not in env["plots"]:
            return f"<em>[{alt}]</em>"
        url = f"/models/{quote(env['model'])}/card/{quote(src)}"
        return f'<img src="{html.escape(url)}" alt="{alt}" loading="lazy">'

    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    md.add_render_rule("image", image)
    return md


def card_html(model: ServingModel) -> str:
    """The card page (a whole HTML document; styles from the page's stylesheet, no script)."""
    text = verified_bytes(model, CARD_FILE).decode("utf-8", errors="replace")
    plots = {name for name in model.manifest.files if Path(name).suffix.lower() in PLOT_TYPES}
    body = _markdown().render(text, {"model": model.name, "plots": plots})
    name = html.escape(model.name)
    version = html.escape(model.version)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name} {version} — model card — tabserve</title>"
        '<link rel="icon" href="/static/icon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/web.css"></head><body>'
        '<header class="top"><a class="brand" href="/">tabserve</a>'
        f'<nav aria-label="Pages"><a href="/?model={quote(model.name)}">Try {name}</a>'
        '<a href="/operations">Operations</a><a href="/docs">API</a></nav></header>'
        f'<main class="card" id="main"><p class="meta">Model card of <strong>{name}</strong> version '
        f"<strong>{version}</strong> (the version served now; file checked against its manifest sha256).</p>"
        f"{body}</main></body></html>"
    )
