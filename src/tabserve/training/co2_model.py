"""co2 estimator: physics term + two LightGBM ensembles, fitted in float32, and their single ONNX graph.

prediction = physics                    when the combined figure is given
           = physics + residual model   when only city and/or highway is given
           = specs model                 when none is given
(A residual model on the combined-given patterns made them slightly WORSE than physics alone on both the
temporal and the grouped split, so those rows take the physics term as is.)
physics    = comb_estimate × factor[regime, fuel]   (regime: model year < 2016, else ≥ 2016 or absent)
comb_estimate = comb; else 0.55·city + 0.45·hwy;
             else ratio_city·city; else ratio_hwy·hwy (ratios and per-fuel factors least-squares on training).

Both ensembles read rows of the encoded matrix X (the specs model never saw a consumption figure, so it never
splits on them; it predicts log CO₂). The ONNX graph computes exactly this in float32 from the single input "X":
the fuel factor of the row's regime (Slice/Gather/Where), then an ``If``: when every row has the combined figure
(the usual request) the answer is comb × factor and nothing else runs; otherwise the estimate from city/highway
and a row dispatch (NonZero/Gather/ScatterND) so that each row runs only the ``TreeEnsembleRegressor`` it needs
(half the work of running both and choosing). With the ``If``, a one-row request with the combined figure runs
16 nodes instead of 48 (ORT charges roughly half a microsecond per node); a batch without it pays one If extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from tabserve.training.build.embed import converted_lightgbm, embedded, sealed
from tabserve.training.co2_data import CITY, COMB, FUEL_CODES, HWY

F32 = np.float32
OPSET = 15
ML_OPSET = 3
OUTPUT_NAME = "co2"
CITY_WEIGHT = F32(0.55)
HWY_WEIGHT = F32(0.45)

SPECS_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.1,
    "num_leaves": 63,
    "max_depth": 8,
    "min_child_samples": 8,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}
RESIDUAL_PARAMS: dict[str, Any] = {
    "n_estimators": 120,
    "learning_rate": 0.1,
    "num_leaves": 31,
    "max_depth": 8,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.9,
    "reg_lambda": 1.0,
}


@dataclass(frozen=True, slots=True)
class Physics:
    """Per-fuel factors (g CO₂ per L/100 km, index = fuel code; last = unknown fuel) and single-figure ratios."""

    factors: tuple[float, ...]
    """Current regime: model year ≥ 2016 or model year absent."""
    old_factors: tuple[float, ...]
    """Model year < 2016."""
    ratio_city: float
    ratio_hwy: float
    city: int
    hwy: int
    comb: int
    fuel: int
    year: int


def _through_origin(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    return float(np.dot(x, y) / np.dot(x, x))


FACTOR_REGIME_YEAR = 2016.0
"""NRCan's CO₂-per-litre factors changed with model year 2016 (X/Z ≈ 23.0 → 23.4, E ≈ 16.0 → 16.5)."""
MIN_FACTOR_ROWS = 20


def fit_physics(
    fuel: npt.NDArray[np.float64],
    year: npt.NDArray[np.float64],
    city: npt.NDArray[np.float64],
    hwy: npt.NDArray[np.float64],
    comb: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    indices: Mapping[str, int],
) -> Physics:
    """Per-fuel factors through the origin, one table per factor regime (model year < 2016 / ≥ 2016); a regime
    with fewer than MIN_FACTOR_ROWS rows of a fuel uses all that fuel's rows. Unknown fuel: regular gasoline."""
    tables: list[list[float]] = [[], []]
    for code in range(len(FUEL_CODES)):
        mask = fuel == code
        if not mask.any():
            raise ValueError(f"no training rows with fuel {FUEL_CODES[code]}")
        for table, regime in zip(tables, (year >= FACTOR_REGIME_YEAR, year < FACTOR_REGIME_YEAR), strict=True):
            chosen = mask & regime if (mask & regime).sum() >= MIN_FACTOR_ROWS else mask
            table.append(_through_origin(comb[chosen], y[chosen]))
    for table in tables:
        table.append(table[0])
    return Physics(
        factors=tuple(float(F32(f)) for f in tables[0]),
        old_factors=tuple(float(F32(f)) for f in tables[1]),
        ratio_city=float(F32(_through_origin(city, comb))),
        ratio_hwy=float(F32(_through_origin(hwy, comb))),
        city=indices[CITY],
        hwy=indices[HWY],
        comb=indices[COMB],
        fuel=indices["fuel"],
        year=indices["year"],
    )


