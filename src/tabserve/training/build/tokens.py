"""A text column's token features: which words of its values become 0/1 columns of the model's matrix.

The spec's ``token_groups`` come first (a group is one column: any of its words), then the ``tokens`` single words
that tell most about the target on the training rows: among words in at least max(``MIN_TOKEN_ROWS``,
``TOKEN_ROWS_SHARE`` · rows) rows and not in all of them, the largest
``|mean(target | word) − mean(target)| · √rows`` for a regression, ``total variation(class shares | word, class
shares) · √rows`` for a classifier. Words are the serving encoder's (``runtime.text_tokens``): upper-cased runs of
letters and digits, so what is chosen here is what a request switches on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tabserve.runtime import text_tokens
from tabserve.training.build.spec import ColumnSpec

MIN_TOKEN_ROWS = 20
TOKEN_ROWS_SHARE = 0.001
"""A word needs at least max(MIN_TOKEN_ROWS, this share of the training rows) rows to be chosen alone."""


def _score(mask: npt.NDArray[np.bool_], labels: npt.NDArray[Any], task: str, overall: Any) -> float:
    n = int(mask.sum())
    if task == "classification":
        shares = np.bincount(labels[mask], minlength=overall.size) / n
        return float(0.5 * np.abs(shares - overall).sum()) * math.sqrt(n)
    return abs(float(labels[mask].mean()) - float(overall)) * math.sqrt(n)


def choose_tokens(
    values: Sequence[str | None], labels: npt.NDArray[Any], task: str, column: ColumnSpec
) -> dict[str, list[str]]:
    """Column name suffix -> the words that switch it on, groups first then single words, in a stable order."""
    words = [text_tokens(v) if v is not None else frozenset() for v in values]
    counts: Counter[str] = Counter(w for ws in words for w in ws)
    chosen: dict[str, list[str]] = {}
    grouped: set[str] = set()
    for name, group in column.token_groups.items():
        grouped.update(group)
        chosen[f"group_{name}"] = list(group)
    if column.tokens == 0 or not len(labels):
        return chosen
    least = max(MIN_TOKEN_ROWS, math.ceil(TOKEN_ROWS_SHARE * len(labels)))
    overall: Any
    if task == "classification":
        overall = np.bincount(labels, minlength=int(labels.max()) + 1) / labels.size
    else:
        overall = float(np.mean(labels))
    scored: list[tuple[float, str]] = []
    for word, n in counts.items():
        if n < least or word in grouped or n == len(words):
            continue
        mask = np.fromiter((word in ws for ws in words), dtype=bool, count=len(words))
        scored.append((_score(mask, labels, task, overall), word))
    for _, word in sorted(scored, key=lambda s: (-s[0], s[1]))[: column.tokens]:
        chosen[f"word_{word}"] = [word]
    return chosen


def first_words(values: Sequence[str | None], keep: int = 50) -> list[str | None]:
    """Each text's first word (the drift reference's view of a text column), the ``keep`` most common kept and
    the rest ``(other)``."""
    first = [None if v is None else next(iter(_ordered_words(v)), "(none)") for v in values]
    common = {w for w, _ in Counter(w for w in first if w is not None).most_common(keep)}
    return [w if w is None or w in common else "(other)" for w in first]


def _ordered_words(text: str) -> list[str]:
    found = text_tokens(text)
    upper = text.upper()
    return sorted(found, key=lambda w: (upper.find(w), w))
