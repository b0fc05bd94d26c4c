"""Per-tile activations of named layers, as slideflow's ``Features`` computes them.

PyTorch: forward hooks on the modules of ``dict(model.named_modules())`` collect each
requested layer during one forward pass. Keras: one sub-model whose outputs are the
requested layers plus the final output, compiled with ``tf.function``. Either way outputs
are pooled on the device and concatenated in the order the layers were given. Two names
are special: ``postconv`` is the input of the final classifier (torch: read with a
forward *pre*-hook; Keras: the input of the last ``Dense`` layer) and ``output`` the
network's final output before the params' activation; they shadow layers of the same name.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import numpy as np

from histoatlas.errors import ConfigError, LayerError, ModelError

POSTCONV = "postconv"
OUTPUT = "output"
POOLINGS = ("avg", "max", None)
BATCH_SIZE_ENV = "HISTOATLAS_BATCH_SIZE"
_DEFAULT_BATCH = {"cuda": 128, "mps": 64, "cpu": 32}
# Compute precisions of the torch forward pass; activations are stored as float32 anyway.
PRECISIONS = ("float32", "bfloat16", "float16")
_MAX_NAMES_SHOWN = 40


class Features:
    """Compute activations of chosen layers for tiles or whole slides.

    Parameters
    ----------
    model : str, PathLike or LoadedModel
        A model path (see :func:`histoatlas.load_model`) or a loaded model, PyTorch or
        Keras.
    layers : str or sequence of str
        Layer names as ``dict(model.named_modules())`` (torch) or the Keras layer names
        give them, plus ``postconv`` (input of the final classifier) and ``output``
        (final output). Their pooled activations are concatenated in this order.
    pooling : {"avg", "max", None}
        How 4-D maps (torch ``(B, C, H, W)``, Keras ``(B, H, W, C)``) are reduced over
        H, W, and 3-D ``(B, T, D)`` token outputs over T. None flattens instead, in the
        framework's own order (C, H, W for torch; H, W, C for Keras).
    include_preds : bool
        Also return predictions: the final output through the params' ``output``
        activation (softmax, sigmoid or none).
    device : str, optional
        Device; default CUDA, then MPS (torch only), then CPU. Moves a given LoadedModel.
    batch_size : int, optional
        Tiles per forward pass; default from the environment variable
        ``HISTOATLAS_BATCH_SIZE``, else 128 on CUDA, 64 on MPS, 32 on CPU.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of a torch model's forward pass: ``bfloat16`` and
        ``float16`` run it under ``torch.autocast`` (CUDA, or bfloat16 on a CPU with
        AVX-512 BF16 / AMX), 1.4-1.6x as fast (measured, ResNet-50 and MobileNet), with
        activations about 0.4-1 % from float32's (relative L2 error; see
        ``benchmarks/README.md``). Activations are pooled and returned as float32
        whatever the precision.

    Attributes
    ----------
    model : LoadedModel
    layers : list of str
    num_features : int
        Width F of the concatenated activations.
    layer_slices : dict of str to (int, int)
        Columns ``[start, stop)`` of each layer in the features.
    num_classes : int
        Width C of the predictions.

    Raises
    ------
    LayerError
        If a layer is not in the model (the message lists the valid names), or the
        model is TorchScript (or a subclassed Keras model) and a layer other than
        ``output`` is asked for.
    ModelError
        If the model cannot be loaded.
    ConfigError
        If ``pooling`` or the batch size is invalid.

    Examples
    --------
    >>> features = Features("resources/demo/model", layers=["block3", "postconv"])  # doctest: +SKIP
    >>> acts, preds = features(tiles)  # tiles: uint8 (B, 224, 224, 3)  # doctest: +SKIP
    >>> grid, pred_grid = features(wsi)  # (n_x, n_y, F), NaN where no tissue  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        layers: str | Sequence[str] = (POSTCONV,),
        *,
        pooling: str | None = "avg",
        include_preds: bool = True,
        device: str | None = None,
        batch_size: int | None = None,
        precision: str = "float32",
    ) -> None:
        from histoatlas.models import LoadedModel, load_model

        loaded = isinstance(model, LoadedModel)
        if not loaded:
            model = load_model(model, device=device)
        if model.backend not in ("torch", "tensorflow"):
            raise ModelError(f"{model.path}: unknown model backend {model.backend!r}")
        if loaded and device is not None:
            model.to(device)
        self.model = model
        self.layers = _layer_list(layers)
        self.pooling = _check_pooling(pooling)
        self.include_preds = bool(include_preds)
        self.batch_size = resolve_batch_size(batch_size, self.model.device)
        self.precision = _check_precision(precision, self.model)
        self._targets = [self._resolve(layer) for layer in self.layers]
        if self.model.backend == "torch" and self.model.device.startswith("cuda"):
            import torch

            # tiles arrive channels-last (uint8 NHWC); keeping the weights so too lets
            # cuDNN run its NHWC kernels without converting every layer
            self.model.model.to(memory_format=torch.channels_last)
        self._widths: list[int] | None = None
        self._num_classes: int | None = None

    def __repr__(self) -> str:
        return (
            f"Features(model={str(self.model.path)!r}, layers={self.layers}, "
            f"pooling={self.pooling!r}, include_preds={self.include_preds}, "
            f"device={self.model.device!r}, batch_size={self.batch_size}, "
            f"precision={self.precision!r})"
        )

    # -- sizes ------------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        """Width F of the concatenated activations."""
        return sum(self.probe())

    @property
    def layer_slices(self) -> dict[str, tuple[int, int]]:
        """Columns ``[start, stop)`` of each layer in the features, in layer order."""
        bounds = np.cumsum([0, *self.probe()]).tolist()
        return {layer: (bounds[k], bounds[k + 1]) for k, layer in enumerate(self.layers)}

    @property
    def num_classes(self) -> int:
        """Width C of the predictions (the flattened final output)."""
        self.probe()
        return self._num_classes

    def probe(self, tile_px: int | None = None) -> list[int]:
        """Per-layer widths, from one forward pass of a blank tile if none ran yet.

        Parameters
        ----------
        tile_px : int, optional
            Edge of the blank tile; default the model's ``tile_px``.

        Returns
        -------
        list of int
            Width of each layer's pooled activations, in layer order.
        """
        if self._widths is None:
            px = int(tile_px or self.model.params.tile_px)
            self._forward(self.model.to_tensor(np.zeros((1, px, px, 3), np.uint8)))
        return self._widths

    # -- running ----------------------------------------------------------------------

    def __call__(self, obj, *, num_workers: int | None = None):
        """Activations of a batch of tiles or of every tissue tile of a slide.

        Parameters
        ----------
        obj : ndarray, torch.Tensor, tf.Tensor or WSI
            uint8 ``(B, H, W, 3)`` tiles; a float batch is taken as already
            preprocessed: a torch tensor ``(B, 3, H, W)`` for a torch model, an array
            or tf tensor ``(B, H, W, 3)`` for a Keras model. Or a :class:`WSI`.
        num_workers : int, optional
            Reader threads, for a WSI.

        Returns
        -------
        features : ndarray, shape (B, F) or (n_x, n_y, F), dtype float32
            For a WSI, a grid indexed ``[i, j]`` like ``wsi[i, j]``, NaN where no
            tile was kept.
        predictions : ndarray, shape (B, C) or (n_x, n_y, C), dtype float32
            Only when ``include_preds`` (then a tuple is returned).
        """
        if hasattr(obj, "iter_batches") and hasattr(obj, "grid_shape"):
            return self._slide_grid(obj, num_workers=num_workers)
        feats, preds = self.run_tiles(obj)
        return (feats, preds) if self.include_preds else feats

    def run_tiles(self, tiles) -> tuple[np.ndarray, np.ndarray | None]:
        """Activations (and predictions, or None) of a batch, in chunks of ``batch_size``."""
        n = len(tiles)
        if n == 0:
            px = tiles.shape[1] if np.ndim(tiles) == 4 and tiles.shape[-1] == 3 else None
            self.probe(px)
            preds = np.zeros((0, self._num_classes), np.float32) if self.include_preds else None
            return np.zeros((0, sum(self._widths)), np.float32), preds
        feats, preds = [], []
        for start in range(0, n, self.batch_size):
            f, p = self._forward(self.model.to_tensor(tiles[start : start + self.batch_size]))
            feats.append(_host(f))
            if p is not None:
                preds.append(_host(p))
        return np.concatenate(feats), (np.concatenate(preds) if preds else None)

    def iter_features(
        self, batches: Iterable, *, prefetch_depth: int = 2
    ) -> Iterator[tuple[object, np.ndarray, np.ndarray | None]]:
        """Run the model over tile batches while the next ones are read.

        Parameters
        ----------
        batches : iterable of TileBatch
            As ``WSI.iter_batches`` yields them (anything with a ``tiles`` array).
        prefetch_depth : int
            Batches a background thread reads ahead while the model runs.

        Yields
        ------
        batch, features, predictions
            The batch, its ``(B, F)`` activations and ``(B, C)`` predictions (None
            without ``include_preds``).

        Notes
        -----
        On CUDA the background thread also copies each batch into pinned host memory,
        and the next batch's forward pass is queued on the GPU before the previous
        batch's results are fetched, so the GPU does not wait on the host between
        batches. ``prefetch_depth=0`` reads in the calling thread, between forward
        passes: what a model on the CPU wants, as reading would slow it down otherwise.
        """
        if self.model.backend != "torch" or not self.model.device.startswith("cuda"):
            for batch in prefetch(batches, prefetch_depth):
                feats, preds = self.run_tiles(batch.tiles)
                yield batch, feats, preds
            return
        queued = None  # (batch, fetch) of the batch whose results are not fetched yet
        for batch, tiles in prefetch(_pinned(batches), max(1, prefetch_depth)):
            launched = batch, self._launch(tiles)
            if queued is not None:
                yield queued[0], *queued[1]()
            queued = launched
        if queued is not None:
            yield queued[0], *queued[1]()

    def _launch(self, tiles):
        """Queue a batch's forward passes on the GPU; return ``fetch() -> (feats, preds)``.

        The results are copied to pinned host memory asynchronously; ``fetch`` waits
        for that copy only.
        """
        import torch

        if len(tiles) == 0:
            return lambda: self.run_tiles(np.asarray(tiles))
        outputs = []
        for start in range(0, len(tiles), self.batch_size):
            f, p = self._forward(self.model.to_tensor(tiles[start : start + self.batch_size]))
            f = f.to("cpu", non_blocking=True)
            outputs.append((f, None if p is None else p.to("cpu", non_blocking=True)))
        done = torch.cuda.Event()
        done.record()

        def fetch() -> tuple[np.ndarray, np.ndarray | None]:
            done.synchronize()
            feats = np.concatenate([f.numpy() for f, _ in outputs])
            if not self.include_preds:
                return feats, None
            return feats, np.concatenate([p.numpy() for _, p in outputs])

        return fetch

    def _slide_grid(self, wsi, *, num_workers: int | None):
        n_x, n_y = wsi.grid_shape
        self.probe(wsi.tile_px)
        grid = np.full((n_x, n_y, sum(self._widths)), np.nan, np.float32)
        pred_grid = None
        if self.include_preds:
            pred_grid = np.full((n_x, n_y, self._num_classes), np.nan, np.float32)
        batches = wsi.iter_batches(self.batch_size, num_workers=num_workers)
        with contextlib.closing(self.iter_features(batches)) as results:
            for batch, feats, preds in results:
                i, j = batch.grid[:, 0], batch.grid[:, 1]
                grid[i, j] = feats
                if pred_grid is not None:
                    pred_grid[i, j] = preds
        return (grid, pred_grid) if self.include_preds else grid

    def _forward(self, x):
        """One forward pass with hooks; returns pooled features and predictions on device."""
        if self.model.backend == "tensorflow":
            return self._forward_keras(x)
        import torch

        store: dict[str, object] = {}
        handles = []
        for layer, module, how in self._targets:
            hook = partial(_keep, store, layer, self.pooling)
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
                parts = []
                for layer, _, how in self._targets:
                    if how == OUTPUT:
                        parts.append(pool(out, self.pooling))
                    elif layer in store:
                        parts.append(store[layer])
                    else:
                        raise LayerError(
                            f"layer {layer!r} did not run in the forward pass of "
                            f"{self.model.path}; choose a layer the network uses"
                        )
                feats = torch.cat(parts, dim=1)
                flat = out.reshape(out.shape[0], -1).float()
                preds = _activate(flat, self.model.params.output) if self.include_preds else None
        finally:
            for handle in handles:
                handle.remove()
        if self._widths is None:
            self._widths = [int(p.shape[1]) for p in parts]
            self._num_classes = int(flat.shape[1])
        return feats, preds

    def _forward_keras(self, x):
        """One run of the Keras sub-model; returns pooled features and predictions (numpy)."""
        fn = self.model.feature_function(self.layers, pooling=self.pooling)
        parts, flat = fn(x)
        parts = [p.numpy() for p in parts]
        flat = flat.numpy()
        if self._widths is None:
            self._widths = [int(p.shape[1]) for p in parts]
            self._num_classes = int(flat.shape[1])
        feats = np.concatenate(parts, axis=1)
        preds = _activate_numpy(flat, self.model.params.output) if self.include_preds else None
        return feats, preds

    def _resolve(self, layer: str):
        """(layer, module, how): how is 'forward', 'pre' (postconv) or 'output'.

        For a Keras model, (layer, symbolic tensor, 'keras'): checked here, built into
        the sub-model on the first forward pass.
        """
        if layer == OUTPUT:
            return layer, None, OUTPUT
        if self.model.backend == "tensorflow":
            return layer, self.model.layer_output(layer), "keras"
        if not self.model.supports_layers:
            raise LayerError(
                f"layer {layer!r}: {self.model.path} is a TorchScript model, which gives its "
                f"final output only (layer '{OUTPUT}'); forward hooks never fire on "
                "TorchScript, so named layers and 'postconv' need a model directory "
                "(params.json + state dict, the architecture rebuilt in Python)"
            )
        if layer == POSTCONV:
            return layer, find_classifier(self.model), "pre"
        modules = dict(self.model.model.named_modules())
        if layer and layer in modules:
            return layer, modules[layer], "forward"
        raise LayerError(unknown_layer_message(layer, self.model.layer_names()))


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


