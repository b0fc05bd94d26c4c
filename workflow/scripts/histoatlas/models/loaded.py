"""The framework-agnostic face of a loaded model, and its input normalisation.

Every backend (``torch_model``, ``keras_model``) returns a :class:`LoadedModel`
subclass, so ``Features``, ``extract_slide`` and the saliency code ask the same questions
(preprocess, layer names, device, provenance) whatever framework runs the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoatlas.models.params import ModelParams


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
class LoadedModel:
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
        for Keras ``"keras"``, ``"h5"`` or ``"savedmodel"`` (the file format read).
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
        """Normalise uint8 RGB tiles the way the network was trained.

        Parameters
        ----------
        images : ndarray, shape (..., H, W, 3), dtype uint8

        Returns
        -------
        ndarray, shape (..., H, W, 3), dtype float32
            ``(images / 255 - mean) / std`` with the ``params.json`` statistics,
            channels last whatever the framework.
        """
        return Normalizer(self.params.mean, self.params.std)(images)

    def layer_names(self) -> list[str]:
        """Names of the layers that can be requested, as the framework names them."""
        raise NotImplementedError

    def sha256(self) -> str:
        """SHA-256 of ``weights_path`` (computed once, then cached)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.weights_path)
        return self._sha256


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
