"""Activations of named torch modules: forward hooks, pooling on the device, and the
pipelined forward passes of a CUDA model.

Forward hooks on the modules of ``dict(model.named_modules())`` collect each requested
layer during one forward pass, pooled inside the hook so full feature maps are never kept.
``postconv`` is the input of the final classifier (a forward *pre*-hook), ``output`` the
network's final output. A layer may carry a recipe, ``"<layer>:<recipe>"``
(``blocks.11:cls``, ``norm:patch_mean``; see
:mod:`histoatlas.backends.torch.encoders.recipes`); an encoder's layers are found with or
without its ``backbone.`` prefix. Pooling knows the layer's layout
(:func:`~histoatlas.backends.torch.encoders.gradcam.layer_layout`): ViT tokens are
averaged over the patch tokens only (class and register tokens skipped, as timm's
``global_pool="avg"`` does), Swin's channels-last maps over H and W.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from histoatlas.backends.base import (
    OUTPUT,
    POSTCONV,
    postconv_undefined_message,
    unknown_layer_message,
)
from histoatlas.backends.torch.encoders.gradcam import GradCamTarget, find_module, layer_layout
from histoatlas.backends.torch.encoders.recipes import embed, parse_layer_selector
from histoatlas.errors import LayerError
from histoatlas.prefetch import prefetch


class HookedForward:
    """Pooled activations of named modules and the final output, in one forward pass.

    Parameters
    ----------
    model : TorchModel
    layers : sequence of str
        Module names, ``postconv`` or ``output``, each optionally ``"<name>:<recipe>"``;
        concatenated in this order.
    pooling : {"avg", "max", None}
        As :func:`pool`, for the layers without a recipe.
    precision : {"float32", "bfloat16", "float16"}
        Under ``torch.autocast`` unless float32.

    Raises
    ------
    LayerError
        A layer is not a module of the network, or the network is TorchScript (whose
        hooks never fire) and a layer other than ``output`` is asked for.
    """

    def __init__(self, model, layers: Sequence[str], *, pooling: str | None, precision: str):
        self.model = model
        self.pooling = pooling
        self.precision = precision
        self.targets = [_resolve(model, layer, pooling) for layer in layers]
        self.widths: list[int] | None = None

    def __call__(self, x) -> tuple[Any, Any]:
        """Features ``(B, F)`` and the flattened final output ``(B, C)``, float32 on device."""
        import torch

        store: dict[str, object] = {}
        handles = []
        for layer, module, how, reduce in self.targets:
            hook = partial(_keep, store, layer, reduce)
            if how == "pre":
                handles.append(module.register_forward_pre_hook(_pre_hook(hook)))
            elif how == "forward":
                handles.append(module.register_forward_hook(_forward_hook(hook)))
        autocast = contextlib.nullcontext()
        if self.precision != "float32":
            device_type = self.model.device.split(":")[0]
            autocast = torch.autocast(device_type, dtype=getattr(torch, self.precision))
        try:
            with torch.inference_mode(), autocast:
                out = _first_tensor(self.model.model(x))
                parts = [self._part(layer, how, out, store, r) for layer, _, how, r in self.targets]
                feats = torch.cat(parts, dim=1)
                flat = out.reshape(out.shape[0], -1).float()
        finally:
            for handle in handles:
                handle.remove()
        if self.widths is None:
            self.widths = [int(p.shape[1]) for p in parts]
        return feats, flat

    def _part(self, layer: str, how: str, out, store: dict, reduce):
        if how == OUTPUT:
            return reduce(out)
        if layer not in store:
            raise LayerError(
                f"layer {layer!r} did not run in the forward pass of {self.model.path}; "
                "choose a layer the network uses"
            )
        return store[layer]


def _resolve(model, selector: str, pooling: str | None):
    """(selector, module, how, reduce): how is 'forward', 'pre' (postconv) or 'output';
    ``reduce`` maps the layer's output to ``(B, n)`` (its recipe, else ``pooling``)."""
    layer, recipe = parse_layer_selector(selector)
    name, module, how = _find(model, layer)
    layout = layer_layout(model.model, name) if how == "forward" else GradCamTarget(name, "nchw")
    return selector, module, how, partial(pool, pooling=pooling, recipe=recipe, layout=layout)


def _find(model, layer: str):
    """(module name, module, how) of a layer name (``postconv``, ``output`` or a module)."""
    if layer == OUTPUT:
        return layer, None, OUTPUT
    if not model.supports_layers:
        raise LayerError(
            f"layer {layer!r}: {model.path} is a TorchScript model, which gives its "
            f"final output only (layer '{OUTPUT}'); forward hooks never fire on "
            "TorchScript, so named layers and 'postconv' need a model directory "
            "(params.json + state dict, the architecture rebuilt in Python)"
        )
    if layer == POSTCONV:
        return layer, find_classifier(model), "pre"
    found = find_module(dict(model.model.named_modules()), layer)
    if found is not None:
        return *found, "forward"
    raise LayerError(unknown_layer_message(layer, model.layer_names()))


