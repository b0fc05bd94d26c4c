"""Build a network from a preset or a ``params.json``, and load its weights file.

Every torch model directory is built here: :func:`resolve_spec` turns its
:class:`~histoatlas.backends.params.ModelParams` (or a preset name) into an
:class:`EncoderSpec`, :func:`build_encoder` builds the network and loads the file as the
spec says (key, prefix, conversion, ignored keys, then strict loading). A preset, or an
``embedding`` recipe, wraps the network in :class:`EncoderModel`, whose output (and so
``postconv``) is the embedding; any other architecture comes back as it is built.

Examples
--------
>>> model, info = build_encoder("uni", "/models/uni/pytorch_model.bin")  # doctest: +SKIP
>>> model(x).shape, info.dim  # doctest: +SKIP
(torch.Size([32, 1024]), 1024)
>>> spec = {"architecture": "virchow2", "architecture_kwargs": {"depth": 2}}
>>> model, info = build_encoder(spec)  # untrained, two blocks  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from histoatlas.backends.torch.architectures import build_architecture
from histoatlas.backends.torch.checkpoints import (
    drop_ignored,
    load_strict,
    read_weights,
    select_state_dict,
)
from histoatlas.backends.torch.classes import resolve_architecture_kwargs
from histoatlas.backends.torch.encoders.convert import CONVERSIONS, convert_state_dict
from histoatlas.backends.torch.encoders.presets import Preset, get_preset, is_preset
from histoatlas.backends.torch.encoders.recipes import check_recipe
from histoatlas.errors import ConfigError, ModelError

#: histoatlas's own encoder modules: name -> "module:function"
ENCODER_ARCHITECTURES = {
    "conch_v1": "histoatlas.backends.torch.encoders._conch:conch_v1",
    "conch_v15": "histoatlas.backends.torch.encoders._conch:conch_v15",
    "ctranspath": "histoatlas.backends.torch.encoders._cnn:ctranspath",
    "resnet50_trunc": "histoatlas.backends.torch.encoders._cnn:resnet50_trunc",
}

# params.json keys this module reads beside "architecture"
_SPEC_KEYS = ("architecture_kwargs", "embedding", "weights_key", "weights_prefix",
              "ignore_keys", "key_conversion", "class_names")  # fmt: skip


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build and load one network (a preset with overrides applied).

    ``kwargs`` is JSON-able (class names as strings); ``ignore_keys`` extends the
    preset's; the other fields replace the preset's when given. ``wrap``: the network is
    returned inside an :class:`EncoderModel` (presets, and ``embedding`` recipes).
    """

    name: str
    constructor: str
    kwargs: dict
    recipe: str
    dim: int | None
    # where the weights sit in the file, and what is done to its keys
    weights_key: str | None
    weights_prefix: str | None
    ignore_keys: tuple[str, ...]
    convert: str | None
    preset: Preset | None = None

    @property
    def wrap(self) -> bool:
        """Whether the network goes inside an :class:`EncoderModel`."""
        return self.preset is not None or self.recipe != "output"


@dataclass
class EncoderInfo:
    """What :func:`build_encoder` built and loaded (the preset holds the preprocessing)."""

    spec: EncoderSpec
    num_prefix_tokens: int | None = None
    weights: Path | None = None
    weights_format: str | None = None
    n_loaded: int = 0
    outside_prefix: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int | None:
        """Width of the embedding (None when no preset says)."""
        return self.spec.dim

    @property
    def recipe(self) -> str:
        """How the embedding is made from the network's output."""
        return self.spec.recipe


def resolve_spec(spec, *, source: str | Path = "params.json") -> EncoderSpec:
    """Turn a preset name, a :class:`Preset`, a params.json mapping or a ``ModelParams``
    into an :class:`EncoderSpec`.

    A mapping (or ``ModelParams``) names the preset or constructor in ``architecture``
    and may override: ``architecture_kwargs`` (merged over the preset's, e.g.
    ``{"depth": 2}``), ``embedding`` (the recipe), ``weights_key``, ``weights_prefix``,
    ``ignore_keys`` (added to the preset's) and ``key_conversion``. Outside a preset,
    ``class_names`` sets ``num_classes`` unless the kwargs do.

    Raises
    ------
    ConfigError
        For an unknown recipe or key conversion (naming ``source``).
    ModelError
        For a spec of another type.
    """
    if isinstance(spec, EncoderSpec):
        return spec
    if isinstance(spec, Preset):
        return _from_preset(spec, {}, source)
    if isinstance(spec, str):
        spec = {"architecture": spec}
    if not isinstance(spec, Mapping):
        if not hasattr(spec, "architecture"):
            raise ModelError(f"cannot build an encoder from a {type(spec).__name__}")
        spec = {k: getattr(spec, k) for k in ("architecture", *_SPEC_KEYS) if hasattr(spec, k)}
    overrides = {k: spec[k] for k in _SPEC_KEYS if spec.get(k) not in (None, {}, [], ())}
    architecture = str(spec.get("architecture", ""))
    if is_preset(architecture):
        return _from_preset(get_preset(architecture), overrides, source)
    kwargs = dict(overrides.get("architecture_kwargs", {}))
    if overrides.get("class_names") and "num_classes" not in kwargs:
        kwargs["num_classes"] = len(overrides["class_names"])
    return EncoderSpec(
        name=architecture,
        constructor=architecture,
        kwargs=kwargs,
        recipe=_recipe(overrides.get("embedding", "output"), source),
        dim=None,
        weights_key=overrides.get("weights_key"),
        weights_prefix=overrides.get("weights_prefix"),
        ignore_keys=tuple(overrides.get("ignore_keys", ())),
        convert=_conversion(overrides.get("key_conversion"), source),
    )


