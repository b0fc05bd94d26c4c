"""The one interface every backend implements: :class:`LoadedModel`.

A backend (``histoatlas.backends.torch``, ``histoatlas.backends.keras``) loads a network and
returns a :class:`LoadedModel` subclass. Callers (``Features``, ``extract_slide``, the
saliency maps, the demo) only ever use this interface, so they never ask which framework
runs the network:

- identity: ``params``, ``path``, ``kind``, ``class_names``, :meth:`~LoadedModel.sha256`;
- input: :meth:`~LoadedModel.preprocess` (numpy, channels last), :meth:`~LoadedModel.model_view`
  (the tiles as the network sees them: resized and cropped when params.json says so) and
  :meth:`~LoadedModel.to_tensor` (a uint8 batch to the device, transformed and normalised
  there);
- layers: :meth:`~LoadedModel.layer_names`, and :meth:`~LoadedModel.feature_function`, which
  returns activations of named layers (pooled, concatenated) and the final output in one
  forward pass, on the device; :meth:`~LoadedModel.activate`, :meth:`~LoadedModel.to_host`;
- running many batches: :meth:`~LoadedModel.forward_batches` (overlapping host and device
  work where the framework can), :meth:`~LoadedModel.cpu_threads`,
  :meth:`~LoadedModel.check_precision`, :meth:`~LoadedModel.to` (device);
- gradients for saliency: :meth:`~LoadedModel.gradients`, the call-model function PAIR's
  ``saliency.core`` calls.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from histoatlas.backends.gradients import GradientFunction
from histoatlas.backends.params import ModelParams
from histoatlas.errors import ConfigError, ModelError
from histoatlas.prefetch import prefetch

# Two layer names every backend understands: the input of the final classifier, and the
# network's final output (before the params' activation). They shadow layers so named.
POSTCONV = "postconv"
OUTPUT = "output"
POOLINGS = ("avg", "max", None)
# Compute precisions of a forward pass; activations are returned as float32 anyway.
PRECISIONS = ("float32", "bfloat16", "float16")
_MAX_NAMES_SHOWN = 40


class FeatureFunction(Protocol):
    """What :meth:`LoadedModel.feature_function` returns.

    Called on a device batch (what :meth:`LoadedModel.to_tensor` gives), it returns the
    pooled activations of the layers, concatenated in their order, ``(B, F)`` float32, and
    the final output flattened to ``(B, C)`` float32, both on the device. ``widths`` holds
    each layer's width once the function has run.
    """

    widths: list[int] | None

    def __call__(self, x: Any) -> tuple[Any, Any]: ...


class Normalizer:
    """Map uint8 RGB to float32 ``(x / 255 - mean) / std``, channels last.

    A small class rather than a closure so that it pickles (multiprocessing data
    loaders) and shows its settings in ``repr``.

    Parameters
    ----------
    mean, std : sequence of 3 float
        Per-channel statistics of RGB in [0, 1].

    Examples
    --------
    >>> norm = Normalizer((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> norm(np.array([[0, 255, 51]], dtype=np.uint8)).round(2).tolist()
    [[-1.0, 1.0, -0.6]]
    """

    def __init__(self, mean, std) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,):
            raise ValueError(f"mean and std need 3 values, got {mean!r} and {std!r}")

    def __call__(self, images) -> np.ndarray:
        """Normalise ``(..., H, W, 3)`` uint8 (or 0-255 float) images to float32."""
        x = np.asarray(images)
        if x.shape[-1:] != (3,):
            raise ValueError(f"images must be channels-last RGB (..., H, W, 3), got {x.shape}")
        return ((x.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)

    def __repr__(self) -> str:
        return f"Normalizer(mean={self.mean.tolist()}, std={self.std.tolist()})"


@dataclass
class LoadedModel(ABC):
    """A network ready for inference, with what histoatlas needs to know about it.

    Attributes
    ----------
    model : object
        The network: a ``torch.nn.Module`` in eval mode on ``device`` (torch backend) or
        a Keras model (tensorflow backend).
    backend : {"torch", "tensorflow"}
    params : ModelParams
        The model's ``params.json``, or defaults when a bare model file has none.
    path : Path
        What was loaded (model directory or file).
    device : str
        Where the network runs (``"cuda"``, ``"mps"``, ``"cpu"``).
    kind : str
        ``"directory"`` (architecture rebuilt in Python, every layer reachable),
        ``"torchscript"`` (final output only) or ``"pickled"`` (a whole pickled module);
        for Keras ``"keras"``, ``"h5"`` or ``"savedmodel"`` (the file format read); ``"bare"``
        for a network handed over in memory.
    weights_path : Path
        The file whose bytes identify the model (hashed into ``model_sha256``).
    params_path : Path or None
        The ``params.json`` read, or None when defaults were used.
    """

    model: Any
    backend: str
    params: ModelParams
    path: Path
    device: str
    kind: str
    weights_path: Path
    params_path: Path | None = None
    _sha256: str | None = field(default=None, init=False, repr=False)

    @property
    def class_names(self) -> list[str]:
        """Output class names from ``params.json`` (empty when it lists none)."""
        return list(self.params.class_names)

    @property
    def supports_layers(self) -> bool:
        """Whether named intermediate layers (and ``postconv``) can be read."""
        return True

    def preprocess(self, images) -> np.ndarray:
        """Tiles as the network's input: its view of them (:meth:`model_view`), normalised.

        Parameters
        ----------
        images : ndarray, shape (..., H, W, 3), dtype uint8

        Returns
        -------
        ndarray, shape (..., h, w, 3), dtype float32
            ``(view / 255 - mean) / std`` with the ``params.json`` statistics, channels
            last whatever the framework; ``h = w = input_px`` when params.json resizes.
        """
        return Normalizer(self.params.mean, self.params.std)(self.model_view(images))

    def model_view(self, images) -> np.ndarray:
        """uint8 tiles as the network sees them, before normalisation.

        The tiles themselves, unless ``params.json`` gives ``input_px``: then resized and
        centre-cropped as the backend does on the way into the network (the torch
        backend; see :mod:`histoatlas.backends.torch.transform`). Saliency maps are drawn
        over this view, since it is what they explain.

        Raises
        ------
        ModelError
            If params.json asks for a resize this backend does not do.
        """
        if self.params.transforms_input:
            raise ModelError(
                f"{self.path}: input_px/resize_px resize tiles in the torch backend only, "
                f"not the {self.backend} backend"
            )
        return np.asarray(images)

    def sha256(self) -> str:
        """SHA-256 of ``weights_path`` (computed once, then cached)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256

    # -- what every backend implements ------------------------------------------------

    @abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the layers that can be requested, as the framework names them."""

    @abstractmethod
    def to(self, device: str | None) -> LoadedModel:
        """Run on ``device`` (None: the backend's best); returns self."""

    @abstractmethod
    def to_tensor(self, images) -> Any:
        """A uint8 ``(B, H, W, 3)`` batch (or an already preprocessed float batch in the
        framework's layout) as the network's input on its device."""

    @abstractmethod
    def feature_function(
        self, layers: Sequence[str], *, pooling: str | None, precision: str
    ) -> FeatureFunction:
        """Activations of ``layers`` (names, ``postconv``, ``output``) and the final output.

        Raises
        ------
        LayerError
            A layer is not in the model (the message lists the valid names), or the model
            offers no layers (TorchScript, a subclassed Keras model) but ``output``.
        """

    @abstractmethod
    def activate(self, final: Any, output: str) -> Any:
        """The final output ``(B, C)`` through ``output`` (softmax, sigmoid or none)."""

    @abstractmethod
    def to_host(self, array: Any) -> np.ndarray:
        """A device array as a numpy array."""

    @abstractmethod
    def gradients(self) -> GradientFunction:
        """The gradient function PAIR's ``saliency.core`` calls, for this model."""

    # -- defaults a backend may refine ------------------------------------------------

    def check_precision(self, precision: str) -> str:
        """``precision`` if this model can run the forward pass in it, else ConfigError."""
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision != "float32":
            raise ConfigError(
                f"precision {precision!r} needs a torch model on CUDA or the CPU; {self.path} "
                f"is a {self.backend} model on {self.device}: use precision 'float32'"
            )
        return precision

    def cpu_threads(self, num_readers: int | None) -> AbstractContextManager[int]:
        """Context in which the model's CPU threads leave room for ``num_readers`` readers;
        yields the thread count in effect (0: the backend does not change it)."""
        return contextlib.nullcontext(0)

    def forward_batches(
        self,
        batches: Iterable,
        run: Callable[[Any], tuple[Any, Any]],
        *,
        prefetch_depth: int = 2,
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray | None]]:
        """``(batch, features, predictions)`` for each tile batch, read ahead in a thread.

        ``run`` maps a device batch to device ``(features, predictions or None)``.
        ``prefetch_depth=0`` reads in the calling thread, between forward passes (what a
        model on the CPU wants: reading would slow it down otherwise).
        """
        for batch in prefetch(batches, prefetch_depth):
            feats, preds = run(self.to_tensor(batch.tiles))
            yield batch, self.to_host(feats), None if preds is None else self.to_host(preds)


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_pooling(pooling: str | None) -> str | None:
    """``pooling`` as one of :data:`POOLINGS` (the string ``"none"`` is None)."""
    if isinstance(pooling, str) and pooling.lower() == "none":
        return None
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of 'avg', 'max', None")
    return pooling


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


def postconv_undefined_message(path, names: Sequence[str], lacking: str) -> str:
    """Why ``postconv`` does not exist in a model, and the layers to ask for instead."""
    last = ", ".join(list(names)[-5:])
    return (
        f"'{POSTCONV}' (the input of the final classifier) is undefined for {path}: it has "
        f"{lacking} and its last convolution is not 1x1 (a convolutional classifier); ask "
        f"for a named layer instead (its last layers: {last}; all: LoadedModel.layer_names())"
    )
