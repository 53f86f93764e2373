"""What normalising text does to a column, said in build warnings: category spellings it merges or empties, and
text columns that are numbers written with symbols (read as text)."""

from __future__ import annotations

import re

import pandas as pd

_DECORATED = re.compile(
    "|".join(
        (
            r"^\s*[-+]?\s*[$€£¥]?\s*\d{1,3}(?:[,\s]\d{3})+(?:\.\d+)?\s*%?\s*$",  # 1,234.5  $ 12 345
            r"^\s*[-+]?\s*[$€£¥]\s*[\d.]+\s*$",  # $12.50
            r"^\s*[-+]?[\d.]+\s*[%$€£¥]\s*$",  # 97%  12€
        )
    )
)
DECORATED_SHARE = 0.9


def decorated_number(series: pd.Series) -> str | None:
    """A value of a text column whose values are (almost) all numbers with currency, % or thousands separators."""
    present = series.dropna().astype(str)
    if present.empty:
        return None
    matches = present.str.match(_DECORATED)
    return str(present[matches].iloc[0]) if float(matches.mean()) >= DECORATED_SHARE else None


MERGED_SHOWN = 4


def warn_merged_spellings(name: str, text: pd.Series, keys: pd.Series, warnings: list[str]) -> None:
    """Say when normalising (case, spaces and punctuation ignored) merges values that differ by more than case and
    spacing (``A+`` / ``A-`` / ``A``), or leaves a value without any letter or digit, read as missing."""
    pairs = pd.DataFrame({"key": keys, "raw": text}).drop_duplicates("raw")
    loose = pairs["raw"].map(lambda r: " ".join(str(r).casefold().split()))
    pairs = pairs.assign(loose=loose).drop_duplicates(["key", "loose"])
    blank = pairs.loc[pairs["key"] == "", "raw"].tolist()
    if blank:
        shown = ", ".join(repr(v) for v in blank[:MERGED_SHOWN]) + (" …" if len(blank) > MERGED_SHOWN else "")
        warnings.append(f"column {name!r}: values without a letter or digit ({shown}) are read as missing")
    groups = pairs[pairs["key"] != ""].groupby("key")["raw"].agg(list)
    merged = [(key, raws) for key, raws in groups.items() if len(raws) > 1]
    for key, raws in merged[:MERGED_SHOWN]:
        spelled = ", ".join(repr(v) for v in raws[:MERGED_SHOWN]) + (" …" if len(raws) > MERGED_SHOWN else "")
        warnings.append(
            f"column {name!r}: {spelled} are one category ({key!r}): categories ignore case, spaces and "
            "punctuation; give them distinct letters or digits (e.g. A_PLUS) if they differ"
        )
    if len(merged) > MERGED_SHOWN:
        warnings.append(f"column {name!r}: {len(merged) - MERGED_SHOWN} more categories merged the same way")
