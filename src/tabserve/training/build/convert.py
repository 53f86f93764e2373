"""ONNX graphs made servable: any graph's inputs fed from the server's one float matrix, its output chosen, and a
classifier's temperature folded in.

The server hands every graph one float32 tensor ``[n, k]`` built by the manifest's ``ColumnEncoder``. A graph
with one input per column (what skl2onnx makes of a pipeline on a DataFrame) gets an adapter in front: each of
its inputs is a ``Slice`` of the matrix, ``Cast`` to the input's type; a string input is an ordinal code turned
back into the spelling the model was fitted on by a ``Gather`` from a constant table (code −1, unknown or
missing, gives the table's first entry). Only standard ONNX operators are added, so no domain version changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tabserve.errors import BuildError

MATRIX_INPUT = "tabserve_input"
PROBABILITIES = "tabserve_probabilities"
MIN_OPSET = 13
NUMERIC_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32}


@dataclass(frozen=True, slots=True)
class GraphTensor:
    name: str
    elem_type: int
    shape: tuple[int | str | None, ...]

    @property
    def type_name(self) -> str:
        return str(TensorProto.DataType.Name(self.elem_type)).lower()


@dataclass(frozen=True, slots=True)
class InputSource:
    """Graph input ``name`` is column ``column`` of the matrix; ``decode`` (strings) maps code + 1 to a spelling."""

    name: str
    column: int
    decode: tuple[str, ...] | None = None


def _tensors(values: Sequence[onnx.ValueInfoProto], initializers: set[str]) -> list[GraphTensor]:
    out: list[GraphTensor] = []
    for value in values:
        if value.name in initializers:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            out.append(GraphTensor(value.name, -1, ()))
            continue
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim
        )
        out.append(GraphTensor(value.name, value.type.tensor_type.elem_type, dims))
    return out


def graph_inputs(model: onnx.ModelProto) -> list[GraphTensor]:
    return _tensors(model.graph.input, {init.name for init in model.graph.initializer})


def graph_outputs(model: onnx.ModelProto) -> list[GraphTensor]:
    return _tensors(model.graph.output, set())


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise BuildError("the ONNX model imports no default-domain opset")


def choose_output(model: onnx.ModelProto, task: str, classes: int) -> str:
    """The output the server reads: a float tensor [n] / [n, 1] (regression) or [n, classes] (probabilities)."""
    tensors = [t for t in graph_outputs(model) if t.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE)]
    if task == "regression":
        for t in tensors:
            if len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] in (1, None, "")):
                return t.name
    else:
        fitting = [t for t in tensors if len(t.shape) == 2 and t.shape[1] in (classes, None, "")]
        named = [t for t in fitting if "prob" in t.name.lower()]
        if named or fitting:
            return (named or fitting)[0].name
    shown = ", ".join(
        f"{t.name} ({t.type_name if t.elem_type >= 0 else 'not a tensor'}, {list(t.shape)})"
        for t in graph_outputs(model)
    )
    wanted = (
        "a float tensor [n] or [n, 1]" if task == "regression" else f"a float tensor [n, {classes}] of probabilities"
    )
    hint = "" if task == "regression" else " (a classifier converted with ZipMap gives maps: convert with zipmap=False)"
    raise BuildError(f"the ONNX model has no output usable for {task}: wanted {wanted}; it has {shown}{hint}")


def _const(name: str, values: Sequence[int] | Sequence[float], dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name=name)


def adapt_to_matrix(model: onnx.ModelProto, sources: Sequence[InputSource], width: int) -> onnx.ModelProto:
    """A copy of ``model`` whose only input is the float matrix ``[n, width]`` (named ``MATRIX_INPUT``)."""
    if default_opset(model) < MIN_OPSET:
        raise BuildError(
            f"the ONNX model uses opset {default_opset(model)}; at least {MIN_OPSET} is needed to adapt it"
        )
    by_name = {t.name: t for t in graph_inputs(model)}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [_const("tabserve_axis1", [1], np.int64)]
    for source in sources:
        target = by_name[source.name]
        j = source.column
        inits += [_const(f"tabserve_start_{j}", [j], np.int64), _const(f"tabserve_end_{j}", [j + 1], np.int64)]
        sliced = f"tabserve_col_{j}"
        nodes.append(
            helper.make_node(
                "Slice", [MATRIX_INPUT, f"tabserve_start_{j}", f"tabserve_end_{j}", "tabserve_axis1"], [sliced]
            )
        )
        produced = sliced
        if source.decode is not None:
            table = f"tabserve_spellings_{j}"
            inits.append(numpy_helper.from_array(np.asarray(source.decode, dtype=object), name=table))
            inits += [
                _const(f"tabserve_one_{j}", [1.0], np.float32),
                _const(f"tabserve_zero_{j}", [0.0], np.float32),
                _const(f"tabserve_top_{j}", [float(len(source.decode) - 1)], np.float32),
            ]
            nodes += [
                helper.make_node("Add", [sliced, f"tabserve_one_{j}"], [f"{sliced}_shift"]),
                helper.make_node("Max", [f"{sliced}_shift", f"tabserve_zero_{j}"], [f"{sliced}_low"]),
                helper.make_node("Min", [f"{sliced}_low", f"tabserve_top_{j}"], [f"{sliced}_clip"]),
                helper.make_node("Cast", [f"{sliced}_clip"], [f"{sliced}_index"], to=TensorProto.INT64),
                helper.make_node("Gather", [table, f"{sliced}_index"], [f"{sliced}_text"]),
            ]
            produced = f"{sliced}_text"
        elif target.elem_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [sliced], [f"{sliced}_cast"], to=target.elem_type))
            produced = f"{sliced}_cast"
        if len(target.shape) == 1:
            nodes.append(helper.make_node("Squeeze", [produced, "tabserve_axis1"], [source.name]))
        else:
            nodes.append(helper.make_node("Identity", [produced], [source.name]))
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(MATRIX_INPUT, TensorProto.FLOAT, ["n", width])])
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *original])
    graph.initializer.extend(inits)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(graph)
    onnx.checker.check_model(out)
    return out


def cast_matrix_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a one-matrix-input graph fed from the float matrix ``MATRIX_INPUT`` (cast to the input's type)."""
    (only,) = graph_inputs(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.input[:]
    out.graph.input.extend([helper.make_tensor_value_info(MATRIX_INPUT, TensorProto.FLOAT, list(only.shape))])
    if only.elem_type == TensorProto.FLOAT:
        first = helper.make_node("Identity", [MATRIX_INPUT], [only.name])
    else:
        first = helper.make_node("Cast", [MATRIX_INPUT], [only.name], to=only.elem_type)
    nodes = [first, *out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def keep_output(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """A copy with ``output`` as its only graph output (ZipMap and label outputs dropped)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [o for o in out.graph.output if o.name == output]
    del out.graph.output[:]
    out.graph.output.extend(kept)
    return out


def with_temperature(model: onnx.ModelProto, output: str, temperature: float) -> tuple[onnx.ModelProto, str]:
    """Append ``softmax(log(p) / T)`` after the probabilities ``output``; the new output is ``PROBABILITIES``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.initializer.extend(
        [_const("tabserve_floor", [1e-12], np.float32), _const("tabserve_inv_t", [1.0 / temperature], np.float32)]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", [output], ["tabserve_p"], to=TensorProto.FLOAT),
            helper.make_node("Max", ["tabserve_p", "tabserve_floor"], ["tabserve_p_floor"]),
            helper.make_node("Log", ["tabserve_p_floor"], ["tabserve_logp"]),
            helper.make_node("Mul", ["tabserve_logp", "tabserve_inv_t"], ["tabserve_scaled"]),
            helper.make_node("Softmax", ["tabserve_scaled"], [PROBABILITIES], axis=-1),
        ]
    )
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["n", None])])
    onnx.checker.check_model(out)
    return out, PROBABILITIES


