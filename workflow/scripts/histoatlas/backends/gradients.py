"""The gradient half of the backend interface: what PAIR's ``saliency.core`` asks of a
model (:class:`GradientFunction`), and one call of it parsed (:class:`GradientRequest`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from histoatlas.errors import ModelError

# Keys of saliency.core's call-model protocol, repeated so no backend imports saliency.
INPUT_OUTPUT_GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
CONVOLUTION_LAYER_VALUES = "CONVOLUTION_LAYER_VALUES"
CONVOLUTION_OUTPUT_GRADIENTS = "CONVOLUTION_OUTPUT_GRADIENTS"
OUTPUT_LAYER_VALUES = "OUTPUT_LAYER_VALUES"
# What the explained output of a saliency map goes through (None: the raw output).
ACTIVATIONS = (None, "softmax", "sigmoid")


@dataclass(frozen=True)
class GradientRequest:
    """One call of ``saliency.core``'s call-model function, parsed.

    Attributes
    ----------
    class_idx : int
        The output to explain.
    layer : str or None
        Grad-CAM's layer (None: the backend's default).
    activation : {None, "softmax", "sigmoid"}
        What the explained output goes through.
    want_input, want_conv, want_output : bool
        Whether input gradients, a layer's values and gradients, and the explained output
        are asked for.
    """

    class_idx: int
    layer: str | None
    activation: str | None
    want_input: bool
    want_conv: bool
    want_output: bool

    @classmethod
    def parse(cls, call_model_args: dict | None, expected_keys) -> GradientRequest:
        """From ``call_model_args`` (``class_idx``, ``layer``, ``activation``) and the keys."""
        args = dict(call_model_args or {})
        keys = list(expected_keys or [INPUT_OUTPUT_GRADIENTS])
        if args.get("activation") not in ACTIVATIONS:
            raise ModelError(f"activation {args.get('activation')!r} is not one of {ACTIVATIONS}")
        return cls(
            class_idx=args["class_idx"],
            layer=args.get("layer"),
            activation=args.get("activation"),
            want_input=INPUT_OUTPUT_GRADIENTS in keys,
            want_conv=CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys,
            want_output=OUTPUT_LAYER_VALUES in keys,
        )

    def result(self, input_grads, conv, conv_grads, target) -> dict[str, np.ndarray]:
        """The dict ``saliency.core`` expects, float32 channels-last numpy arrays."""
        out: dict[str, np.ndarray] = {}
        if self.want_input:
            out[INPUT_OUTPUT_GRADIENTS] = np.asarray(input_grads, dtype=np.float32)
        if self.want_conv:
            out[CONVOLUTION_OUTPUT_GRADIENTS] = np.asarray(conv_grads, dtype=np.float32)
            out[CONVOLUTION_LAYER_VALUES] = np.asarray(conv, dtype=np.float32)
        if self.want_output:
            out[OUTPUT_LAYER_VALUES] = np.asarray(target, dtype=np.float32)
        return out


class GradientFunction(Protocol):
    """The call-model function of ``saliency.core`` for one model (its gradients).

    ``f(x_batch, call_model_args, expected_keys) -> dict``: for a channels-last numpy batch,
    the input gradients, a layer's feature maps and their gradients, and the explained
    output, as the keys above name them. ``call_model_args``: ``class_idx`` (required),
    ``layer`` (Grad-CAM's; None picks one) and ``activation`` (one of :data:`ACTIVATIONS`).
    """

    class_names: list[str]

    def __call__(
        self, x_batch: np.ndarray, call_model_args: dict | None = None, expected_keys=None
    ) -> dict[str, np.ndarray]: ...

    def resolve_layer(self, layer: str | None, x_value: np.ndarray) -> str:
        """Check a Grad-CAM layer name, or find the default one for ``x_value``."""

    def num_classes(self) -> int | None:
        """Number of outputs, when known without running the network."""


def check_class_idx(class_idx: int, n_classes: int) -> None:
    """Raise ModelError unless ``0 <= class_idx < n_classes``."""
    if not 0 <= class_idx < n_classes:
        raise ModelError(
            f"class_idx {class_idx} is out of range: the model has {n_classes} output "
            f"class(es), so class_idx must be in 0..{n_classes - 1}"
        )
