"""False-alarm rate and detection delay of the coverage alert, by simulation (fixed seed).

The rule (``observability.coverage.CoverageRule``, alert ``TabserveCoverageOutOfBand`` in
``deploy/monitoring/alerts.yaml``): over the newest ``window`` answers with feedback of one cell, fire when
``samples >= min_samples`` and the whole Wilson interval at ``z`` lies outside ``level ± tolerance``, on
``consecutive`` evaluations in a row (the rule's ``for:``). Feedback arrives as independent
Bernoulli(true coverage) outcomes; the rule is evaluated every ``every`` new outcomes.

    .venv/bin/python -m bench.coverage_alarm [--streams 400] [--length 20000] [--seed 13]

Prints JSON: per true coverage, the share of evaluations that fire, the share of streams that ever fire
(false alarms when the true coverage is inside the band) and the median feedback count to the first alert.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import numpy.typing as npt


def wilson_bounds(covered: npt.NDArray[np.float64], n: npt.NDArray[np.float64], z: float) -> tuple[Any, Any]:
    """Vectorised ``observability.coverage.wilson`` (n > 0)."""
    p = covered / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def simulate(
    true_coverage: float,
    *,
    level: float = 0.9,
    tolerance: float = 0.03,
    z: float = 2.576,
    window: int = 2000,
    min_samples: int = 200,
    every: int = 20,
    consecutive: int = 3,
    streams: int = 400,
    length: int = 20_000,
    seed: int = 13,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    hits = (rng.random((streams, length)) < true_coverage).astype(np.int64)
    cumulative = np.concatenate([np.zeros((streams, 1), dtype=np.int64), np.cumsum(hits, axis=1)], axis=1)
    at = np.arange(every, length + 1, every)
    start = np.maximum(0, at - window)
    n = (at - start).astype(np.float64)
    covered = (cumulative[:, at] - cumulative[:, start]).astype(np.float64)
    lower, upper = wilson_bounds(covered, np.broadcast_to(n, covered.shape), z)
    out = ((upper < level - tolerance) | (lower > level + tolerance)) & (n >= min_samples)
    fired = out.copy()  # the rule's `for:`: out of band on `consecutive` evaluations in a row
    for k in range(1, consecutive):
        fired[:, k:] &= out[:, :-k]
        fired[:, :k] = False
    ever = fired.any(axis=1)
    first = np.where(ever, at[np.argmax(fired, axis=1)], -1)
    return {
        "true_coverage": true_coverage,
        "evaluations_firing": float(fired.mean()),
        "streams_ever_firing": float(ever.mean()),
        "median_feedback_to_first_alert": float(np.median(first[ever])) if ever.any() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--length", type=int, default=20_000, help="feedback per stream")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    settings = {"streams": args.streams, "length": args.length, "seed": args.seed}
    cases = [0.9, 0.88, 0.87, 0.93, 0.85, 0.74, 0.97]
    results = [simulate(p, **settings) for p in cases]
    rule = {"level": 0.9, "tolerance": 0.03, "z": 2.576, "window": 2000, "min_samples": 200, "every": 20}
    print(json.dumps({"rule": {**rule, "consecutive": 3}, **settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
