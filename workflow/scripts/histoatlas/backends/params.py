"""The ``params.json`` of a model directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from histoatlas.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelParams:
    """What a model directory's ``params.json`` says about its network.

    Attributes
    ----------
    backend : {"torch", "tensorflow"}
    architecture : str
        ``demo_cnn`` (histoatlas's own), ``torchvision:<name>``, ``timm:<name>``, or a
        bare name looked up in that order.
    weights : str
        Weights file, relative to the model directory.
    tile_px, tile_um : int, float or str
        The tiling the network was trained on (``tile_um`` may be ``"20x"``).
    mean, std : tuple of float
        Per-channel normalisation applied to RGB in [0, 1].
    class_names : tuple of str
        One name per output; empty for a feature extractor without a classifier.
    output : {"softmax", "sigmoid", "none"}
        How the final output becomes ``predictions``.
    architecture_kwargs : dict
        Passed to the architecture builder (e.g. ``num_classes``).
    """

    backend: str = "torch"
    architecture: str = "demo_cnn"
    weights: str = "weights.pt"
    tile_px: int = 224
    tile_um: float | str = 112
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    output: str = "softmax"
    architecture_kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelParams:
        """Read and check a ``params.json``; errors name the file and the key."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(
                f"model directory {path.parent} has no params.json; a model directory needs "
                "params.json (backend, architecture, weights, tile_px, tile_um, ...) beside "
                "its weights"
            ) from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path} is not valid JSON: {e}") from None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for key in ("mean", "std", "class_names"):
            if key in raw:
                raw[key] = tuple(raw[key])
        params = cls(**raw)
        if params.backend not in ("torch", "tensorflow"):
            raise ModelError(
                f"{path}: backend {params.backend!r} is not one of 'torch', 'tensorflow'"
            )
        if params.output not in ("softmax", "sigmoid", "none"):
            raise ModelError(
                f"{path}: output {params.output!r} is not one of 'softmax', 'sigmoid', 'none'"
            )
        if len(params.mean) != 3 or len(params.std) != 3:
            raise ModelError(f"{path}: mean and std need 3 values (RGB)")
        return params

    def to_json(self, path: str | Path) -> None:
        """Write these parameters as ``params.json``."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("mean", "std", "class_names"):
            data[key] = list(data[key])
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class ModelSource:
    """A model path (directory or file), its ``params`` and the ``params_path`` they were
    read from (None when the defaults stand in for a bare file)."""

    path: Path
    params: ModelParams
    params_path: Path | None
