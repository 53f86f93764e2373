"""Train-for-me, one LightGBM per missing-input pattern (spec ``estimator = "per_pattern"``), optionally
proportional to given inputs (``proportional_to``), and the single ONNX graph that runs them.

A request's pattern (which of the pattern inputs it gives) picks its submodel, fitted on every training row that
can stand for that pattern (``table.masked``): the full table teaches each pattern, not the share of rows a random
mask happens to leave in it. With ``proportional_to`` (regression, a positive target), pattern ``p`` predicts

    base_p(x) · exp(tree_p(x)),   base_p = Σ w_pj · x_j over the proportional inputs p gives (1 when it gives none)

with ``w_p`` least squares through the origin (non-negative) on the training rows: the trees learn the log ratio
of the target to a known, roughly proportional quantity (CO₂ to fuel burnt, a claim cost to exposure), which they
fit far better than the quantity itself. The graph computes each row's pattern code from its missing values,
its base by one MatMul, and groups the rows by pattern (a counting sort, one Split) so that each runs only its
own trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from tabserve.errors import BuildError
from tabserve.training.build.convert import lightgbm_thresholds, round_thresholds_down
from tabserve.training.build.embed import converted_lightgbm, embedded, sealed
from tabserve.training.build.fit import EARLY_STOPPING_ROUNDS, LARGE_ROWS, OPSET, lightgbm_params, min_delta
from tabserve.training.build.infer import Schema
from tabserve.training.build.table import Rows, masked, pattern_keys, sometimes_absent

OUTPUT = "prediction"
ML_OPSET = 3
PATTERN_MISSING = -1.0
"""The ordinal code of an absent category pattern input (its unknown code is ``PATTERN_UNKNOWN``)."""
PATTERN_UNKNOWN = -2.0
MIN_PATTERN_ROWS = 20
OTHER_ABSENT_SHARE = 0.2
"""An optional input that is not a pattern input (beyond the three patterns, say) is absent in this share of a
submodel's fitting rows, at random: a request may omit it, so the trees must have seen it absent."""


@dataclass(frozen=True, slots=True)
class PatternModel:
    key: str
    booster: Any
    """The fitted LightGBM booster (``rounds`` trees)."""
    weights: tuple[float, ...]
    """One weight per proportional input (0 for those the pattern does not give); empty without proportional."""
    rounds: int
    rows: int


