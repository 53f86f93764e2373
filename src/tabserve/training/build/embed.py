"""Composed graphs: a converted LightGBM ensemble's nodes renamed to sit inside a bigger graph, and that graph
sealed as a checked model (the per-pattern graph and co2's both are built so)."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

from tabserve.errors import BuildError


def converted_lightgbm(booster: Any, width: int, opset: int, ml_opset: int) -> onnx.ModelProto:
    """The booster as onnxmltools converts it (input ``X`` [n, width] float32), refused above ``ml_opset``."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted: onnx.ModelProto = convert_lightgbm(
        booster, initial_types=[("X", FloatTensorType([None, width]))], target_opset=opset, zipmap=False
    )
    ml = {o.domain: o.version for o in converted.opset_import}.get("ai.onnx.ml")
    if ml is not None and ml > ml_opset:
        raise BuildError(f"the LightGBM converter emitted ai.onnx.ml opset {ml}, above {ml_opset}")
    return converted


def sealed(graph: onnx.GraphProto, opset: int, ml_opset: int, producer: str) -> onnx.ModelProto:
    """``graph`` as a model importing the default and ``ai.onnx.ml`` opsets, IR 8, fully checked."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ml_opset)],
        producer_name=producer,
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def embedded(
    graph: onnx.GraphProto, prefix: str, input_name: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """``graph``'s nodes reading ``input_name`` instead of its first input, every initializer and node output
    renamed ``prefix + name``: (nodes, initializers, name of its first output)."""
    rename = {t.name: prefix + t.name for t in graph.initializer}
    rename[graph.input[0].name] = input_name
    for node in graph.node:
        rename.update({name: prefix + name for name in node.output})
    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        new.ClearField("input")
        new.input.extend(rename.get(name, name) for name in node.input)
        new.ClearField("output")
        new.output.extend(rename[name] for name in node.output)
        nodes.append(new)
    initializers = []
    for init in graph.initializer:
        new_init = onnx.TensorProto()
        new_init.CopyFrom(init)
        new_init.name = rename[init.name]
        initializers.append(new_init)
    return nodes, initializers, rename[graph.output[0].name]
