"""Keras models on TensorFlow: Keras 3 ``.keras`` files and legacy Keras 2 models.

Which Keras reads a file is decided by the file, not by the user:

- ``.keras`` (a zip with ``metadata.json``): Keras 3 (``keras``), unless its metadata says
  Keras 2 wrote it (tf-keras can save that format too), then ``tf_keras``;
- ``.h5`` / ``.hdf5``: ``tf_keras`` (Keras 2 for TF 2.16+), which reads Keras 2.x files that
  Keras 3 refuses (e.g. the legacy ``dtype`` key in initializer configs), unless the file's
  ``keras_version`` attribute says Keras 3 wrote it;
- a TensorFlow SavedModel directory (``saved_model.pb``, as ``model.save(dir)`` wrote it
  in TF 2.x): ``tf_keras``.

Every layer of a functional or Sequential model is reachable: activations come from one
sub-model whose outputs are the requested layers plus the final output. ``postconv`` is
the input of the last ``Dense`` layer.

TensorFlow is imported only here, and only when a Keras model is used
(:func:`import_tensorflow`): it sets ``TF_CPP_MIN_LOG_LEVEL=2``, turns on GPU memory growth
(so TensorFlow does not take the whole GPU from torch in the same process) and, when torch
is already loaded, gives TensorFlow torch's CPU thread budget instead of a second full one.
It also loads Triton's library first: with TensorFlow 2.21 loaded, a later
``import triton`` (which ``torch._dynamo``, ``torchvision.ops`` and ``timm`` do) crashes the
process with a segmentation fault; in the other order both work (checked here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas.errors import ConfigError, LayerError, ModelError
from histoatlas.models.loaded import LoadedModel
from histoatlas.models.params import ModelParams

POSTCONV = "postconv"
_CONFIGURED = False
# layer classes whose Python code is stored in the file (run on load)
_CODE_LAYERS = ("Lambda",)


def import_tensorflow():
    """Import TensorFlow once, configured for running beside torch; returns the module.

    On the first call: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (warnings and errors
    only), ``KERAS_BACKEND`` to ``tensorflow``; every GPU gets memory growth (TensorFlow
    otherwise reserves all GPU memory at start); and when torch is already imported,
    TensorFlow's intra-op threads are set to ``torch.get_num_threads()`` and its
    inter-op threads to at most 2, so the two thread pools do not each claim every core.
    Where Triton is installed, its library is loaded before TensorFlow's (a later
    ``import triton`` would crash the process).

    Returns
    -------
    module
        ``tensorflow``.
    """
    global _CONFIGURED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" not in sys.modules:
        _load_triton_first()
    import tensorflow as tf

    if not _CONFIGURED:
        _CONFIGURED = True
        _configure(tf)
    return tf


def _load_triton_first() -> None:
    """Load Triton's native library before TensorFlow's (see the module notes).

    Importing ``triton`` after TensorFlow 2.21 segfaults (torch 2.14.1's triton, checked
    with ``import tensorflow; import triton``); loading ``triton._C.libtriton`` first
    (about 0.1 s) avoids it. Nothing happens where Triton is not installed.
    """
    import importlib.util

    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:  # a broken triton: torch does without it, so do we
        pass


def _configure(tf) -> None:
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # the GPU was initialised already
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = max(1, int(torch.get_num_threads()))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow's runtime started already
            pass


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
        return _is_graph(self.model)

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
        from histoatlas.features import unknown_layer_message

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
            nested = [layer.name for layer in self.model.layers if _is_graph(layer)]
            if nested:
                message += (
                    f". Layers inside nested models ({', '.join(nested)}) cannot be read "
                    "one by one; ask for the nested model's name to get its output"
                )
            raise LayerError(message)
        return _node_output(self.model, self.model.get_layer(name))

    def classifier(self):
        """The last ``Dense`` layer, else the last convolution when it is 1x1 (a
        convolutional classifier head); its input is ``postconv``.

        Raises
        ------
        LayerError
            The model has neither at its top level.
        """
        from histoatlas.features import postconv_undefined_message

        dense = [layer for layer in self.model.layers if _has_class(layer, "Dense")]
        if dense:
            return dense[-1]
        convs = [layer for layer in self.model.layers if _has_class(layer, "Conv2D")]
        if convs and tuple(convs[-1].kernel_size) == (1, 1):
            return convs[-1]
        raise LayerError(
            postconv_undefined_message(self.path, self.layer_names(), "no Dense layer")
        )

    def submodel(self, outputs: list):
        """A model from the network's input to ``outputs`` (symbolic tensors).

        Built with the same Keras (3 or tf-keras) as the network; shares its weights.
        """
        module = tf_keras() if _is_tf_keras(self.model) else keras3()
        return module.Model(inputs=self.model.inputs, outputs=list(outputs))

    def feature_function(self, layers: list[str], *, pooling: str | None):
        """A compiled function: preprocessed batch -> (pooled layer outputs, final output).

        Parameters
        ----------
        layers : list of str
            Layer names, ``postconv`` or ``output`` (the final output).
        pooling : {"avg", "max", None}
            As :func:`pool`, applied inside the function (full maps never leave it).

        Returns
        -------
        callable
            ``f(x) -> (parts, out)``: a list of ``(B, n_i)`` float32 tensors, one per
            layer, and the final output flattened to ``(B, C)``.
        """
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


def final_activation(model) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` if a graph model's last layer applies it, else None."""
    if not _is_graph(model):
        return None
    last = model.layers[-1]
    if _has_class(last, "Softmax"):
        return "softmax"
    name = getattr(getattr(last, "activation", None), "__name__", None)
    return name if name in ("softmax", "sigmoid") else None


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


