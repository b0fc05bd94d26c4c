"""Per-framework gradient functions for PAIR's ``saliency.core``.

``saliency.core`` is framework-agnostic: every method calls one *call model function*
``f(x_batch, call_model_args, expected_keys) -> dict`` that returns, for channels-last
numpy input, the gradients (and, for Grad-CAM, the feature maps) it asks for. A backend
is such a callable for one framework; :func:`make_backend` picks it: :class:`TorchBackend`
(autograd, forward hooks) or :class:`KerasBackend` (``tf.GradientTape``, a sub-model for
Grad-CAM's layer). Both implement the same three members (``__call__``,
``resolve_layer``, ``num_classes``) that :class:`~histoatlas.saliency.SaliencyMap` uses.

``call_model_args`` is a dict: ``class_idx`` (the output to explain), ``layer`` (the
Grad-CAM layer; None picks one) and ``activation`` (None explains the raw output,
``"softmax"``/``"sigmoid"`` the probability).
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np

from histoatlas.errors import LayerError, ModelError

# saliency.core's key names, repeated so this module imports without it
INPUT_OUTPUT_GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
CONVOLUTION_LAYER_VALUES = "CONVOLUTION_LAYER_VALUES"
CONVOLUTION_OUTPUT_GRADIENTS = "CONVOLUTION_OUTPUT_GRADIENTS"
OUTPUT_LAYER_VALUES = "OUTPUT_LAYER_VALUES"

ACTIVATIONS = (None, "softmax", "sigmoid")
_MAX_NAMES_SHOWN = 25


class GradientBackend(Protocol):
    """What :class:`~histoatlas.saliency.SaliencyMap` needs from a framework."""

    class_names: list[str]

    def __call__(
        self,
        x_batch: np.ndarray,
        call_model_args: dict | None = None,
        expected_keys: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Return the ``expected_keys`` for a channels-last batch ``(B, H, W, C)``."""
        ...

    def resolve_layer(self, layer: str | None, x_value: np.ndarray) -> str:
        """Check a Grad-CAM layer name, or find the default one for ``x_value``."""
        ...

    def num_classes(self) -> int | None:
        """Number of outputs, when known without running the network."""
        ...


def make_backend(model: Any, *, device: str | None = None) -> GradientBackend:
    """Wrap a model in the gradient backend of its framework.

    Parameters
    ----------
    model : torch.nn.Module, keras.Model or LoadedModel
        A bare torch module or Keras model, or what :func:`histoatlas.load_model`
        returns (its ``backend`` attribute picks the framework).
    device : str, optional
        Where to run a bare module; default: where a torch module's parameters are, the
        first GPU (else the CPU) for Keras. A ``LoadedModel`` runs on its own ``device``.

    Returns
    -------
    GradientBackend

    Raises
    ------
    ModelError
        The model is neither a torch module nor a loaded model of a supported backend.
    """
    backend = getattr(model, "backend", None)
    if backend is not None and hasattr(model, "model"):
        if backend == "torch":
            names = list(getattr(model, "class_names", []) or [])
            return TorchBackend(
                model.model,
                device=device or getattr(model, "device", None),
                class_names=names,
                supports_layers=getattr(model, "kind", "directory") != "torchscript",
            )
        if backend == "tensorflow":
            return KerasBackend(model, device=device)
        raise ModelError(f"{getattr(model, 'path', 'the model')}: unknown backend {backend!r}")
    from histoatlas.models.keras_model import is_keras_model

    if is_keras_model(model):
        return KerasBackend(model, device=device)
    import torch

    if isinstance(model, torch.nn.Module):
        return TorchBackend(model, device=device)
    raise ModelError(
        f"cannot compute saliency for a {type(model).__name__}: pass a torch.nn.Module, a "
        "Keras model or what histoatlas.load_model(path) returns"
    )


def check_class_idx(class_idx: int, n_classes: int) -> None:
    """Raise ModelError unless ``0 <= class_idx < n_classes``."""
    if not 0 <= class_idx < n_classes:
        raise ModelError(
            f"class_idx {class_idx} is out of range: the model has {n_classes} output "
            f"class(es), so class_idx must be in 0..{n_classes - 1}"
        )


