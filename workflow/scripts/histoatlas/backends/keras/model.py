"""The Keras backend's :class:`~histoatlas.backends.base.LoadedModel`: :class:`KerasModel`.

Every layer of a functional or Sequential model is reachable: activations come from one
sub-model whose outputs are the requested layers plus the final output, compiled with
``tf.function``. ``postconv`` is the input of the last ``Dense`` layer (or of a final 1x1
convolution). TensorFlow comes in through :func:`histoatlas.runtime.import_tensorflow` only,
and only when a Keras model is used.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from histoatlas.backends.base import (
    POSTCONV,
    LoadedModel,
    postconv_undefined_message,
    unknown_layer_message,
)
from histoatlas.backends.keras.gradients import KerasGradients
from histoatlas.backends.keras.graph import (
    directory_sha256,
    final_activation,
    has_class,
    is_graph,
    is_tf_keras,
    node_output,
)
from histoatlas.errors import ConfigError, LayerError, ModelError
from histoatlas.runtime import import_tensorflow


def keras3():
    """Keras 3 (``keras``) on the TensorFlow backend.

    Raises
    ------
    ModelError
        If Keras 3 was imported before with another backend (``KERAS_BACKEND``).
    """
    import_tensorflow()
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ModelError(
            f"Keras 3 runs on the {backend!r} backend here (KERAS_BACKEND); histoatlas needs "
            "its TensorFlow backend: set KERAS_BACKEND=tensorflow before importing keras"
        )
    return keras


def tf_keras():
    """Keras 2 (the ``tf-keras`` package), for legacy ``.h5`` files and SavedModels."""
    import_tensorflow()
    try:
        import tf_keras as module
    except ImportError:
        raise ModelError(
            "legacy Keras 2 models (.h5, SavedModel) need the tf-keras package: "
            "pip install 'tf-keras==2.21.*'"
        ) from None
    return module


class KerasModel(LoadedModel):
    """A :class:`LoadedModel` whose network is a Keras model (TensorFlow backend).

    ``kind`` is ``"keras"`` (a Keras 3 ``.keras`` file), ``"h5"`` (HDF5) or
    ``"savedmodel"``; ``keras_version`` says which Keras runs it (``keras.__version__``
    or ``tf_keras.__version__``). ``device`` uses torch's names (``"cuda"``,
    ``"cuda:1"``, ``"cpu"``) for the TensorFlow device it maps to.
    """

    keras_version: str = ""

    @property
    def supports_layers(self) -> bool:
        """True for functional and Sequential models (their layers are a graph)."""
        return is_graph(self.model)

    @property
    def tf_device(self) -> str:
        """The TensorFlow device name, e.g. ``"/GPU:0"`` or ``"/CPU:0"``."""
        kind, _, index = self.device.partition(":")
        return f"/GPU:{index or 0}" if kind == "cuda" else "/CPU:0"

    def layer_names(self) -> list[str]:
        """Names of the model's layers, in graph order (nested models by their own name).

        Empty for a subclassed model, whose layers have no graph to read them from.
        """
        if not self.supports_layers:
            return []
        return [layer.name for layer in self.model.layers]

    def to(self, device: str | None) -> KerasModel:
        """Run on ``device`` (None: the first GPU, else the CPU); returns self."""
        self.device = resolve_device(device)
        self._fns = {}
        return self

    def to_tensor(self, images):
        """Turn a batch into the network's input on its device.

        Parameters
        ----------
        images : ndarray or tf.Tensor
            uint8 ``(B, H, W, 3)`` (or one ``(H, W, 3)`` tile) raw RGB, normalised on the
            device; or floating ``(B, H, W, 3)`` taken as already preprocessed.

        Returns
        -------
        tf.Tensor, shape (B, H, W, 3), dtype float32
        """
        tf = import_tensorflow()
        if isinstance(images, tf.Tensor):
            x, is_uint8, is_float = images, images.dtype == tf.uint8, images.dtype.is_floating
        else:
            x = np.asarray(images)
            is_uint8, is_float = x.dtype == np.uint8, x.dtype.kind == "f"
        if is_uint8:
            if x.ndim == 3:
                x = x[None]
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"uint8 tiles must be (B, H, W, 3), got {tuple(x.shape)}")
            mean = np.asarray(self.params.mean, np.float32) * 255
            std = np.asarray(self.params.std, np.float32) * 255
            with tf.device(self.tf_device):
                return (tf.cast(x, tf.float32) - mean) / std
        if not is_float:
            raise ValueError(f"tiles must be uint8 or float, got {x.dtype}")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"a float batch is taken as preprocessed (B, H, W, 3), got {tuple(x.shape)}"
            )
        with tf.device(self.tf_device):
            return tf.cast(tf.convert_to_tensor(x), tf.float32)

    def sha256(self) -> str:
        """SHA-256 of the weights file, or of every file of a SavedModel directory."""
        if self._sha256 is None:
            path = Path(self.weights_path)
            if path.is_dir():
                self._sha256 = directory_sha256(path)
            else:
                self._sha256 = super().sha256()
        return self._sha256

    # -- layers ------------------------------------------------------------------------

    def layer_output(self, name: str):
        """The symbolic output of layer ``name``, or of ``postconv``.

        Raises
        ------
        LayerError
            The model is subclassed (no graph), ``name`` is not one of its layers (the
            message lists them), or ``postconv`` is asked of a model without ``Dense``.
        """
        if not self.supports_layers:
            raise LayerError(
                f"layer {name!r}: {self.path} is a subclassed Keras model, whose layers have "
                "no graph to read them from; it gives its final output only (layer "
                "'output'). Save it as a functional or Sequential model to read its layers"
            )
        if name == POSTCONV:
            return self.classifier().input
        names = self.layer_names()
        if name not in names:
            message = unknown_layer_message(name, names)
            nested = [layer.name for layer in self.model.layers if is_graph(layer)]
            if nested:
                message += (
                    f". Layers inside nested models ({', '.join(nested)}) cannot be read "
                    "one by one; ask for the nested model's name to get its output"
                )
            raise LayerError(message)
        return node_output(self.model, self.model.get_layer(name))

    def classifier(self):
        """The last ``Dense`` layer, else the last convolution when it is 1x1 (a
        convolutional classifier head); its input is ``postconv``.

        Raises
        ------
        LayerError
            The model has neither at its top level.
        """
        dense = [layer for layer in self.model.layers if has_class(layer, "Dense")]
        if dense:
            return dense[-1]
        convs = [layer for layer in self.model.layers if has_class(layer, "Conv2D")]
        if convs and tuple(convs[-1].kernel_size) == (1, 1):
            return convs[-1]
        raise LayerError(
            postconv_undefined_message(self.path, self.layer_names(), "no Dense layer")
        )

    def submodel(self, outputs: list):
        """A model from the network's input to ``outputs`` (symbolic tensors).

        Built with the same Keras (3 or tf-keras) as the network; shares its weights.
        """
        module = tf_keras() if is_tf_keras(self.model) else keras3()
        return module.Model(inputs=self.model.inputs, outputs=list(outputs))

    def feature_function(self, layers, *, pooling: str | None, precision: str = "float32"):
        """Pooled activations of ``layers`` and the final output, from one compiled sub-model.

        Parameters
        ----------
        layers : sequence of str
            Layer names, ``postconv`` or ``output`` (the final output).
        pooling : {"avg", "max", None}
            As :func:`pool`, applied inside the function (full maps never leave it).
        precision : {"float32"}
            Keras models run in float32 only.

        Returns
        -------
        SubmodelForward
            ``f(x) -> (features (B, F), final (B, C))``, numpy float32.
        """
        self.check_precision(precision)
        return SubmodelForward(self._compiled(list(layers), pooling))

    def _compiled(self, layers: list[str], pooling: str | None):
        """``x -> (pooled parts, final)`` compiled once per (layers, pooling)."""
        key = (tuple(layers), pooling)
        fns = self.__dict__.setdefault("_fns", {})
        if key in fns:
            return fns[key]
        tf = import_tensorflow()
        wanted = [layer for layer in layers if layer != "output"]
        tensors = [self.layer_output(layer) for layer in wanted]
        net = self.submodel([*tensors, *self.model.outputs]) if wanted else self.model

        # autograph off: the Python branches inside depend on static shapes only
        @tf.function(reduce_retracing=True, autograph=False)
        def run(x):
            outs = net(x, training=False)
            outs = list(outs) if isinstance(outs, list | tuple) else [outs]
            final = tf.reshape(tf.cast(outs[len(wanted)], tf.float32), (tf.shape(x)[0], -1))
            by_name = dict(zip(wanted, outs[: len(wanted)], strict=True))
            parts = [final if layer == "output" else by_name[layer] for layer in layers]
            return [pool(p, pooling) for p in parts], final

        device = self.tf_device

        def on_device(x):
            with tf.device(device):
                return run(x)

        fns[key] = on_device
        return on_device

    def final_activation(self) -> str | None:
        """``"softmax"`` or ``"sigmoid"`` if the network applies it itself, else None."""
        return final_activation(self.model)

    def activate(self, final, output: str) -> np.ndarray:
        """Softmax / sigmoid / identity over ``(B, C)``, computed in float64 on the host."""
        x = np.asarray(final, dtype=np.float64)
        if output == "softmax":
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
        elif output == "sigmoid":
            x = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
        return x.astype(np.float32)

    def to_host(self, array) -> np.ndarray:
        """A tf tensor (or numpy array) as a numpy array."""
        return array if isinstance(array, np.ndarray) else array.numpy()

    def gradients(self):
        """``tf.GradientTape`` gradients (:class:`KerasGradients`)."""

        return KerasGradients(self)


class SubmodelForward:
    """A compiled Keras sub-model as :class:`~histoatlas.backends.base.FeatureFunction`:
    ``x -> (features (B, F), final output (B, C))``, numpy float32."""

    def __init__(self, run) -> None:
        self.run = run
        self.widths: list[int] | None = None

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        parts, final = self.run(x)
        parts = [p.numpy() for p in parts]
        if self.widths is None:
            self.widths = [int(p.shape[1]) for p in parts]
        return np.concatenate(parts, axis=1), final.numpy()


def pool(t, pooling: str | None):
    """Reduce one channels-last layer output to ``(B, n)`` float32.

    4-D maps ``(B, H, W, C)`` are averaged or maxed over H, W; 3-D token outputs
    ``(B, T, D)`` over T; None flattens in Keras's own (H, W, C) order. 2-D outputs pass
    through.
    """
    tf = import_tensorflow()
    t = tf.cast(t, tf.float32)
    if t.shape.rank in (3, 4) and pooling is not None:
        axes = [1, 2] if t.shape.rank == 4 else [1]
        t = tf.reduce_mean(t, axis=axes) if pooling == "avg" else tf.reduce_max(t, axis=axes)
    return tf.reshape(t, (tf.shape(t)[0], -1))


def resolve_device(device: str | None = None) -> str:
    """Pick the device: ``device`` if given, else the first GPU, else the CPU.

    Accepts torch's names (``cuda``, ``cuda:1``, ``cpu``) and TensorFlow's (``gpu``,
    ``/GPU:1``, ``/device:CPU:0``); returns torch's.

    Raises
    ------
    ConfigError
        If ``device`` is no device name, or names a GPU that TensorFlow does not see.
    """
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if device is None:
        return "cuda" if gpus else "cpu"
    found = re.fullmatch(r"(?:/(?:device:)?)?(cuda|gpu|cpu)(?::(\d+))?", str(device).lower())
    if found is None:
        raise ConfigError(
            f"device {device!r} is not a device name TensorFlow can use (cpu, cuda, cuda:N, "
            "gpu:N); MPS needs the tensorflow-metal plugin, which shows as a GPU"
        )
    kind, index = found.group(1), int(found.group(2) or 0)
    if kind == "cpu":
        return "cpu"
    if index >= len(gpus):
        raise ConfigError(
            f"device {device!r} requested, but TensorFlow sees {len(gpus)} GPU(s); for CUDA "
            "install tensorflow[and-cuda] (pip install 'tensorflow[and-cuda]==2.21.*')"
        )
    return f"cuda:{index}" if index else "cuda"
