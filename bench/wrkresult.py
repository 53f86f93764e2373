"""One wrk run's result: parsing the ``BENCH_JSON`` line printed by bench/wrk/post.lua and the derived figures.

The Lua ``done()`` hook prints the overall latency histogram's quantiles plus two upper bounds:

* ``p99_2xx_upper`` = the overall latency quantile at ``100 - f`` percent, where ``f`` is the share of 2xx
  responses. At most ``f * 1 %`` of all responses are slower than it, so at most 1 % of the 2xx responses are:
  it is a guaranteed upper bound on the p99 of the admitted (2xx) requests, whatever the 503s' latencies are.
* ``p99_non2xx_upper``: the same bound for the non-2xx responses (quantile at ``100 - (1 - f)`` percent).

wrk cannot tell latencies per status. With ``BENCH_TAG=1`` post.lua times each request itself (a unique
``X-Request-Id`` per request, echoed by the server) and adds ``by_status_us``: the exact quantiles of the 2xx and
of the non-2xx responses. The overload check uses them when every response was timed, the bounds otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MARKER = "BENCH_JSON "


class WrkOutputError(ValueError):
    """wrk's output has no (or a malformed) ``BENCH_JSON`` line."""


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run (one warm-up or one measured point)."""

    duration_s: float
    requests: int
    statuses: dict[int, int]
    errors: dict[str, int]
    latency_us: dict[str, float]
    percentiles_us: dict[str, float]
    bounds_us: dict[str, float] = field(default_factory=dict)
    by_status_us: dict[str, dict[str, float]] = field(default_factory=dict)
    untimed: int | None = None

    @property
    def rps(self) -> float:
        """Completed responses per second (every status)."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> int:
        """2xx responses."""
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    @property
    def non_2xx(self) -> int:
        """Responses with a status outside 2xx."""
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def ok_rps(self) -> float:
        """2xx responses per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def timeouts(self) -> int:
        """Requests wrk gave up on (its --timeout)."""
        return self.errors.get("timeout", 0)

    @property
    def socket_errors(self) -> int:
        """Connect, read and write errors (a refused or reset connection)."""
        return sum(self.errors.get(k, 0) for k in ("connect", "read", "write"))

    def percentile_ms(self, p: str) -> float | None:
        """A latency percentile in milliseconds, e.g. ``percentile_ms("99")``."""
        value = self.percentiles_us.get(p)
        return None if value is None else value / 1000.0

    @property
    def p50_ms(self) -> float | None:
        return self.percentile_ms("50")

    @property
    def p99_ms(self) -> float | None:
        return self.percentile_ms("99")

    @property
    def p99_2xx_upper_ms(self) -> float | None:
        """Upper bound on the admitted (2xx) requests' p99; None when there was no 2xx."""
        if self.ok == 0:
            return None
        value = self.bounds_us.get("p99_2xx_upper")
        return None if value is None else value / 1000.0

    @property
    def p99_non2xx_upper_ms(self) -> float | None:
        """Upper bound on the non-2xx responses' p99; None when there was none."""
        if self.non_2xx == 0:
            return None
        value = self.bounds_us.get("p99_non2xx_upper")
        return None if value is None else value / 1000.0

    def exact_ms(self, kind: str, p: str = "99") -> float | None:
        """Exact quantile of the ``"2xx"`` or ``"non2xx"`` responses (tagged runs where every response was
        timed); None otherwise or when there was no response of that kind."""
        if self.untimed != 0:
            return None
        found = self.by_status_us.get(kind, {})
        if not found.get("count"):
            return None
        value = found.get(p)
        return None if value is None else value / 1000.0

    @property
    def counts_agree(self) -> bool:
        """Every completed request went through the response hook (status counts add up to wrk's total)."""
        return sum(self.statuses.values()) == self.requests

    def summary(self) -> dict[str, Any]:
        """The JSON-able figures written to latest.json."""
        return {
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "ok_rps": round(self.ok_rps, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "non_2xx": self.non_2xx,
            "timeouts": self.timeouts,
            "socket_errors": self.socket_errors,
            "counts_agree": self.counts_agree,
            "latency_ms": {p: round(v / 1000.0, 3) for p, v in self.percentiles_us.items()},
            "latency_mean_ms": round(self.latency_us.get("mean", 0.0) / 1000.0, 3),
            "latency_max_ms": round(self.latency_us.get("max", 0.0) / 1000.0, 3),
            "p99_2xx_upper_ms": _round(self.p99_2xx_upper_ms),
            "p99_non2xx_upper_ms": _round(self.p99_non2xx_upper_ms),
            **self._exact_summary(),
        }

    def _exact_summary(self) -> dict[str, Any]:
        if self.untimed is None:
            return {}
        by_status = {
            kind: {k: (int(v) if k == "count" else round(v / 1000.0, 3)) for k, v in values.items()}
            for kind, values in self.by_status_us.items()
        }
        return {
            "p99_2xx_ms": _round(self.exact_ms("2xx")),
            "p99_non2xx_ms": _round(self.exact_ms("non2xx")),
            "by_status_ms": by_status,
            "untimed": self.untimed,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the ``BENCH_JSON`` line out of wrk's stdout."""
    lines = [line for line in text.splitlines() if line.startswith(MARKER)]
    if len(lines) != 1:
        raise WrkOutputError(f"expected one {MARKER.strip()} line in wrk output, found {len(lines)}")
    try:
        data = json.loads(lines[0][len(MARKER) :])
        latency = data["latency_us"]
        return WrkResult(
            duration_s=float(data["duration_us"]) / 1e6,
            requests=int(data["requests"]),
            statuses={int(k): int(v) for k, v in data["statuses"].items()},
            errors={str(k): int(v) for k, v in data["errors"].items()},
            latency_us={k: float(latency[k]) for k in ("min", "mean", "max", "stdev")},
            percentiles_us={str(k): float(v) for k, v in latency["percentiles"].items()},
            bounds_us={str(k): float(v) for k, v in data.get("bounds_us", {}).items()},
            by_status_us={
                kind: {str(k): float(v) for k, v in values.items()}
                for kind, values in data.get("by_status_us", {}).items()
                if isinstance(values, dict)
            },
            untimed=int(data["by_status_us"]["untimed"]) if "by_status_us" in data else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WrkOutputError(f"malformed {MARKER.strip()} line: {exc}") from exc