def comb_estimate(physics: Physics, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The graph's comb estimate in float32 (NaN when no figure is given)."""
    city, hwy, comb = x[:, physics.city], x[:, physics.hwy], x[:, physics.comb]
    both = city * CITY_WEIGHT + hwy * HWY_WEIGHT
    single = np.where(np.isnan(city), hwy * F32(physics.ratio_hwy), city * F32(physics.ratio_city))
    return np.where(np.isnan(comb), np.where(np.isnan(both), single, both), comb).astype(F32)


def physics_term(physics: Physics, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    table = np.asarray(physics.factors, dtype=F32)
    old_table = np.asarray(physics.old_factors, dtype=F32)
    code = np.clip(x[:, physics.fuel], 0, len(table) - 1).astype(np.int64)
    year = x[:, physics.year]
    old = ~np.isnan(year) & (year < F32(FACTOR_REGIME_YEAR))
    factor = np.where(old, old_table[code], table[code])
    return (comb_estimate(physics, x) * factor).astype(F32)


def _regressor(params: Mapping[str, Any], seed: int) -> lgb.LGBMRegressor:
    return lgb.LGBMRegressor(**params, random_state=seed, deterministic=True, force_row_wise=True, n_jobs=2, verbose=-1)


def _round_down_float32(value: float) -> float:
    low = np.float32(value)
    if float(low) > value:
        low = np.nextafter(low, np.float32(-np.inf), dtype=np.float32)
    return float(low)


def float32_thresholds(model: lgb.LGBMRegressor) -> lgb.Booster:
    """The fitted trees with every threshold t replaced by the largest float32 ≤ t.

    For a float32 feature x, ``x <= t`` ⇔ ``x <= round_down_f32(t)``, so predictions on float32 inputs are
    unchanged, and the ONNX TreeEnsemble (float32 thresholds) takes exactly the same branches.
    """
    lines = []
    for line in model.booster_.model_to_string().splitlines():
        if line.startswith("tree_sizes="):
            continue  # byte sizes of the tree blocks change with the text; LightGBM then parses sequentially
        if line.startswith("threshold="):
            values = [_round_down_float32(float(v)) for v in line[len("threshold=") :].split()]
            lines.append("threshold=" + " ".join(repr(v) for v in values))
        else:
            lines.append(line)
    return lgb.Booster(model_str="\n".join(lines) + "\n")


@dataclass(frozen=True, slots=True)
class Co2Estimator:
    physics: Physics
    specs: lgb.Booster
    residual: lgb.Booster

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Float32 composition mirroring the ONNX graph (trees summed in float64 by LightGBM)."""
        phys = physics_term(self.physics, x)
        none_given = np.isnan(comb_estimate(self.physics, x))
        partial = ~none_given & np.isnan(x[:, self.physics.comb])
        out = phys.copy()
        if none_given.any():
            out[none_given] = np.exp(np.asarray(self.specs.predict(x[none_given]), dtype=F32))
        if partial.any():
            out[partial] = phys[partial] + np.asarray(self.residual.predict(x[partial]), dtype=F32)
        return out


def fit(
    physics: Physics,
    x_specs: npt.NDArray[np.float32],
    y_specs: npt.NDArray[np.float64],
    x_given: npt.NDArray[np.float32],
    y_given: npt.NDArray[np.float64],
    seed: int,
) -> Co2Estimator:
    """``x_specs``: rows without consumption (target log CO₂); ``x_given``: rows with city and/or highway but
    no combined figure (target =
    y − physics)."""
    specs = _regressor(SPECS_PARAMS, seed).fit(x_specs, np.log(y_specs))
    residual_target = y_given - physics_term(physics, x_given).astype(np.float64)
    residual = _regressor(RESIDUAL_PARAMS, seed + 1).fit(x_given, residual_target)
    return Co2Estimator(physics=physics, specs=float32_thresholds(specs), residual=float32_thresholds(residual))


# --- ONNX ------------------------------------------------------------------------------------------


def _trees(
    model: lgb.Booster, width: int, prefix: str, input_name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """The converted ensemble's nodes and initializers, renamed with ``prefix``, reading ``input_name``."""
    converted = converted_lightgbm(model, width, OPSET, ML_OPSET)
    return embedded(converted.graph, prefix, input_name)


def _const(name: str, values: Sequence[float] | Sequence[int] | float, dtype: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _column(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1])


def to_onnx(estimator: Co2Estimator, width: int) -> onnx.ModelProto:
    ph = estimator.physics
    spec_nodes, spec_init, spec_out = _trees(estimator.specs, width, "specs_", "X_specs")
    res_nodes, res_init, res_out = _trees(estimator.residual, width, "resid_", "X_given")
    inits = [
        _const("axis1", [1], np.int64),
        *(
            _const(f"start_{n}", [i], np.int64)
            for n, i in (("city", ph.city), ("hwy", ph.hwy), ("comb", ph.comb), ("fuel", ph.fuel))
        ),
        *(
            _const(f"end_{n}", [i + 1], np.int64)
            for n, i in (("city", ph.city), ("hwy", ph.hwy), ("comb", ph.comb), ("fuel", ph.fuel))
        ),
        _const("w_city", [float(CITY_WEIGHT)], F32),
        _const("w_hwy", [float(HWY_WEIGHT)], F32),
        _const("r_city", [ph.ratio_city], F32),
        _const("r_hwy", [ph.ratio_hwy], F32),
        _const("factors", ph.factors, F32),
        _const("old_factors", ph.old_factors, F32),
        _const("start_year", [ph.year], np.int64),
        _const("end_year", [ph.year + 1], np.int64),
        _const("regime_year", [FACTOR_REGIME_YEAR], F32),
        _const("code_lo", 0.0, F32),
        _const("code_hi", float(len(ph.factors) - 1), F32),
        _const("flat", [-1], np.int64),
    ]
    mk = helper.make_node
    # always: the combined figure, the fuel factor of the row's regime, and whether any row lacks the combined
    # figure (then the rows need an estimate from city/highway and the ensembles; else physics is comb × factor)
    factor_nodes = [
        *(mk("Slice", ["X", f"start_{n}", f"end_{n}", "axis1"], [n]) for n in ("comb", "fuel")),
        mk("IsNaN", ["comb"], ["comb_nan"]),
        mk("Clip", ["fuel", "code_lo", "code_hi"], ["fuel_clipped"]),
        mk("Cast", ["fuel_clipped"], ["fuel_code"], to=TensorProto.INT64),
        mk("Gather", ["factors", "fuel_code"], ["new_factor"]),
        mk("Gather", ["old_factors", "fuel_code"], ["old_factor"]),
        mk("Slice", ["X", "start_year", "end_year", "axis1"], ["year"]),
        mk("IsNaN", ["year"], ["year_nan"]),
        mk("Not", ["year_nan"], ["year_given"]),
        mk("Less", ["year", "regime_year"], ["year_before"]),
        mk("And", ["year_given", "year_before"], ["old_regime"]),
        mk("Where", ["old_regime", "old_factor", "new_factor"], ["factor"]),
        mk("Cast", ["comb_nan"], ["comb_nan_f"], to=TensorProto.FLOAT),
        mk("ReduceMax", ["comb_nan_f"], ["some_comb_nan_f"], keepdims=0),
        mk("Cast", ["some_comb_nan_f"], ["some_comb_nan"], to=TensorProto.BOOL),
    ]
    # every row has the combined figure (the common request): physics alone, no ensemble, no dispatch
    physics_only = helper.make_graph(
        [mk("Mul", ["comb", "factor"], ["physics_only_out"])], "physics_only", [], [_column("physics_only_out")]
    )
    # some row lacks it: estimate from city/highway, then a row dispatch so that each row runs only the ensemble
    # it needs (specs when no figure is given, residual when city/highway but no combined figure is given)
    dispatch_nodes = [
        *(mk("Slice", ["X", f"start_{n}", f"end_{n}", "axis1"], [n]) for n in ("city", "hwy")),
        mk("Mul", ["city", "w_city"], ["city_w"]),
        mk("Mul", ["hwy", "w_hwy"], ["hwy_w"]),
        mk("Add", ["city_w", "hwy_w"], ["both"]),
        mk("Mul", ["city", "r_city"], ["from_city"]),
        mk("Mul", ["hwy", "r_hwy"], ["from_hwy"]),
        mk("IsNaN", ["city"], ["city_nan"]),
        mk("Where", ["city_nan", "from_hwy", "from_city"], ["single"]),
        mk("IsNaN", ["both"], ["both_nan"]),
        mk("Where", ["both_nan", "single", "both"], ["partial"]),
        mk("Where", ["comb_nan", "partial", "comb"], ["estimate"]),
        mk("Mul", ["estimate", "factor"], ["physics"]),
        mk("IsNaN", ["estimate"], ["none_given"]),
        mk("Not", ["none_given"], ["some_given"]),
        mk("And", ["some_given", "comb_nan"], ["any_given"]),
        mk("Reshape", ["none_given", "flat"], ["none_given_1d"]),
        mk("Reshape", ["any_given", "flat"], ["any_given_1d"]),
        mk("NonZero", ["none_given_1d"], ["specs_rows_2d"]),
        mk("NonZero", ["any_given_1d"], ["given_rows_2d"]),
        mk("Reshape", ["specs_rows_2d", "flat"], ["specs_rows"]),
        mk("Reshape", ["given_rows_2d", "flat"], ["given_rows"]),
        mk("Gather", ["X", "specs_rows"], ["X_specs"], axis=0),
        mk("Gather", ["X", "given_rows"], ["X_given"], axis=0),
        *spec_nodes,
        *res_nodes,
        mk("Exp", [spec_out], ["specs_pred"]),
        mk("Gather", ["physics", "given_rows"], ["physics_given"], axis=0),
        mk("Add", ["physics_given", res_out], ["given_pred"]),
        mk("Transpose", ["specs_rows_2d"], ["specs_index"], perm=[1, 0]),
        mk("Transpose", ["given_rows_2d"], ["given_index"], perm=[1, 0]),
        mk("ScatterND", ["physics", "specs_index", "specs_pred"], ["with_specs"]),
        mk("ScatterND", ["with_specs", "given_index", "given_pred"], ["dispatch_out"]),
    ]
    dispatch = helper.make_graph(dispatch_nodes, "dispatch", [], [_column("dispatch_out")])
    nodes = [
        *factor_nodes,
        mk("If", ["some_comb_nan"], [OUTPUT_NAME], then_branch=dispatch, else_branch=physics_only),
    ]
    graph = helper.make_graph(
        nodes,
        "co2",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [_column(OUTPUT_NAME)],
        initializer=[*inits, *spec_init, *res_init],
    )
    return sealed(graph, OPSET, ML_OPSET, "tabserve.training.co2")