@dataclass(frozen=True, slots=True)
class PerPattern:
    models: list[PatternModel]
    presence: list[tuple[int, float | None]]
    """Per pattern input: its matrix column, and its missing code (None: a number, absent = NaN)."""
    proportional: list[int]
    """Matrix columns of the proportional inputs."""
    params: dict[str, Any]

    @property
    def log_link(self) -> bool:
        return bool(self.proportional)

    def codes(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        """Each row's pattern as the index of its key in ``pattern_keys`` (all given first)."""
        k = len(self.presence)
        code = np.zeros(x.shape[0], dtype=np.int64)
        for j, (column, missing) in enumerate(self.presence):
            given = ~np.isnan(x[:, column]) if missing is None else x[:, column] != np.float32(missing)
            code += given.astype(np.int64) << (k - 1 - j)
        return np.asarray((2**k - 1) - code, dtype=np.int64)

    def base(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Each row's base (float32, as the graph computes it); ones without proportional inputs."""
        if not self.proportional:
            return np.ones(x.shape[0], dtype=np.float32)
        filled = np.nan_to_num(x[:, self.proportional], nan=0.0).astype(np.float32)
        table = self.base_table()
        return np.take_along_axis(filled @ table[0] + table[1], self.codes(x)[:, None], axis=1)[:, 0]

    def base_table(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        weights = np.array([m.weights for m in self.models], dtype=np.float32).T  # [proportional, patterns]
        bias = np.array([[0.0 if any(m.weights) else 1.0 for m in self.models]], dtype=np.float32)
        return weights, bias

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The fitted boosters' answer (float64 trees), which the ONNX graph must reproduce."""
        out = np.zeros(x.shape[0], dtype=np.float64)
        codes = self.codes(x)
        base = self.base(x).astype(np.float64)
        for index, model in enumerate(self.models):
            rows = np.flatnonzero(codes == index)
            if rows.size:
                raw = np.asarray(model.booster.predict(x[rows]), dtype=np.float64)
                out[rows] = base[rows] * np.exp(raw) if self.log_link else raw
        return out


def _weights(x: npt.NDArray[np.float32], y: npt.NDArray[np.float64], given: list[int], total: int) -> tuple[float, ...]:
    """Least squares through the origin of ``y`` on the ``given`` columns of ``x``, weights kept ≥ 0 (a column
    whose weight comes out negative is left out and the rest solved again; a handful of columns)."""
    weights = [0.0] * total
    active = list(given)
    while active:
        solved = np.linalg.lstsq(x[:, active].astype(np.float64), y, rcond=None)[0]
        if bool(np.all(solved > 0.0)):
            for j, w in zip(active, solved.tolist(), strict=True):
                weights[j] = float(np.float32(w))
            break
        active.pop(int(np.argmin(solved)))
    return tuple(weights)


def _gives(pattern_inputs: Sequence[str], key: str, name: str) -> bool:
    """Whether pattern ``key`` gives input ``name`` (an input that is not a pattern input is always given)."""
    return name not in pattern_inputs or key[list(pattern_inputs).index(name)] == "1"


def fit_per_pattern(
    schema: Schema,
    encode: Callable[[Rows], npt.NDArray[np.float32]],
    columns: Sequence[dict[str, Any]],
    proportional_to: Sequence[str],
    train: Rows,
    validation: Rows,
    seed: int,
) -> PerPattern:
    import lightgbm as lgb

    index = {(c["kind"], c["input"]): j for j, c in enumerate(columns)}
    presence: list[tuple[int, float | None]] = []
    for name in schema.pattern_inputs:
        if ("numeric", name) in index:
            presence.append((index[("numeric", name)], None))
        else:
            presence.append((index[("ordinal", name)], PATTERN_MISSING))
    proportional = [index[("numeric", name)] for name in proportional_to]
    models: list[PatternModel] = []
    params: dict[str, Any] = {}
    for offset, key in enumerate(pattern_keys(len(schema.pattern_inputs))):
        fit_rows, val_rows = masked(train, schema.pattern_inputs, key), masked(validation, schema.pattern_inputs, key)
        others = [name for name in schema.optional if name not in schema.pattern_inputs]
        fit_rows = sometimes_absent(fit_rows, others, OTHER_ABSENT_SHARE, seed + offset)
        val_rows = sometimes_absent(val_rows, others, OTHER_ABSENT_SHARE, seed + offset + 1)
        if fit_rows.rows < MIN_PATTERN_ROWS or val_rows.rows == 0:
            raise BuildError(
                f"pattern {key!r} ({', '.join(schema.pattern_inputs)}) has {fit_rows.rows} training and "
                f"{val_rows.rows} validation rows: a submodel needs at least {MIN_PATTERN_ROWS} and 1"
            )
        x_fit, x_val = encode(fit_rows), encode(val_rows)
        x_all = np.vstack([x_fit, x_val])
        y_all = np.concatenate([fit_rows.labels, val_rows.labels])
        given = [j for j, name in enumerate(proportional_to) if _gives(schema.pattern_inputs, key, name)]
        weights = _weights(x_all[:, proportional], y_all, given, len(proportional)) if proportional else ()
        if proportional:
            y_all = np.log(y_all) - np.log(_pattern_base(x_all, proportional, weights))
        y_fit, y_val = y_all[: fit_rows.rows], y_all[fit_rows.rows :]
        params = lightgbm_params(fit_rows.rows, "regression", 0, seed + offset)
        patience = EARLY_STOPPING_ROUNDS if fit_rows.rows < LARGE_ROWS else EARLY_STOPPING_ROUNDS // 2
        stopped = lgb.LGBMRegressor(**params).fit(
            x_fit,
            y_fit,
            eval_X=(x_val,),
            eval_y=(y_val,),
            callbacks=[lgb.early_stopping(patience, verbose=False, min_delta=min_delta("regression", y_fit))],
        )
        rounds = int(stopped.best_iteration_ or params["n_estimators"])
        # refitted on the training and validation rows with the rounds chosen: with a time column the validation
        # rows are the newest of the fitting rows, the ones a model serving the future should learn from most
        model = lgb.LGBMRegressor(**{**params, "n_estimators": rounds}).fit(x_all, y_all)
        models.append(PatternModel(key, model.booster_, weights, rounds, int(y_all.size)))
    kept = {k: v for k, v in params.items() if k not in ("n_jobs", "verbose", "random_state")}
    return PerPattern(models, presence, proportional, kept)


def _pattern_base(
    x: npt.NDArray[np.float32], proportional: list[int], weights: tuple[float, ...]
) -> npt.NDArray[np.float64]:
    if not any(weights):
        return np.ones(x.shape[0], dtype=np.float64)
    base = np.nan_to_num(x[:, proportional], nan=0.0).astype(np.float32) @ np.asarray(weights, dtype=np.float32)
    if bool(np.any(base <= 0.0)):
        raise BuildError("spec proportional_to: a row gives its proportional inputs but their weighted sum is ≤ 0")
    return base.astype(np.float64)


def _const(name: str, values: Any, dtype: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def export_per_pattern(fitted: PerPattern, width: int) -> onnx.ModelProto:
    """One graph: input ``X`` [n, width] float32, output ``prediction`` [n, 1].

    Rows are grouped by pattern with a counting sort (``_pattern_code``, ``_grouped``): each row's place among
    the rows of its pattern (a running count), after those of the patterns before it. The grouped rows are split
    once into one slice per pattern, each slice runs its own trees, and the answers go back in input order by one
    Gather. A fixed handful of nodes whatever the number of patterns (a single row's cost is mostly per node),
    each row's answer the same, bit for bit, as its submodel alone gives."""
    inits = [
        _const("flat", [-1], np.int64),
        _const("axis0", [0], np.int64),
        _const("axis1", [1], np.int64),
        _const("zero_f", [0.0], np.float32),
    ]
    nodes, pattern = _pattern_code(fitted.presence, inits)
    outputs: list[str] = []
    inputs = _grouped(len(fitted.models), pattern, nodes, inits) if len(fitted.models) > 1 else ["X"]
    for index, (model, rows) in enumerate(zip(fitted.models, inputs, strict=True)):
        converted = converted_lightgbm(model.booster, width, OPSET, ML_OPSET)
        round_thresholds_down(converted, lightgbm_thresholds(model.booster))
        tree_nodes, tree_inits, tree_out = embedded(converted.graph, f"m{index}_", rows)
        nodes += tree_nodes
        inits += tree_inits
        outputs.append(tree_out)
    raw = outputs[0]
    if len(outputs) > 1:
        nodes += [
            helper.make_node("Concat", outputs, ["raw_grouped"], axis=0),
            helper.make_node("Gather", ["raw_grouped", "position"], ["raw"], axis=0),  # back in input order
        ]
        raw = "raw"
    nodes += _answer(fitted, raw, pattern, inits)
    graph = helper.make_graph(
        nodes,
        "per_pattern",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, 1])],
        initializer=inits,
    )
    return sealed(graph, OPSET, ML_OPSET, "tabserve.build.per_pattern")


def _pattern_code(
    presence: Sequence[tuple[int, float | None]], inits: list[onnx.TensorProto]
) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing each row's pattern ``pattern`` [n, 1] int64, its index in ``pattern_keys`` (0: all given):
    the given pattern inputs as bits (a number given: not NaN; a category: not its missing code), one MatMul."""
    mk = helper.make_node
    k = len(presence)
    if k == 0:
        zeros = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
        return [
            mk("Shape", ["X"], ["x_shape"]),
            mk("Gather", ["x_shape", "axis0"], ["n_rows"]),
            mk("Concat", ["n_rows", "axis1"], ["column_shape"], axis=0),
            mk("ConstantOfShape", ["column_shape"], ["pattern"], value=zeros),
        ], "pattern"
    nodes: list[onnx.NodeProto] = []
    terms: list[str] = []
    numbers = [(j, column) for j, (column, missing) in enumerate(presence) if missing is None]
    codes = [(j, column, missing) for j, (column, missing) in enumerate(presence) if missing is not None]
    for group, members in (("number", numbers), ("category", codes)):
        if not members:
            continue
        inits.append(_const(f"{group}_columns", [m[1] for m in members], np.int64))
        inits.append(_const(f"{group}_bits", [[float(1 << (k - 1 - m[0]))] for m in members], np.float32))
        nodes.append(mk("Gather", ["X", f"{group}_columns"], [f"{group}_values"], axis=1))
        if group == "number":
            nodes.append(mk("IsNaN", [f"{group}_values"], [f"{group}_absent"]))
        else:
            inits.append(_const("category_missing", [[m[2] for m in codes]], np.float32))
            nodes.append(mk("Equal", [f"{group}_values", "category_missing"], [f"{group}_absent"]))
        nodes += [
            mk("Not", [f"{group}_absent"], [f"{group}_given"]),
            mk("Cast", [f"{group}_given"], [f"{group}_given_f"], to=TensorProto.FLOAT),
            mk("MatMul", [f"{group}_given_f", f"{group}_bits"], [f"{group}_code"]),
        ]
        terms.append(f"{group}_code")
    code = terms[0]
    if len(terms) == 2:
        nodes.append(mk("Add", terms, ["code"]))
        code = "code"
    inits.append(_const("all_given", [[float(2**k - 1)]], np.float32))
    nodes += [
        mk("Sub", ["all_given", code], ["pattern_f"]),  # small whole numbers: exact in float32
        mk("Cast", ["pattern_f"], ["pattern"], to=TensorProto.INT64),
    ]
    return nodes, "pattern"


def _grouped(patterns: int, pattern: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> list[str]:
    """Nodes grouping the rows of ``X`` by pattern (a counting sort, stable): ``position`` [n] is each row's place
    in the grouped order; returns the names of the per-pattern slices of the grouped rows."""
    mk = helper.make_node
    inits += [
        _const("pattern_ids", [list(range(patterns))], np.int64),
        _const("scalar_axis0", 0, np.int64),
        _const("scalar_one", 1, np.int64),
        _const("one", [1], np.int64),
    ]
    nodes += [
        mk("Equal", [pattern, "pattern_ids"], ["hits"]),
        mk("Cast", ["hits"], ["hits_i"], to=TensorProto.INT64),  # [n, P] one-hot
        mk("CumSum", ["hits_i", "scalar_axis0"], ["seen"]),  # [n, P]: rows of each pattern up to this one
        mk("ReduceSum", ["hits_i", "axis0"], ["counts"], keepdims=0),  # [P]
        mk("CumSum", ["counts", "scalar_axis0"], ["starts"], exclusive=1),  # [P]: a pattern's first grouped row
        mk("GatherElements", ["seen", pattern], ["rank"], axis=1),  # [n, 1]: 1-based place among its pattern's rows
        mk("Reshape", ["rank", "flat"], ["rank_1d"]),
        mk("Reshape", [pattern, "flat"], ["pattern_1d"]),
        mk("Gather", ["starts", "pattern_1d"], ["first"]),
        mk("Add", ["first", "rank_1d"], ["position_1"]),
        mk("Sub", ["position_1", "one"], ["position"]),  # [n]
        mk("Shape", ["position"], ["n_1d"]),
        mk("Reshape", ["n_1d", "scalar_shape"], ["n"]),
        mk("Range", ["scalar_zero", "n", "scalar_one"], ["rows"]),
        mk("Unsqueeze", ["position", "axis1"], ["position_2d"]),
        mk("ScatterND", ["rows", "position_2d", "rows"], ["order"]),  # order[position[i]] = i
        mk("Gather", ["X", "order"], ["grouped"], axis=0),
        mk("Split", ["grouped", "counts"], [f"rows_{i}" for i in range(patterns)], axis=0),
    ]
    inits += [_const("scalar_shape", np.zeros(0), np.int64), _const("scalar_zero", 0, np.int64)]
    return [f"rows_{i}" for i in range(patterns)]


def _answer(fitted: PerPattern, raw: str, pattern: str, inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Nodes from the trees' answer ``raw`` [n, 1] to ``prediction``: the row's base times exp(raw) with the
    log link, else raw itself."""
    mk = helper.make_node
    if not fitted.log_link:
        return [mk("Identity", [raw], [OUTPUT])]
    weights, bias = fitted.base_table()
    inits += [_const("base_weights", weights, np.float32), _const("base_bias", bias, np.float32)]
    inits += [_const("prop_index", fitted.proportional, np.int64)]
    return [
        mk("Gather", ["X", "prop_index"], ["prop"], axis=1),
        mk("IsNaN", ["prop"], ["prop_nan"]),
        mk("Where", ["prop_nan", "zero_f", "prop"], ["prop_filled"]),
        mk("MatMul", ["prop_filled", "base_weights"], ["base_all_w"]),
        mk("Add", ["base_all_w", "base_bias"], ["base_all"]),
        mk("GatherElements", ["base_all", pattern], ["base"], axis=1),
        mk("Exp", [raw], ["ratio"]),
        mk("Mul", ["base", "ratio"], [OUTPUT]),
    ]


def details(fitted: PerPattern, proportional_to: Sequence[str]) -> dict[str, Any]:
    """What the manifest's ``metrics.model`` says about the submodels."""
    return {
        "params": fitted.params,
        "early_stopping": "validation split, per pattern",
        "patterns": {
            m.key or "all": {
                "rows": m.rows,
                "rounds": m.rounds,
                **({"base_weights": dict(zip(proportional_to, m.weights, strict=True))} if proportional_to else {}),
            }
            for m in fitted.models
        },
        **({"proportional_to": list(proportional_to), "link": "log"} if proportional_to else {}),
    }
