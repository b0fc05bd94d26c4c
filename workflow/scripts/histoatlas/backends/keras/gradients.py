"""``tf.GradientTape`` gradients of a Keras model for PAIR's ``saliency.core``:
:class:`KerasGradients` (see :class:`histoatlas.backends.base.GradientFunction`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from histoatlas.backends.gradients import GradientRequest, check_class_idx
from histoatlas.backends.keras.graph import has_class, output_width
from histoatlas.errors import LayerError, ModelError
from histoatlas.runtime import import_tensorflow


class KerasGradients:
    """Call model function for a Keras model taking channels-last ``(B, H, W, C)`` input.

    Gradients come from ``tf.GradientTape``; Grad-CAM reads its layer through a
    sub-model whose outputs are that layer and the final output. Each combination of
    requested keys, layer, class and activation is compiled once with ``tf.function``.

    Parameters
    ----------
    model : KerasModel
        What :func:`histoatlas.load_model` returns for a Keras file (a bare Keras model:
        :func:`histoatlas.backends.as_loaded_model`).
    class_names : list of str, optional
        Output names (default: the loaded model's).
    """

    def __init__(self, model, *, class_names: list[str] | None = None) -> None:
        self.loaded = model
        self.model = model.model
        self.class_names = list(class_names or model.class_names)
        self._default_layer: str | None = None
        self._fns: dict[tuple, Any] = {}
        self._submodels: dict[str, Any] = {}

    def num_classes(self) -> int | None:
        """Number of classes: named by the model, else the width of its output."""
        return len(self.class_names) or output_width(self.model)

    def __call__(
        self, x_batch: np.ndarray, call_model_args: dict | None = None, expected_keys=None
    ) -> dict[str, np.ndarray]:
        """The call-model function (see :class:`~histoatlas.backends.base.GradientFunction`)
        on a channels-last batch, through one compiled function per request."""
        tf = import_tensorflow()
        request = GradientRequest.parse(call_model_args, expected_keys)
        x_batch = np.asarray(x_batch, dtype=np.float32)
        layer = self.resolve_layer(request.layer, x_batch[0]) if request.want_conv else None
        n_out = self.num_classes()
        if n_out is not None:
            check_class_idx(request.class_idx, n_out)
        fn = self._function(request.want_input, layer, request.class_idx, request.activation)
        with tf.device(self.loaded.tf_device):
            target, input_grads, conv, conv_grads = fn(tf.constant(x_batch))
        return request.result(
            input_grads.numpy() if request.want_input else None,
            conv.numpy() if request.want_conv else None,
            conv_grads.numpy() if request.want_conv else None,
            target.numpy(),
        )

    def _function(self, want_input: bool, layer: str | None, class_idx: int, activation):
        """The compiled ``x -> (target, input grads, layer values, layer grads)``."""
        key = (want_input, layer, class_idx, activation)
        if key in self._fns:
            return self._fns[key]
        tf = import_tensorflow()
        net = self._submodel(layer) if layer is not None else None
        model = self.model
        empty = tf.zeros((0,))

        # autograph off: the Python branches inside depend on Python values only
        @tf.function(reduce_retracing=True, autograph=False)
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                if net is not None:
                    conv, output = net(x, training=False)
                else:
                    conv, output = None, model(x, training=False)
                if isinstance(output, list | tuple):
                    output = output[0]
                output = tf.reshape(tf.cast(output, tf.float32), (tf.shape(x)[0], -1))
                if activation == "softmax":
                    output = tf.nn.softmax(output, axis=1)
                elif activation == "sigmoid":
                    output = tf.sigmoid(output)
                target = output[:, class_idx]
            sources = ([x] if want_input else []) + ([conv] if conv is not None else [])
            grads = tape.gradient(target, sources) if sources else []
            return (
                target,
                grads[0] if want_input else empty,
                conv if conv is not None else empty,
                grads[-1] if conv is not None else empty,
            )

        self._fns[key] = run
        return run

    def _submodel(self, layer: str):
        if layer not in self._submodels:
            tensor = self.loaded.layer_output(layer)
            self._submodels[layer] = self.loaded.submodel([tensor, self.model.outputs[0]])
        return self._submodels[layer]

    def resolve_layer(self, layer: str | None, x_value: np.ndarray) -> str:
        """Check ``layer`` or find the default Grad-CAM layer (see ``GradientFunction``).

        The default is the last layer, in graph order, whose output is a feature map
        ``(B, h, w, K)`` with ``h, w > 1``: the output of the last convolutional stage
        (after its activation, as Grad-CAM wants it); a 1x1 convolution on a globally pooled
        map, which some networks use as their head, is passed over. ``x_value`` is run once
        when static shapes leave h, w unknown. ModelError for a subclassed model (no layer
        graph) or one without a spatial map; LayerError for a name that is no layer, or
        whose output is no feature map.
        """
        if not self.loaded.supports_layers:
            raise ModelError(
                f"Grad-CAM needs a layer's feature maps, but {self.loaded.path} is a "
                "subclassed Keras model (no layer graph): save it as a functional or "
                "Sequential model, or use a gradient method such as integrated_gradients"
            )
        if layer is not None:
            rank = len(self.loaded.layer_output(layer).shape)  # LayerError if unknown
            if rank != 4:
                raise LayerError(
                    f"Grad-CAM needs a feature map (B, h, w, K), but layer {layer!r} "
                    f"returns a rank-{rank} output; choose a convolutional layer"
                )
            return layer
        if self._default_layer is None:
            self._default_layer = self._find_feature_layer(x_value)
        return self._default_layer

    def _find_feature_layer(self, x_value: np.ndarray) -> str:
        candidates = []
        for lay in self.model.layers:
            try:
                shape = tuple(self.loaded.layer_output(lay.name).shape)
            except (LayerError, AttributeError, ValueError, RuntimeError):  # shared layer
                continue
            if len(shape) == 4 and not has_class(lay, "InputLayer"):
                candidates.append((lay.name, shape))
        if any(None in shape[1:3] for _, shape in candidates):
            outputs = [self.loaded.layer_output(name) for name, _ in candidates]
            probe = self.loaded.submodel(outputs)(np.asarray(x_value, np.float32)[None])
            probe = probe if isinstance(probe, list | tuple) else [probe]
            shapes = [tuple(v.shape) for v in probe]
            candidates = [(name, s) for (name, _), s in zip(candidates, shapes, strict=True)]
        for name, shape in reversed(candidates):
            if shape[1] > 1 and shape[2] > 1:
                return name
        raise ModelError(
            f"no layer of {self.loaded.path} returns a spatial feature map (B, h, w, K) with "
            "h, w > 1, so Grad-CAM has no convolutional layer to use; pass layer=<name>"
        )