def postconv_undefined_message(path, names: Sequence[str], lacking: str) -> str:
    """Why ``postconv`` does not exist in a model, and the layers to ask for instead."""
    last = ", ".join(list(names)[-5:])
    return (
        f"'{POSTCONV}' (the input of the final classifier) is undefined for {path}: it has "
        f"{lacking} and its last convolution is not 1x1 (a convolutional classifier); ask "
        f"for a named layer instead (its last layers: {last}; all: LoadedModel.layer_names())"
    )


def unknown_layer_message(layer: str, names: Sequence[str]) -> str:
    """``layer 'x' not in model; available: ...``, shallow names first, truncated."""
    ordered = [POSTCONV, OUTPUT] + sorted(names, key=lambda n: n.count("."))
    shown = ", ".join(ordered[:_MAX_NAMES_SHOWN])
    if len(ordered) > _MAX_NAMES_SHOWN:
        shown += f", ... ({len(ordered) - _MAX_NAMES_SHOWN} more; LoadedModel.layer_names())"
    message = f"layer {layer!r} not in model; available: {shown}"
    close = difflib.get_close_matches(layer, list(names), n=3)
    if close:
        message += f"; did you mean {', '.join(map(repr, close))}?"
    return message


def pool(t, pooling: str | None):
    """Reduce one layer's output to ``(B, n)`` float32 on its device.

    4-D maps ``(B, C, H, W)`` are averaged or maxed over H, W; 3-D token outputs
    ``(B, T, D)`` over T; None flattens. 2-D outputs pass through. Half-precision
    outputs (autocast) are pooled in float32.
    """
    t = _first_tensor(t).float()
    if t.ndim in (3, 4) and pooling is not None:
        dims = (2, 3) if t.ndim == 4 else (1,)
        t = t.mean(dim=dims) if pooling == "avg" else t.amax(dim=dims)
    return t.reshape(t.shape[0], -1)