def load_keras_model(
    path: str | os.PathLike,
    *,
    params: ModelParams,
    params_path: Path | None,
    device: str | None = None,
    trust_model_code: bool = False,
) -> KerasModel:
    """Load a Keras model: a ``.keras``/``.h5`` file, a SavedModel or a model directory.

    Parameters
    ----------
    path : str or PathLike
        A Keras file, a SavedModel directory, or a model directory whose ``params.json``
        says ``"backend": "tensorflow"`` and names the Keras file (or SavedModel folder)
        in ``weights``.
    params : ModelParams
        The ``params.json`` read (or the defaults for a bare file).
    params_path : Path or None
        Where ``params`` came from; None for a bare file, whose ``tile_px`` is then read
        from the model's input shape and ``output`` from its last layer.
    device : str, optional
        See :func:`resolve_device`.
    trust_model_code : bool
        Allow ``Lambda`` layers, whose Python code is stored in the file and runs on load.

    Returns
    -------
    KerasModel

    Raises
    ------
    ModelError
        If the file is missing, holds weights only, needs code that was not trusted, or
        Keras cannot read it (naming the file, the Keras that wrote it and the one
        installed).
    ConfigError
        If ``device`` is not available.
    """
    path = Path(path)
    file = path
    if path.is_dir() and params_path is not None:
        file = path / params.weights
        if not file.exists() and (path / "saved_model.pb").is_file():
            file = path  # a SavedModel directory with a params.json put into it
        elif not file.exists():
            raise ModelError(
                f"model directory {path}: the Keras model {params.weights!r} (params.json "
                "'weights') is not there; set 'weights' to the .keras/.h5 file or the "
                "SavedModel folder inside the directory"
            )
    model, version, kind = read_keras_file(file, trust_model_code=trust_model_code)
    # a params.json beside a Keras file may leave out "backend" (whose default is torch)
    params = dataclasses.replace(params, backend="tensorflow")
    if params_path is None:
        params = _infer_params(model, params, file)
    loaded = KerasModel(
        model=model,
        backend="tensorflow",
        params=params,
        path=path,
        device=resolve_device(device),
        kind=kind,
        weights_path=file,
        params_path=params_path,
    )
    loaded.keras_version = version
    if params_path is not None and params.output != "none":
        if loaded.final_activation() == params.output:
            warnings.warn(
                f"{path}: the network ends in {params.output} already, and params.json "
                f'\'output\' applies {params.output} again; set "output": "none"',
                stacklevel=2,
            )
    return loaded


def read_keras_file(file: Path, *, trust_model_code: bool = False) -> tuple[Any, str, str]:
    """Read a Keras model file with the Keras that can read it.

    Returns
    -------
    model : keras.Model or tf_keras.Model
    keras_version : str
        Version of the Keras that read it.
    kind : {"keras", "h5", "savedmodel"}

    Raises
    ------
    ModelError
        See :func:`load_keras_model`.
    """
    file = Path(file)
    if file.is_dir():
        if not (file / "saved_model.pb").is_file():
            raise ModelError(
                f"{file} is a directory but neither a SavedModel (no saved_model.pb) nor a "
                "model directory with params.json"
            )
        module = tf_keras()
        model = _call_loader(module, file, "SavedModel", written_by=None)
        return model, module.__version__, "savedmodel"
    suffix = file.suffix.lower()
    if suffix == ".keras":
        written_by = _keras_zip_version(file)
        legacy = written_by is not None and written_by.startswith("2.")
        module = tf_keras() if legacy else keras3()
        model = _call_loader(
            module, file, ".keras", written_by=written_by, safe_mode=not trust_model_code
        )
        return model, module.__version__, "keras"
    if suffix in (".h5", ".hdf5"):
        written_by, config = _h5_model_config(file)
        if not trust_model_code:
            _refuse_code_layers(config, file)
        keras_3 = written_by is not None and written_by.startswith("3.")
        module = keras3() if keras_3 else tf_keras()
        extra = {"safe_mode": False} if keras_3 else {}  # code layers were checked above
        model = _call_loader(module, file, "HDF5", written_by=written_by, **extra)
        return model, module.__version__, "h5"
    raise ModelError(
        f"{file}: not a Keras model file (.keras, .h5, .hdf5) nor a SavedModel directory"
    )


