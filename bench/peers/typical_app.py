"""The "typical" baseline: FastAPI + a pydantic model + a scikit-learn pipeline on a one-row DataFrame.

Written the way a tutorial writes it, on purpose: load the joblib pipeline at import, validate the body with
a pydantic model, build ``pd.DataFrame([vehicle.model_dump()])`` and call ``pipeline.predict`` per request.
The pipeline file comes from ``BENCH_PIPELINE`` (trained by ``bench.peers.train_pipeline``). Served by
``uvicorn bench.peers.typical_app:app`` on the same stack as the floor; ``GET /health`` is its readiness route.
"""

from __future__ import annotations

import os

import joblib
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

pipeline = joblib.load(os.environ.get("BENCH_PIPELINE", "bench/.work/typical/model.joblib"))

app = FastAPI(title="CO2 emissions predictor")


class Vehicle(BaseModel):
    make: str
    model: str
    vehicle_class: str
    engine_size_l: float
    cylinders: int
    transmission: str
    fuel_type: str
    model_year: int
    fuel_consumption_city_l_per_100km: float
    fuel_consumption_hwy_l_per_100km: float
    fuel_consumption_comb_l_per_100km: float


class Prediction(BaseModel):
    co2_g_per_km: float


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(vehicle: Vehicle) -> Prediction:
    frame = pd.DataFrame([vehicle.model_dump()])
    return Prediction(co2_g_per_km=float(pipeline.predict(frame)[0]))