def find_classifier(model):
    """The final classifier module whose input is ``postconv``.

    timm's ``get_classifier()`` where the network has it, else the last ``nn.Linear``
    in module order, else the last convolution when it is 1x1 (a convolutional
    classifier head, as in SqueezeNet).

    Raises
    ------
    LayerError
        If the network has none of them.
    """
    from torch import nn

    net = model.model
    get = getattr(net, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, tuple | list):  # distilled ViTs return (head, head_dist)
            head = head[0]
        if isinstance(head, nn.Module):
            return head
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if convs and tuple(convs[-1].kernel_size) == (1, 1):
        return convs[-1]
    raise LayerError(
        postconv_undefined_message(model.path, model.layer_names(), "no nn.Linear layer")
    )


def pool(t, pooling: str | None, *, recipe: str | None = None, layout: GradCamTarget | None = None):
    """Reduce one layer's output to ``(B, n)`` float32 on its device.

    With a ``recipe`` (``cls``, ``patch_mean``, ``cls+patch_mean``, ``avg``, ``max``), the
    recipe. Else 4-D maps are averaged or maxed over H, W (``(B, C, H, W)``, or
    ``(B, H, W, C)`` where ``layout`` says ``nhwc``); 3-D token outputs ``(B, T, D)`` over
    T, skipping ``layout``'s prefix tokens; None flattens. 2-D outputs pass through.
    Half-precision outputs (autocast) are pooled in float32.
    """
    t = _first_tensor(t).float()
    layout = layout or GradCamTarget("", "nchw")
    n_prefix = layout.num_prefix_tokens if layout.layout == "tokens" else 0
    if t.ndim == 4 and layout.layout == "nhwc":
        t = t.permute(0, 3, 1, 2)
    reduce = recipe or pooling
    if reduce is not None and (t.ndim == 3 or recipe is not None):
        return embed(t, reduce, num_prefix_tokens=n_prefix).reshape(t.shape[0], -1)
    if t.ndim == 4 and pooling is not None:
        t = t.mean(dim=(2, 3)) if pooling == "avg" else t.amax(dim=(2, 3))
    return t.reshape(t.shape[0], -1)


def pipelined_batches(
    model, batches: Iterable, run: Callable[[Any], tuple[Any, Any]], *, prefetch_depth: int
) -> Iterator[tuple[Any, np.ndarray, np.ndarray | None]]:
    """``(batch, features, predictions)`` with the GPU never waiting on the host.

    A background thread copies each batch into pinned host memory; the next batch's
    forward pass is queued on the GPU before the previous batch's results are fetched,
    and the results come back to pinned memory asynchronously.
    """
    queued = None  # (batch, fetch) of the batch whose results are not fetched yet
    for batch, tiles in prefetch(_pinned(batches), prefetch_depth):
        launched = batch, _launch(model, tiles, run)
        if queued is not None:
            yield queued[0], *queued[1]()
        queued = launched
    if queued is not None:
        yield queued[0], *queued[1]()


def _launch(model, tiles, run):
    """Queue a batch's forward pass on the GPU; return ``fetch() -> (feats, preds)``."""
    import torch

    feats, preds = run(model.to_tensor(tiles))
    feats = feats.to("cpu", non_blocking=True)
    preds = None if preds is None else preds.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def fetch() -> tuple[np.ndarray, np.ndarray | None]:
        done.synchronize()
        return feats.numpy(), None if preds is None else preds.numpy()

    return fetch


def _pinned(batches: Iterable) -> Iterator:
    """(batch, its tiles as a pinned uint8 tensor), for an asynchronous copy to the GPU.

    Closes ``batches`` when it stops, so the slide readers shut down with it.
    """
    import torch

    iterator = iter(batches)
    try:
        for batch in iterator:
            tiles = batch.tiles
            if isinstance(tiles, np.ndarray):
                tiles = torch.from_numpy(np.ascontiguousarray(tiles)).pin_memory()
            yield batch, tiles
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _first_tensor(out):
    """The tensor of a module output that may be a tuple/list (attention, RNNs)."""
    while isinstance(out, tuple | list):
        out = out[0]
    return out


def _keep(store: dict, layer: str, reduce, value) -> None:
    # pooled inside the hook, so full feature maps are never kept
    store[layer] = reduce(value)


def _forward_hook(keep):
    return lambda module, args, output: keep(output)


def _pre_hook(keep):
    return lambda module, args: keep(args[0])
