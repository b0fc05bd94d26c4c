"""Autograd gradients of a torch module for PAIR's ``saliency.core``: :class:`TorchGradients`.

``saliency.core`` calls one *call model function* ``f(x_batch, call_model_args,
expected_keys) -> dict``; this is it for a ``torch.nn.Module``: input gradients through
autograd, and for Grad-CAM a layer's feature maps and their gradients through a forward
hook (see :class:`histoatlas.backends.base.GradientFunction`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from histoatlas.backends.gradients import GradientRequest, check_class_idx
from histoatlas.backends.torch.encoders.gradcam import (
    find_module,
    gradcam_target,
    layer_layout,
    to_grid,
)
from histoatlas.errors import LayerError, ModelError

_MAX_NAMES_SHOWN = 25


class TorchGradients:
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
        # the module tree does not change between calls: listed, and layouts found, once
        self._named: dict[str, Any] | None = None
        self._layouts: dict[str, Any] = {}
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
        self, x_batch: np.ndarray, call_model_args: dict | None = None, expected_keys=None
    ) -> dict[str, np.ndarray]:
        """The call-model function (see :class:`~histoatlas.backends.base.GradientFunction`):
        the channels-last batch goes in as ``(B, C, H, W)``; feature maps and gradients come
        back channels last, as ``saliency.core.GradCam`` reads them."""
        import torch

        request = GradientRequest.parse(call_model_args, expected_keys)
        x = torch.as_tensor(np.asarray(x_batch, dtype=np.float32), device=self.device)
        # always tracked: with frozen weights the feature maps would otherwise carry no graph
        x = x.permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        captured: dict[str, Any] = {}
        handle = layout = None
        if request.want_conv:
            layer = self.resolve_layer(request.layer, np.asarray(x_batch[0]))
            if layer not in self._layouts:
                self._layouts[layer] = layer_layout(self.module, layer)
            layout = self._layouts[layer]
            handle = self._modules()[layer].register_forward_hook(_capture_hook(captured, layer))
        try:
            with torch.enable_grad():
                target = self._target(self.module(x), request)
                inputs = [x] if request.want_input else []
                inputs += [captured["out"]] if request.want_conv else []
                grads = list(torch.autograd.grad(target.sum(), inputs)) if inputs else []
        finally:
            if handle is not None:
                handle.remove()
        input_grads = _nhwc(grads.pop(0)) if request.want_input else None
        conv_grads = _nhwc(to_grid(grads.pop(0), layout)) if request.want_conv else None
        conv = _nhwc(to_grid(captured["out"], layout)) if request.want_conv else None
        return request.result(input_grads, conv, conv_grads, target.detach().float().cpu())

    def _target(self, output: Any, request: GradientRequest) -> Any:
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
        check_class_idx(request.class_idx, output.shape[1])
        if request.activation == "softmax":
            output = torch.softmax(output, dim=1)
        elif request.activation == "sigmoid":
            output = torch.sigmoid(output)
        return output[:, request.class_idx]

    def _modules(self) -> dict[str, Any]:
        if self._named is None:
            self._named = {name: m for name, m in self.module.named_modules() if name}
        return self._named

    def resolve_layer(self, layer: str | None, x_value: np.ndarray) -> str:
        """Check ``layer`` or find the default Grad-CAM layer (see ``GradientFunction``).

        For a ViT, the default is the last block's ``norm1``, whose patch tokens are
        reshaped into the patch grid (why that block: see
        :mod:`histoatlas.backends.torch.encoders.gradcam`); for Swin its last stage; for a
        truncated ResNet ``layer3``. Otherwise the last module, in forward order, that
        runs once and returns a feature map ``(B, K, h, w)`` with ``h, w > 1`` (found by
        running ``x_value`` once): for a CNN, the output of its last convolutional stage
        (``layer4`` of a ResNet, ``block4`` of the demo CNN). A ViT layer (a block, a
        norm) may be named too: its tokens are put on the patch grid. An encoder's layers
        are found with or without its ``backbone.`` prefix. ModelError for TorchScript
        (no hooks) or a network without a spatial map; LayerError for a name that is no
        module.
        """
        if not self.supports_layers:
            raise ModelError(
                "Grad-CAM needs a layer's feature maps, but this is a TorchScript model "
                "(its forward hooks never fire): use a model directory (params.json + "
                "weights) instead, or a gradient method such as integrated_gradients"
            )
        modules = self._modules()
        found = find_module(modules, layer)
        if found is not None:
            layer = found[0]
        if layer is not None:
            if layer not in modules:
                names = list(modules)
                shown = ", ".join(names[:_MAX_NAMES_SHOWN])
                more = f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES_SHOWN else ""
                raise LayerError(f"layer {layer!r} not in model; available: {shown}{more}")
            return layer
        if self._default_layer is None:
            try:
                self._default_layer = gradcam_target(self.module).layer
            except ModelError:  # no ViT, Swin or truncated ResNet: the last feature map
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
    changing the captured feature map; gradients still flow back through it. Maps
    ``(B, K, h, w)`` (or Swin's ``(B, h, w, K)``) and ViT tokens ``(B, T, D)`` are kept;
    :func:`to_grid` puts them on their grid afterwards.
    """

    def hook(_module, _inputs, output):
        import torch

        if not isinstance(output, torch.Tensor) or output.ndim not in (3, 4):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(
                f"Grad-CAM needs a feature map (B, K, h, w) or ViT tokens (B, T, D), but "
                f"layer {layer!r} returns {shape}; choose a convolutional layer or a ViT block"
            )
        captured["out"] = output
        return output.clone()

    return hook


def _nhwc(tensor: Any) -> np.ndarray:
    """``(B, C, H, W)`` tensor -> channels-last float32 numpy array."""
    return tensor.detach().permute(0, 2, 3, 1).float().cpu().numpy()