def lightgbm_thresholds(booster: object) -> list[float]:
    """Every numerical split threshold (float64) of a LightGBM booster, from its JSON dump."""
    dump: dict[str, object] = booster.dump_model()  # type: ignore[attr-defined]
    found: list[float] = []
    stack: list[object] = [tree["tree_structure"] for tree in dump["tree_info"]]  # type: ignore[attr-defined]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and "split_index" in node:
            if node.get("decision_type") == "<=":
                found.append(float(node["threshold"]))
            stack += [node["left_child"], node["right_child"]]
    return found


def round_thresholds_down(model: onnx.ModelProto, thresholds: Sequence[float]) -> int:
    """Make a converted LightGBM graph split float32 inputs exactly as LightGBM does; returns the nodes changed.

    LightGBM sends ``x`` left when ``x <= t`` with ``t`` a float64; the converter stores ``t`` rounded to the nearest
    float32, which can lie above ``t``, so an ``x`` equal to that float32 goes left in ONNX and right in LightGBM.
    For float32 inputs ``x <= t`` equals ``x <= t↓`` (``t`` rounded down to float32): every stored threshold that
    only ever stands for thresholds below it is moved one float32 step down."""
    rounded_up: dict[float, set[bool]] = {}
    with np.errstate(over="ignore"):  # a threshold beyond float32's range is stored as ±inf, as the converter does
        for t in thresholds:
            stored = float(np.float32(t))
            rounded_up.setdefault(stored, set()).add(stored > t)
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("TreeEnsembleRegressor", "TreeEnsembleClassifier"):
            continue
        attributes = {a.name: a for a in node.attribute}
        values, modes = attributes.get("nodes_values"), attributes.get("nodes_modes")
        if values is None or modes is None:
            continue
        for i, mode in enumerate(modes.strings):
            if mode == b"BRANCH_LEQ" and rounded_up.get(float(np.float32(values.floats[i]))) == {True}:
                values.floats[i] = float(np.nextafter(np.float32(values.floats[i]), np.float32(-np.inf)))
                changed += 1
    return changed
