"""co2 training recipe: from a training frame to a fitted estimator and its column encoding.

One function, ``fit_recipe``, used for the shipped model (temporal split) and for the grouped-split sibling
that only produces evaluation figures. Matrices are built through ``ColumnEncoder`` from normalised values.
Training rows: every row once without consumption figures (and once more with random unknown categories /
absent model year) for the specs model; every row once per non-empty pattern of the three figures
with city and/or highway but no combined figure (same random perturbation) for the residual model; rows with
the combined figure take the physics term alone (see ``co2_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import TypeAdapter

from tabserve.manifest import ColumnSpec
from tabserve.runtime import ColumnEncoder
from tabserve.training.co2_data import CITY, COMB, FUEL_CODES, HWY, TARGET
from tabserve.training.co2_features import (
    ALL_PATTERNS,
    build_columns,
    column_index,
    encode,
    input_values,
    mask_pattern,
    perturb,
)
from tabserve.training.co2_model import FACTOR_REGIME_YEAR, Co2Estimator, fit, fit_physics

_COLUMNS = TypeAdapter(list[ColumnSpec])


@dataclass(frozen=True, slots=True)
class Recipe:
    columns: list[dict[str, Any]]
    encoder: ColumnEncoder
    estimator: Co2Estimator

    @property
    def fuel_factors(self) -> dict[str, float]:
        return {code: self.estimator.physics.factors[i] for i, code in enumerate(FUEL_CODES)}

    @property
    def old_fuel_factors(self) -> dict[str, float]:
        return {code: self.estimator.physics.old_factors[i] for i, code in enumerate(FUEL_CODES)}

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.estimator.predict(x)


def make_encoder(columns: list[dict[str, Any]]) -> ColumnEncoder:
    return ColumnEncoder(_COLUMNS.validate_python(columns))


def fit_recipe(train: pd.DataFrame, seed: int) -> Recipe:
    columns = build_columns(train)
    encoder = make_encoder(columns)
    rng = np.random.default_rng(seed)
    values = input_values(train)
    y = train[TARGET].to_numpy(dtype=np.float64)

    clean = encode(encoder, values)
    indices = {
        CITY: column_index(columns, "numeric", CITY),
        HWY: column_index(columns, "numeric", HWY),
        COMB: column_index(columns, "numeric", COMB),
        "fuel": column_index(columns, "ordinal", "fuel_type"),
        "year": column_index(columns, "numeric", "model_year"),
    }
    physics = fit_physics(
        clean[:, indices["fuel"]].astype(np.float64),
        train["model_year"].to_numpy(dtype=np.float64),
        clean[:, indices[CITY]].astype(np.float64),
        clean[:, indices[HWY]].astype(np.float64),
        clean[:, indices[COMB]].astype(np.float64),
        y,
        indices,
    )
    specs_x = np.vstack(
        [encode(encoder, mask_pattern(values, "000")), encode(encoder, perturb(mask_pattern(values, "000"), rng))]
    )
    specs_y = np.concatenate([y, y])
    given = [p for p in ALL_PATTERNS if p != "000" and p[2] == "0"]  # city and/or highway, no combined
    given_x = np.vstack([encode(encoder, perturb(mask_pattern(values, p), rng, FACTOR_REGIME_YEAR)) for p in given])
    given_y = np.tile(y, len(given))
    estimator = fit(physics, specs_x, specs_y, given_x, given_y, seed)
    return Recipe(columns=columns, encoder=encoder, estimator=estimator)
