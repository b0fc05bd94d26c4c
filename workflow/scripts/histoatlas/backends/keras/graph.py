"""Questions about a Keras model's layer graph, answered without importing Keras.

Used by the backend's model and loader: which layer's output is where in the graph, what a
model's last layer applies, whether an object is a Keras model at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from histoatlas.errors import LayerError


def final_activation(model) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` if a graph model's last layer applies it, else None."""
    if not is_graph(model):
        return None
    last = model.layers[-1]
    if has_class(last, "Softmax"):
        return "softmax"
    name = getattr(getattr(last, "activation", None), "__name__", None)
    return name if name in ("softmax", "sigmoid") else None


def output_width(model) -> int | None:
    """Width of a Keras model's (first) output, flattened; None when not static."""
    try:
        shape = tuple(model.outputs[0].shape)[1:]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return int(np.prod(shape)) if shape and all(shape) else None


def node_output(model, layer):
    """The output of ``layer`` where ``model``'s graph calls it.

    ``layer.output`` is not that for a nested model (it is the nested model's own output
    tensor, disconnected from the outer inputs), so the call is looked up among the
    model's nodes.

    Raises
    ------
    LayerError
        The layer is called more than once in the graph (shared), so it has no one output.
    """
    graph = getattr(model, "_functional", None) or model  # Keras 3 Sequential wraps one
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not by_depth:
        return layer.output
    nodes = []
    for depth_nodes in by_depth.values():
        for node in depth_nodes:
            owner = getattr(node, "operation", None)  # Keras 3
            if owner is None:
                owner = getattr(node, "layer", None)  # tf-keras
            if owner is layer:
                nodes.append(node)
    if len(nodes) > 1:
        raise LayerError(
            f"layer {layer.name!r} is called {len(nodes)} times in the model (a shared layer), "
            "so it has no single output to read; ask for a layer after it"
        )
    if not nodes:
        return layer.output
    outputs = nodes[0].outputs
    while isinstance(outputs, list | tuple):
        outputs = outputs[0]
    return outputs


def is_graph(model) -> bool:
    """Whether ``model`` is a functional or Sequential Keras model (layers as a graph)."""
    if not hasattr(model, "layers"):
        return False
    flag = getattr(model, "_is_graph_network", None)  # tf-keras
    if flag is not None:
        return bool(flag)
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def is_tf_keras(obj) -> bool:
    return type(obj).__module__.startswith("tf_keras")


def has_class(obj, name: str) -> bool:
    """Whether ``obj``'s class or a base class is called ``name`` (no Keras import)."""
    return any(cls.__name__ == name for cls in type(obj).__mro__)


def is_keras_model(obj) -> bool:
    """Whether ``obj`` is a Keras 3 or tf-keras model (checked without importing either)."""
    return any(
        cls.__name__ == "Model" and cls.__module__.split(".")[0] in ("keras", "tf_keras")
        for cls in type(obj).__mro__
    )


def directory_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 over every file of a directory: relative path and bytes, in name order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()
