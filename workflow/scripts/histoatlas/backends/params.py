"""The ``params.json`` of a model directory."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from histoatlas.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUTS = ("softmax", "sigmoid", "none", "embedding")
INTERPOLATIONS = ("bilinear", "bicubic")
# How an encoder's embedding comes from its network: its output as it is, or a recipe on
# the tokens (B, T, D) of a ViT (class token, mean of the patch tokens, both concatenated).
EMBEDDINGS = ("output", "cls", "patch_mean", "cls+patch_mean")


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
    output : {"softmax", "sigmoid", "none", "embedding"}
        How the final output becomes ``predictions``; ``embedding``: the final output is
        an embedding (an encoder without a classifier), so there are no predictions.
    architecture_kwargs : dict
        Passed to the architecture builder (e.g. ``num_classes``), over the preset's.
    input_px : int or None
        The network's input edge, when it differs from ``tile_px``: each tile is resized
        so its shorter side is ``resize_px``, then centre-cropped to ``input_px``, on the
        model's device (the torch backend). None: ``tile_px``, no resizing.
    resize_px : int or None
        Edge after resizing (None: ``input_px``, i.e. no crop).
    interpolation : {"bilinear", "bicubic"}
        Of that resize (antialiased, as PIL does).
    embedding : str or None
        ``output``, or a recipe on a ViT's tokens: ``cls``, ``patch_mean``,
        ``cls+patch_mean`` (prefix tokens skipped); None: the preset's, else ``output``.
        ``postconv`` is then the embedding.
    weights_key, weights_prefix : str or None
        The state dict sits under this key of the file (``teacher``, ``model``); only keys
        starting with the prefix are kept, without it (``visual.``, ``trunk.``).
    ignore_keys : tuple of str
        Glob patterns of file keys to drop before strict loading (added to the preset's).
    key_conversion : str or None
        Rename the file's keys from another layout (``hf_vit``, ``hf_dinov2``,
        ``transpath_swin``, ``conch_v15``); None: the preset's.
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
    input_px: int | None = None
    resize_px: int | None = None
    interpolation: str = "bilinear"
    embedding: str | None = None
    weights_key: str | None = None
    weights_prefix: str | None = None
    ignore_keys: tuple[str, ...] = ()
    key_conversion: str | None = None

    @property
    def predicts(self) -> bool:
        """Whether the final output gives predictions; an encoder's (``output:
        "embedding"``) is its embedding, with nothing to plot or pick tiles by."""
        return self.output != "embedding"

    @property
    def network_px(self) -> int:
        """Edge of the network's input: ``input_px``, else ``tile_px``."""
        return int(self.input_px or self.tile_px)

    @property
    def resize_to(self) -> int:
        """Edge a tile is resized to before the centre crop: ``resize_px``, else the input's."""
        return int(self.resize_px or self.network_px)

    @property
    def transforms_input(self) -> bool:
        """Whether tiles are resized or cropped on their way into the network."""
        return self.resize_to != int(self.tile_px) or self.network_px != self.resize_to

    @property
    def view_fraction(self) -> float:
        """Fraction of a tile's edge the network sees (its centre): 1.0 without a crop."""
        return self.network_px / self.resize_to

    @classmethod
    def from_json(
        cls, path: str | Path, *, defaults: Callable[[Mapping], Mapping] | None = None
    ) -> ModelParams:
        """Read and check a ``params.json``; errors name the file and the key.

        Parameters
        ----------
        path : str or Path
        defaults : callable, optional
            ``raw params -> defaults``: keys the file leaves out (a backend's architecture
            preset); the file's own keys win.
        """
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
        if not isinstance(raw, dict):
            raise ModelError(f"{path}: params.json must hold a JSON object, not {raw!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        raw = {**(defaults(raw) if defaults else {}), **raw}
        for key in ("mean", "std", "class_names", "ignore_keys"):
            if isinstance(raw.get(key), list):
                raw[key] = tuple(raw[key])
        params = cls(**raw)
        params.check(path)
        return params

    def check(self, path: str | Path = "params.json") -> None:
        """Raise ModelError, naming ``path``, the key and the fix, for an invalid value."""
        _one_of(path, "backend", self.backend, ("torch", "tensorflow"))
        _one_of(path, "output", self.output, OUTPUTS)
        _one_of(path, "interpolation", self.interpolation, INTERPOLATIONS)
        if self.embedding is not None:
            _one_of(path, "embedding", self.embedding, EMBEDDINGS)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelError(f"{path}: mean and std need 3 values (RGB)")
        for key in ("tile_px", "input_px", "resize_px"):
            value = getattr(self, key)
            positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            if value is not None and not positive:
                raise ModelError(f"{path}: {key} must be a positive integer (pixels): {value!r}")
        if self.resize_to < self.network_px:
            raise ModelError(
                f"{path}: resize_px {self.resize_px} is smaller than input_px {self.input_px}, "
                "so the centre crop does not fit; set resize_px >= input_px, or leave it out "
                "(no crop)"
            )
        for key in ("weights_key", "weights_prefix", "key_conversion"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ModelError(f"{path}: {key} must be a string or null, got {value!r}")
        patterns = self.ignore_keys
        if not isinstance(patterns, tuple | list) or not all(isinstance(p, str) for p in patterns):
            raise ModelError(
                f"{path}: ignore_keys must be a list of glob patterns (strings), e.g. "
                f'["head.*", "*.attn_mask"]; got {patterns!r}'
            )

    def to_json(self, path: str | Path) -> None:
        """Write these parameters as ``params.json``."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("mean", "std", "class_names", "ignore_keys"):
            data[key] = list(data[key])
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _one_of(path, key: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ModelError(f"{path}: {key} {value!r} is not one of {shown}; fix params.json")


@dataclass(frozen=True)
class ModelSource:
    """A model path (directory or file), its ``params`` and the ``params_path`` they were
    read from (None when the defaults stand in for a bare file)."""

    path: Path
    params: ModelParams
    params_path: Path | None
