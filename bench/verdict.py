"""What every benchmark check is made of: the ``Check`` record, the verdict and number formatting, Markdown
tables (shared by bench/report.py and bench/overload.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One target: what was measured against what, and the verdict."""

    name: str
    target: str
    measured: str
    status: str  # "pass" | "fail" | "n/a"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "fail")


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def point_line(summary: Any) -> str:
    """One line per measured point for the console."""
    if not isinstance(summary, dict):
        return str(summary)
    lat = summary["latency_ms"]
    line = f"{summary['ok_rps']:,.0f} req/s p50 {lat['50']:.3f} ms p99 {lat['99']:.3f} ms non-2xx {summary['non_2xx']}"
    if summary.get("p99_2xx_ms") is not None or summary.get("p99_non2xx_ms") is not None:
        line += f" (p99 2xx {summary.get('p99_2xx_ms')} ms, non-2xx {summary.get('p99_non2xx_ms')} ms)"
    return line
