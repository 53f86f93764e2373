"""Train the peers' scikit-learn pipeline, the way a tutorial does, into ``bench/.work/`` (never committed).

``python -m bench.peers.train_pipeline OUT_DIR`` (run from the repo root with the Python of the venv that will
serve it, so the pickle matches that venv's scikit-learn) reads the shared vehicle data with pandas, fits
``ColumnTransformer(OneHotEncoder + numeric passthrough) -> GradientBoostingRegressor`` on the same eleven
inputs tabserve's co2 model takes, and writes ``model.joblib`` (the file MLServer's scikit-learn runtime and the
FastAPI baseline load) plus ``metrics.json``.

joblib/pickle appears here only because the *peers* serve that way (MLServer's scikit-learn runtime loads
nothing else); tabserve never loads these files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from bench.bodies import CSV_COLUMNS, FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS, TARGET_COLUMN, VEHICLE_FILE, data_dir

SEED = 0


def build_pipeline() -> Pipeline:
    """One-hot the categories, pass the numbers through, gradient-boosted trees on top."""
    preprocess = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown="ignore"), list(STRING_FIELDS)),
            ("numbers", "passthrough", list(INT_FIELDS + FLOAT_FIELDS)),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", GradientBoostingRegressor(random_state=SEED))])


def load_frame() -> tuple[pd.DataFrame, pd.Series]:
    """The official 2015-2020 ratings with the request's field names."""
    frame = pd.read_csv(data_dir() / VEHICLE_FILE)
    frame = frame.rename(columns=CSV_COLUMNS)
    frame["model"] = frame["model"].str.strip()
    features = frame[list(STRING_FIELDS + INT_FIELDS + FLOAT_FIELDS)]
    return features, frame[TARGET_COLUMN].astype(float)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.peers.train_pipeline OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    features, target = load_frame()
    x_train, x_test, y_train, y_test = train_test_split(features, target, test_size=0.2, random_state=SEED)
    t0 = time.perf_counter()
    pipeline = build_pipeline().fit(x_train, y_train)
    fit_s = time.perf_counter() - t0
    predicted = pipeline.predict(x_test)
    joblib.dump(pipeline, out_dir / "model.joblib")
    metrics = {
        "rows_train": len(x_train),
        "rows_test": len(x_test),
        "r2": round(float(r2_score(y_test, predicted)), 4),
        "mae_g_per_km": round(float(mean_absolute_error(y_test, predicted)), 2),
        "fit_s": round(fit_s, 2),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