def _call_loader(module, file: Path, what: str, *, written_by: str | None, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return module.models.load_model(str(file), compile=False, **kwargs)
    except Exception as e:
        detail = " ".join(str(e).split())[:600]
        if "safe_mode" in detail:
            raise ModelError(
                f"{file} holds a Lambda layer whose Python code would run on loading; "
                "load it only if you trust its source (trust_model_code=True, config "
                "trust_model_code: true)"
            ) from None
        writer = f"Keras {written_by}" if written_by else "an unknown Keras version"
        if written_by and written_by != module.__version__:
            hint = (
                f"Keras {written_by} may write what Keras {module.__version__} cannot read: "
                f"re-save the model where it loads (keras=={written_by}) as .h5, or load it "
                "there and export its weights into a model built in code"
            )
        else:
            hint = (
                "custom layers or objects cannot be loaded by histoatlas; re-save the model "
                "with built-in layers only"
            )
        name = "Keras" if module.__name__ == "keras" else "tf-keras"
        raise ModelError(
            f"cannot load {what} model {file}: written by {writer}, installed {name} "
            f"{module.__version__} fails with {type(e).__name__}: {detail}; {hint}"
        ) from None


def _keras_zip_version(file: Path) -> str | None:
    """The ``keras_version`` in a ``.keras`` file's ``metadata.json``."""
    try:
        with zipfile.ZipFile(file) as z:
            meta = json.loads(z.read("metadata.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise ModelError(
            f"{file} is not a valid .keras file (a zip with metadata.json and config.json): "
            f"{type(e).__name__}: {e}"
        ) from None
    version = meta.get("keras_version")
    return str(version) if version else None


def _h5_model_config(file: Path) -> tuple[str | None, dict]:
    """``keras_version`` and ``model_config`` of a Keras HDF5 file."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise ModelError(f"{file} is not a readable HDF5 file: {e}") from None
    raw = attrs.get("model_config")
    if raw is None:
        raise ModelError(
            f"{file} holds weights only (no model_config: saved with save_weights); save the "
            "whole model (model.save) or build it and load the weights yourself"
        )
    version = attrs.get("keras_version")
    decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return (str(decode(version)) if version is not None else None), json.loads(decode(raw))


def _refuse_code_layers(config: Any, file: Path) -> None:
    """Raise ModelError if a legacy config holds a layer whose code runs on loading."""
    found = sorted(set(_class_names(config)) & set(_CODE_LAYERS))
    if found:
        raise ModelError(
            f"{file} holds {', '.join(found)} layer(s) whose Python code is stored in the file "
            "and would run on loading (tf-keras does not guard legacy .h5 files); load it "
            "only if you trust its source (trust_model_code=True, config trust_model_code: true)"
        )


def _class_names(obj: Any):
    if isinstance(obj, dict):
        if isinstance(obj.get("class_name"), str):
            yield obj["class_name"]
        for value in obj.values():
            yield from _class_names(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _class_names(value)


def _infer_params(model, params: ModelParams, file: Path) -> ModelParams:
    """Defaults of a bare Keras file: tile_px from the input shape, output from the head."""
    changes: dict[str, Any] = {"backend": "tensorflow", "weights": file.name}
    shape = _input_shape(model)
    if shape is not None and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        changes["tile_px"] = int(shape[1])
    activated = final_activation(model)
    width = output_width(model)
    if activated is not None:
        changes["output"] = "none"
    elif width == 1:
        changes["output"] = "sigmoid"
    return dataclasses.replace(params, **changes)


def _input_shape(model) -> tuple | None:
    try:
        shape = model.inputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return tuple(shape)


def output_width(model) -> int | None:
    """Width of a Keras model's (first) output, flattened; None when not static."""
    try:
        shape = tuple(model.outputs[0].shape)[1:]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return int(np.prod(shape)) if shape and all(shape) else None


def _node_output(model, layer):
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


def _is_graph(model) -> bool:
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


def _is_tf_keras(obj) -> bool:
    return type(obj).__module__.startswith("tf_keras")


def _has_class(obj, name: str) -> bool:
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