def resolve_batch_size(batch_size: int | None, device: str) -> int:
    """The argument, else ``$HISTOATLAS_BATCH_SIZE``, else a default for the device."""
    source = "batch_size"
    if batch_size is None:
        env = os.environ.get(BATCH_SIZE_ENV, "").strip()
        if env:
            source = f"${BATCH_SIZE_ENV}"
            try:
                batch_size = int(env)
            except ValueError:
                raise ConfigError(f"${BATCH_SIZE_ENV}={env!r} is not an integer") from None
        else:
            batch_size = _DEFAULT_BATCH.get(device.split(":")[0], 32)
    if int(batch_size) < 1:
        raise ConfigError(f"{source} must be at least 1, got {batch_size}")
    return int(batch_size)


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``iterable`` in a background thread, up to ``depth`` items ahead.

    Exceptions of the iterable reach the consumer; when the consumer stops early, the
    thread stops and closes the iterable (so its readers shut down).
    """
    if depth < 1:
        yield from iterable
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put((item, None)):
                    break
            else:
                put((end, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((end, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="histoatlas-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=60)


def _check_precision(precision: str, model) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return precision
    device = model.device.split(":")[0]
    if model.backend != "torch" or device not in ("cuda", "cpu"):
        raise ConfigError(
            f"precision {precision!r} needs a torch model on CUDA or the CPU; {model.path} is "
            f"a {model.backend} model on {model.device}: use precision 'float32'"
        )
    if device == "cpu" and precision == "float16":
        raise ConfigError(
            "precision 'float16' is for CUDA; on the CPU use 'bfloat16' (fast on CPUs with "
            "AVX-512 BF16 or AMX) or 'float32'"
        )
    return precision


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


def _layer_list(layers: str | Sequence[str]) -> list[str]:
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ConfigError("layers is empty; give at least one layer name, e.g. ['postconv']")
    duplicates = sorted({name for name in layers if layers.count(name) > 1})
    if duplicates:
        raise ConfigError(f"layers {layers} repeat {duplicates}; give each layer once")
    return layers


def _check_pooling(pooling: str | None) -> str | None:
    if isinstance(pooling, str) and pooling.lower() == "none":
        return None
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of 'avg', 'max', None")
    return pooling


def _first_tensor(out):
    """The tensor of a module output that may be a tuple/list (attention, RNNs)."""
    while isinstance(out, tuple | list):
        out = out[0]
    return out


def _keep(store: dict, layer: str, pooling: str | None, value) -> None:
    # pooled inside the hook, so full feature maps are never kept
    store[layer] = pool(value, pooling)


def _forward_hook(keep):
    return lambda module, args, output: keep(output)


def _pre_hook(keep):
    return lambda module, args: keep(args[0])


def _host(array) -> np.ndarray:
    """A device array (torch tensor or numpy) as a numpy array on the host."""
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


def _activate_numpy(out: np.ndarray, output: str) -> np.ndarray:
    """Softmax / sigmoid / identity over ``(B, C)`` float32, computed in float64."""
    x = out.astype(np.float64)
    if output == "softmax":
        x = np.exp(x - x.max(axis=1, keepdims=True))
        x /= x.sum(axis=1, keepdims=True)
    elif output == "sigmoid":
        x = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return x.astype(np.float32)


def _activate(out, output: str):
    if output == "softmax":
        return out.softmax(dim=1)
    if output == "sigmoid":
        return out.sigmoid()
    return out