class TorchBackend:
    """Call model function for a ``torch.nn.Module`` taking ``(B, C, H, W)`` input.

    Parameters
    ----------
    module : torch.nn.Module
        The network, used as it is (put it in eval mode first: dropout or batch-norm
        statistics in training mode make the maps noisy).
    device : str, optional
        Where inputs go; default: the device of the module's first parameter.
    class_names : list of str, optional
        Output names, to check class indices before running the network.
    supports_layers : bool
        False for TorchScript modules, whose forward hooks never fire (so Grad-CAM
        cannot see their feature maps).
    """

    def __init__(
        self,
        module: Any,
        *,
        device: str | None = None,
        class_names: list[str] | None = None,
        supports_layers: bool = True,
    ) -> None:
        import torch

        self.module = module
        if device is None:
            param = next(iter(module.parameters()), None)
            device = str(param.device) if param is not None else "cpu"
        self.device = torch.device(device)
        self.class_names = list(class_names or [])
        self.supports_layers = supports_layers and not isinstance(module, torch.jit.ScriptModule)
        self._default_layer: str | None = None
        if getattr(module, "training", False):
            warnings.warn(
                "the torch module is in training mode; call model.eval() first so dropout "
                "and batch-norm do not make the saliency maps noisy",
                stacklevel=3,
            )

    def num_classes(self) -> int | None:
        """Number of classes named by the model, or None (known after a forward pass)."""
        return len(self.class_names) or None

    def __call__(
        self,
        x_batch: np.ndarray,
        call_model_args: dict | None = None,
        expected_keys: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the module on a channels-last batch and return what ``saliency`` asks for.

        Parameters
        ----------
        x_batch : ndarray, shape (B, H, W, C)
            Preprocessed input; transposed to ``(B, C, H, W)`` here.
        call_model_args : dict
            ``class_idx`` (required), ``layer`` and ``activation`` (optional).
        expected_keys : list of str
            Any of INPUT_OUTPUT_GRADIENTS, CONVOLUTION_LAYER_VALUES,
            CONVOLUTION_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES.

        Returns
        -------
        dict of str to ndarray
            Input gradients ``(B, H, W, C)``, feature maps and their gradients
            ``(B, h, w, K)`` (channels last, as ``saliency.core.GradCam`` reads them),
            and the explained output ``(B,)``, all float32.
        """
        import torch

        args = dict(call_model_args or {})
        keys = list(expected_keys or [INPUT_OUTPUT_GRADIENTS])
        want_input = INPUT_OUTPUT_GRADIENTS in keys
        want_conv = CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys
        x = torch.as_tensor(np.asarray(x_batch, dtype=np.float32), device=self.device)
        # always tracked: with frozen weights the feature maps would otherwise carry no graph
        x = x.permute(0, 3, 1, 2).contiguous().requires_grad_(True)

        captured: dict[str, Any] = {}
        handle = None
        if want_conv:
            layer = self.resolve_layer(args.get("layer"), np.asarray(x_batch[0]))
            handle = self._modules()[layer].register_forward_hook(_capture_hook(captured, layer))
        try:
            with torch.enable_grad():
                target = self._target(self.module(x), args)
                inputs = ([x] if want_input else []) + ([captured["out"]] if want_conv else [])
                grads = list(torch.autograd.grad(target.sum(), inputs)) if inputs else []
        finally:
            if handle is not None:
                handle.remove()

        out: dict[str, np.ndarray] = {}
        if want_input:
            out[INPUT_OUTPUT_GRADIENTS] = _nhwc(grads.pop(0))
        if want_conv:
            out[CONVOLUTION_OUTPUT_GRADIENTS] = _nhwc(grads.pop(0))
            out[CONVOLUTION_LAYER_VALUES] = _nhwc(captured["out"])
        if OUTPUT_LAYER_VALUES in keys:
            out[OUTPUT_LAYER_VALUES] = target.detach().float().cpu().numpy()
        return out

    def _target(self, output: Any, args: dict) -> Any:
        """The explained output ``(B,)``: one class of the (activated) network output."""
        import torch

        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise ModelError(
                f"the model returned a {type(output).__name__}; saliency needs a tensor "
                "(B, n_classes) of class scores"
            )
        output = output.reshape(output.shape[0], -1)
        class_idx = args["class_idx"]
        check_class_idx(class_idx, output.shape[1])
        activation = args.get("activation")
        if activation == "softmax":
            output = torch.softmax(output, dim=1)
        elif activation == "sigmoid":
            output = torch.sigmoid(output)
        elif activation is not None:
            raise ModelError(f"activation {activation!r} is not one of {ACTIVATIONS}")
        return output[:, class_idx]

    def _modules(self) -> dict[str, Any]:
        return {name: m for name, m in self.module.named_modules() if name}

    def resolve_layer(self, layer: str | None, x_value: np.ndarray) -> str:
        """Check ``layer`` or find the default Grad-CAM layer.

        The default is the last module, in forward order, that runs once and returns a
        feature map ``(B, K, h, w)`` with ``h, w > 1``: for a CNN, the output of its
        last convolutional stage (``layer4`` of a ResNet, ``block4`` of the demo CNN).

        Parameters
        ----------
        layer : str or None
            A name from ``dict(module.named_modules())``, or None for the default.
        x_value : ndarray, shape (H, W, C)
            One preprocessed input, run once to find the default.

        Returns
        -------
        str

        Raises
        ------
        ModelError
            TorchScript module (no hooks), or no module returns a spatial feature map.
        LayerError
            ``layer`` is not a module of the network.
        """
        if not self.supports_layers:
            raise ModelError(
                "Grad-CAM needs a layer's feature maps, but this is a TorchScript model "
                "(its forward hooks never fire): use a model directory (params.json + "
                "weights) instead, or a gradient method such as integrated_gradients"
            )
        modules = self._modules()
        if layer is not None:
            if layer not in modules:
                names = list(modules)
                shown = ", ".join(names[:_MAX_NAMES_SHOWN])
                more = f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES_SHOWN else ""
                raise LayerError(f"layer {layer!r} not in model; available: {shown}{more}")
            return layer
        if self._default_layer is None:
            self._default_layer = self._find_feature_layer(modules, x_value)
        return self._default_layer

    def _find_feature_layer(self, modules: dict[str, Any], x_value: np.ndarray) -> str:
        import torch

        fired: list[tuple[str, tuple[int, ...]]] = []

        def recorder(name: str):
            def hook(_module, _inputs, output):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
                fired.append((name, shape))

            return hook

        handles = [m.register_forward_hook(recorder(n)) for n, m in modules.items()]
        try:
            x = torch.as_tensor(np.asarray(x_value, dtype=np.float32)[None], device=self.device)
            with torch.no_grad():
                self.module(x.permute(0, 3, 1, 2).contiguous())
        finally:
            for handle in handles:
                handle.remove()
        counts: dict[str, int] = {}
        for name, _ in fired:
            counts[name] = counts.get(name, 0) + 1
        # a module run twice (a shared ReLU) would give the hook its last call only
        for name, shape in reversed(fired):
            if counts[name] == 1 and len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
                return name
        raise ModelError(
            "no module of the model returns a spatial feature map (B, K, h, w) with h, w > 1, "
            "so Grad-CAM has no convolutional layer to use; pass layer=<name> explicitly"
        )


def _capture_hook(captured: dict[str, Any], layer: str):
    """Forward hook keeping a layer's output and handing the network a copy.

    The copy keeps in-place operations downstream (``ReLU(inplace=True)``) from
    changing the captured feature map; gradients still flow back through it.
    """

    def hook(_module, _inputs, output):
        import torch

        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(
                f"Grad-CAM needs a feature map (B, K, h, w), but layer {layer!r} "
                f"returns {shape}; choose a convolutional layer"
            )
        captured["out"] = output
        return output.clone()

    return hook


def _nhwc(tensor: Any) -> np.ndarray:
    """``(B, C, H, W)`` tensor -> channels-last float32 numpy array."""
    return tensor.detach().permute(0, 2, 3, 1).float().cpu().numpy()


class KerasBackend:
    """Call model function for a Keras model taking channels-last ``(B, H, W, C)`` input.

    Gradients come from ``tf.GradientTape``; Grad-CAM reads its layer through a
    sub-model whose outputs are that layer and the final output. Each combination of
    requested keys, layer, class and activation is compiled once with ``tf.function``.

    Parameters
    ----------
    model : KerasModel or keras.Model
        What :func:`histoatlas.load_model` returns for a Keras file, or a bare Keras 3 /
        tf-keras model.
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:N``; default the loaded model's device (a bare model:
        the first GPU, else the CPU).
    class_names : list of str, optional
        Output names (default: the loaded model's).
    """

    def __init__(
        self, model: Any, *, device: str | None = None, class_names: list[str] | None = None
    ) -> None:
        from pathlib import Path

        from histoatlas.models.keras_model import KerasModel, resolve_device
        from histoatlas.models.params import ModelParams

        if not isinstance(model, KerasModel):
            name = getattr(model, "name", type(model).__name__)
            model = KerasModel(
                model=model,
                backend="tensorflow",
                params=ModelParams(backend="tensorflow"),
                path=Path(f"<Keras model {name}>"),
                device=resolve_device(device),
                kind="bare",
                weights_path=Path(),
            )
        elif device is not None:
            model.to(device)
        self.loaded = model
        self.model = model.model
        self.class_names = list(class_names or model.class_names)
        self._default_layer: str | None = None
        self._fns: dict[tuple, Any] = {}
        self._submodels: dict[str, Any] = {}

    def num_classes(self) -> int | None:
        """Number of classes: named by the model, else the width of its output."""
        from histoatlas.models.keras_model import output_width

        return len(self.class_names) or output_width(self.model)

    def __call__(
        self,
        x_batch: np.ndarray,
        call_model_args: dict | None = None,
        expected_keys: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on a channels-last batch and return what ``saliency`` asks for.

        Parameters
        ----------
        x_batch : ndarray, shape (B, H, W, C)
            Preprocessed input.
        call_model_args : dict
            ``class_idx`` (required), ``layer`` and ``activation`` (optional).
        expected_keys : list of str
            Any of INPUT_OUTPUT_GRADIENTS, CONVOLUTION_LAYER_VALUES,
            CONVOLUTION_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES.

        Returns
        -------
        dict of str to ndarray
            Input gradients ``(B, H, W, C)``, feature maps and their gradients
            ``(B, h, w, K)``, and the explained output ``(B,)``, all float32.
        """
        from histoatlas.models.keras_model import import_tensorflow

        tf = import_tensorflow()
        args = dict(call_model_args or {})
        keys = list(expected_keys or [INPUT_OUTPUT_GRADIENTS])
        want_input = INPUT_OUTPUT_GRADIENTS in keys
        want_conv = CONVOLUTION_LAYER_VALUES in keys or CONVOLUTION_OUTPUT_GRADIENTS in keys
        x_batch = np.asarray(x_batch, dtype=np.float32)
        layer = self.resolve_layer(args.get("layer"), x_batch[0]) if want_conv else None
        class_idx, activation = args["class_idx"], args.get("activation")
        if activation not in ACTIVATIONS:
            raise ModelError(f"activation {activation!r} is not one of {ACTIVATIONS}")
        n_out = self.num_classes()
        if n_out is not None:
            check_class_idx(class_idx, n_out)
        fn = self._function(want_input, layer, class_idx, activation)
        with tf.device(self.loaded.tf_device):
            target, input_grads, conv, conv_grads = fn(tf.constant(x_batch))

        out: dict[str, np.ndarray] = {}
        if want_input:
            out[INPUT_OUTPUT_GRADIENTS] = input_grads.numpy().astype(np.float32)
        if want_conv:
            out[CONVOLUTION_OUTPUT_GRADIENTS] = conv_grads.numpy().astype(np.float32)
            out[CONVOLUTION_LAYER_VALUES] = conv.numpy().astype(np.float32)
        if OUTPUT_LAYER_VALUES in keys:
            out[OUTPUT_LAYER_VALUES] = target.numpy().astype(np.float32)
        return out

    def _function(self, want_input: bool, layer: str | None, class_idx: int, activation):
        """The compiled ``x -> (target, input grads, layer values, layer grads)``."""
        from histoatlas.models.keras_model import import_tensorflow

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
        """Check ``layer`` or find the default Grad-CAM layer.

        The default is the last layer, in graph order, whose output is a feature map
        ``(B, h, w, K)`` with ``h, w > 1``: the output of the last convolutional stage
        (after its activation, as Grad-CAM wants it). A 1x1 convolution on a globally
        pooled map, which some networks use as their head, is passed over.

        Parameters
        ----------
        layer : str or None
            A Keras layer name, or None for the default.
        x_value : ndarray, shape (H, W, C)
            One preprocessed input, run once when static shapes leave h, w unknown.

        Returns
        -------
        str

        Raises
        ------
        ModelError
            Subclassed model (no layer graph), or no layer returns a spatial feature map.
        LayerError
            ``layer`` is not a layer of the model, or its output is not a feature map.
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
            if len(shape) == 4 and not _has_class(lay, "InputLayer"):
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


def _has_class(obj: Any, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(obj).__mro__)
