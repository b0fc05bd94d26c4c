"""Per-tile activations of named layers, as slideflow's ``Features`` computes them.

The backend (:meth:`histoatlas.backends.LoadedModel.feature_function`) collects the layers
in one forward pass, pools them on the device and concatenates them in the order given.
Two names are special: ``postconv`` is the input of the final classifier and ``output``
the network's final output before the params' activation; they shadow layers of the same
name. This module batches tiles, runs whole slides and never asks which framework runs
the network.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from histoatlas.backends import LoadedModel, as_loaded_model, load_model
from histoatlas.backends.base import POSTCONV, check_pooling
from histoatlas.errors import ConfigError

log = logging.getLogger(__name__)

_DEFAULT_BATCH = {"cuda": 128, "mps": 64, "cpu": 32}


class Features:
    """Compute activations of chosen layers for tiles or whole slides.

    Parameters
    ----------
    model : str, PathLike or LoadedModel
        A model path (see :func:`histoatlas.load_model`) or a loaded model, PyTorch or
        Keras.
    layers : str or sequence of str
        Layer names as ``dict(model.named_modules())`` (torch) or the Keras layer names
        give them, plus ``postconv`` (input of the final classifier; an encoder's
        embedding) and ``output`` (final output). Their pooled activations are
        concatenated in this order. A torch layer may carry a recipe,
        ``"blocks.11:cls"`` (see :mod:`histoatlas.backends.torch.encoders.recipes`).
    pooling : {"avg", "max", None}
        How 4-D maps (torch ``(B, C, H, W)``, Keras ``(B, H, W, C)``) are reduced over
        H, W, and 3-D ``(B, T, D)`` token outputs over T (a ViT's over its patch tokens,
        class and register tokens skipped, as timm does). None flattens instead, in the
        framework's own order (C, H, W for torch; H, W, C for Keras).
    include_preds : bool
        Also return predictions: the final output through the params' ``output``
        activation (softmax, sigmoid or none). An encoder (``output: "embedding"``, as
        every preset) has no predictions: its final output is the embedding, so this is
        False for it and a call returns the features alone.
    device : str, optional
        Device; default CUDA, then MPS (torch only), then CPU. Moves a given LoadedModel.
    batch_size : int, optional
        Tiles per forward pass; default 128 on CUDA, 64 on MPS, 32 on CPU.
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
        if isinstance(model, LoadedModel):
            model = as_loaded_model(model, device=device)
        else:
            model = load_model(model, device=device)
        self.model = model
        self.layers = _layer_list(layers)
        self.pooling = check_pooling(pooling)
        self.include_preds = bool(include_preds) and model.params.predicts
        if include_preds and not self.include_preds:
            log.info(
                f"{model.path}: an encoder (output 'embedding'), whose final output is the "
                "embedding: no predictions"
            )
        self.batch_size = resolve_batch_size(batch_size, self.model.device)
        self.precision = self.model.check_precision(precision)
        self._function = model.feature_function(
            self.layers, pooling=self.pooling, precision=self.precision
        )
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
        if self._function.widths is None:
            px = int(tile_px or self.model.params.tile_px)
            self._forward(self.model.to_tensor(np.zeros((1, px, px, 3), np.uint8)))
        return self._function.widths

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
            return np.zeros((0, sum(self._function.widths)), np.float32), preds
        feats, preds = [], []
        host = self.model.to_host
        for start in range(0, n, self.batch_size):
            f, p = self._forward(self.model.to_tensor(tiles[start : start + self.batch_size]))
            feats.append(host(f))
            if p is not None:
                preds.append(host(p))
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
        ``prefetch_depth=0`` reads in the calling thread, between forward passes: what a
        model on the CPU wants, as reading would slow it down otherwise. A backend may
        overlap more (the torch backend on CUDA queues the next batch on the GPU before the
        previous one's results are fetched).
        """
        return self.model.forward_batches(batches, self._forward, prefetch_depth=prefetch_depth)

    def _slide_grid(self, wsi, *, num_workers: int | None):
        n_x, n_y = wsi.grid_shape
        self.probe(wsi.tile_px)
        grid = np.full((n_x, n_y, sum(self._function.widths)), np.nan, np.float32)
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
        """One forward pass; pooled features and predictions (or None), on the device."""
        feats, final = self._function(x)
        if self._num_classes is None:
            self._num_classes = int(final.shape[1])
        preds = self.model.activate(final, self.model.params.output) if self.include_preds else None
        return feats, preds


def resolve_batch_size(batch_size: int | None, device: str) -> int:
    """The argument, else a default for the device (128 on CUDA, 64 on MPS, 32 on the CPU)."""
    if batch_size is None:
        batch_size = _DEFAULT_BATCH.get(device.split(":")[0], 32)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
    return int(batch_size)


def _layer_list(layers: str | Sequence[str]) -> list[str]:
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ConfigError("layers is empty; give at least one layer name, e.g. ['postconv']")
    duplicates = sorted({name for name in layers if layers.count(name) > 1})
    if duplicates:
        raise ConfigError(f"layers {layers} repeat {duplicates}; give each layer once")
    return layers