def _from_preset(preset: Preset, overrides: Mapping, source) -> EncoderSpec:
    return EncoderSpec(
        name=preset.name,
        constructor=preset.constructor,
        kwargs={**preset.kwargs, **overrides.get("architecture_kwargs", {})},
        recipe=_recipe(overrides.get("embedding", preset.recipe), source),
        dim=preset.dim,
        weights_key=overrides.get("weights_key", preset.weights_key),
        weights_prefix=overrides.get("weights_prefix", preset.weights_prefix),
        ignore_keys=preset.ignore_keys + tuple(overrides.get("ignore_keys", ())),
        convert=_conversion(overrides.get("key_conversion", preset.convert), source),
        preset=preset,
    )


def _recipe(recipe: str, source) -> str:
    """``output`` or a token recipe (see :mod:`.recipes`)."""
    return "output" if recipe == "output" else check_recipe(recipe, where=f"{source}: embedding")


def _conversion(name: str | None, source) -> str | None:
    if name is not None and name not in CONVERSIONS:
        raise ConfigError(
            f"{source}: key_conversion {name!r} is not one of {', '.join(CONVERSIONS)}; fix "
            "params.json, or leave it out when the file has the layout the architecture builds"
        )
    return name


def build_backbone(spec: EncoderSpec, *, device: str | None = None):
    """Build the network of ``spec`` with untrained weights (``device="meta"``: no memory).

    Raises
    ------
    ModelError
        If the constructor is unknown or rejects the kwargs.
    """
    import torch

    source, _, bare = spec.constructor.rpartition(":")
    where = torch.device("meta") if device == "meta" else contextlib.nullcontext()
    with where:
        if source in ("", "histoatlas") and bare in ENCODER_ARCHITECTURES:
            module, _, func = ENCODER_ARCHITECTURES[bare].partition(":")
            try:
                builder = getattr(importlib.import_module(module), func)
                return builder(**resolve_architecture_kwargs(spec.kwargs))
            except TypeError as e:
                raise ModelError(
                    f"cannot build encoder {spec.name!r} ({spec.constructor}) with "
                    f"architecture_kwargs {spec.kwargs}: {e}"
                ) from None
        return build_architecture(spec.constructor, spec.kwargs)


def build_encoder(spec, weights=None, *, device: str | None = "cpu",
                  trust_model_code: bool = False, source: str | Path = "params.json"):  # fmt: skip
    """Build a network and load its weights.

    Parameters
    ----------
    spec : str, Preset, mapping or ModelParams
        A preset name (``"uni"``), or params.json content (see :func:`resolve_spec`).
    weights : path, optional
        The weights file, in the layout its authors publish. None: untrained weights.
    device : str or None
        Where the module goes (None: left on the CPU). ``"meta"`` builds without memory
        (and then loads the file's tensors by assignment).
    trust_model_code : bool
        Allow a full unpickle of a trusted torch file (see ``read_checkpoint``).
    source : str or Path
        The params.json, named in errors.

    Returns
    -------
    model : torch.nn.Module
        In eval mode: an :class:`EncoderModel` (``model(x)`` is the embedding,
        ``model.backbone`` the network) when the spec wraps, else the network itself.
    info : EncoderInfo

    Raises
    ------
    ModelError
        If the file cannot be read safely or its keys do not fit (with the fix).
    """
    from histoatlas.backends.torch.encoders.model import EncoderModel

    spec = resolve_spec(spec, source=source)
    backbone = build_backbone(spec, device=device)
    info = EncoderInfo(spec=spec)
    if weights is not None:
        load_weights(backbone, spec, weights, info=info, trust_model_code=trust_model_code)
    model = backbone
    if spec.wrap:
        model = EncoderModel(backbone, recipe=spec.recipe, name=spec.name)
        info.num_prefix_tokens = model.num_prefix_tokens
    model.eval()
    if device not in (None, "meta"):
        model.to(device)
    return model, info


def load_weights(backbone, spec: EncoderSpec, weights, *, info: EncoderInfo | None = None,
                 trust_model_code: bool = False) -> EncoderInfo:  # fmt: skip
    """Read ``weights``, select, convert and drop keys as ``spec`` says, load strictly."""
    info = info or EncoderInfo(spec=spec)
    obj, info.weights_format = read_weights(weights, trust_model_code=trust_model_code)
    state = prepare_state_dict(obj, spec, backbone, source=weights, info=info)
    load_strict(backbone, state, weights=weights, architecture=spec.name)
    info.weights, info.n_loaded = Path(weights), len(state)
    return info


def prepare_state_dict(obj, spec: EncoderSpec, backbone, *, source="weights",
                       info: EncoderInfo | None = None) -> dict:  # fmt: skip
    """The state dict ``backbone`` loads: key, prefix, conversion, then ignored keys dropped.

    ``ignore_keys`` patterns see the names after conversion (conversions pass the keys
    they do not know through unchanged). Works on meta tensors.
    """
    state, selection = select_state_dict(
        obj, weights_key=spec.weights_key, weights_prefix=spec.weights_prefix, source=source
    )
    state = convert_state_dict(spec.convert, state, backbone)
    state, ignored = drop_ignored(state, spec.ignore_keys)
    if info is not None:
        info.outside_prefix, info.ignored = selection.outside_prefix, ignored
    return state
