"""A converted graph's nodes and initializers renamed with a prefix, to be placed inside a bigger graph."""

from __future__ import annotations

import onnx


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
