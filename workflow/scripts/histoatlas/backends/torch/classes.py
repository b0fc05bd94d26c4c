"""Name classes in ``architecture_kwargs``: ``"mlp_layer": "swiglupacked"`` and the like.

``params.json`` is JSON, so a constructor argument that takes a class (timm's
``mlp_layer``, ``act_layer``, ``norm_layer``) arrives as a string. This small, explicit
registry turns such strings into classes; anything else passes through unchanged. A
value may also be ``{"name": "layernorm", "eps": 1e-12}``: the class with those keyword
arguments bound (``functools.partial``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from histoatlas.errors import ModelError

# constructor argument -> {name: "module:attribute"}; imported only when used
CLASS_KWARGS: dict[str, dict[str, str]] = {
    "mlp_layer": {
        "mlp": "timm.layers:Mlp",
        "swiglupacked": "timm.layers:SwiGLUPacked",
        "swiglu": "timm.layers:SwiGLU",
        "glumlp": "timm.layers:GluMlp",
        "gatedmlp": "timm.layers:GatedMlp",
    },
    "act_layer": {
        "gelu": "torch.nn:GELU",
        "silu": "torch.nn:SiLU",
        "relu": "torch.nn:ReLU",
        "tanh": "torch.nn:Tanh",
        "quickgelu": "timm.layers:QuickGELU",
    },
    "norm_layer": {
        "layernorm": "torch.nn:LayerNorm",
        "rmsnorm": "timm.layers:RmsNorm",
        "batchnorm2d": "torch.nn:BatchNorm2d",
    },
}

_PREFIXES = ("timm.layers.", "torch.nn.", "nn.", "timm.")


def resolve_architecture_kwargs(kwargs: Mapping | None) -> dict:
    """Replace class names in constructor kwargs by the classes.

    Parameters
    ----------
    kwargs : mapping or None
        ``architecture_kwargs`` as read from JSON. For the keys in :data:`CLASS_KWARGS`
        a string value is a class name (case-insensitive; ``SwiGLUPacked``,
        ``timm.layers.SwiGLUPacked`` and ``swiglupacked`` are the same), or a mapping
        ``{"name": ..., **bound_kwargs}``. Classes given as Python objects pass through.

    Returns
    -------
    dict
        A new dict; the input is not modified.

    Raises
    ------
    ModelError
        For an unknown name: the message lists the names valid for that argument.

    Examples
    --------
    >>> resolve_architecture_kwargs({"act_layer": "silu", "depth": 2})["act_layer"]
    <class 'torch.nn.modules.activation.SiLU'>
    """
    out = dict(kwargs or {})
    for key, value in out.items():
        if key in CLASS_KWARGS and isinstance(value, str | Mapping):
            out[key] = _resolve(key, value)
    return out


def _resolve(key: str, value) -> Callable:
    import functools

    if isinstance(value, Mapping):
        bound = dict(value)
        name = bound.pop("name", None)
        if not isinstance(name, str):
            raise ModelError(
                f"architecture_kwargs {key!r}: {dict(value)} needs a 'name', e.g. "
                f'{{"name": "{next(iter(CLASS_KWARGS[key]))}", ...}}'
            )
        return functools.partial(_resolve(key, name), **bound)
    name = value.lower()
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    valid = CLASS_KWARGS[key]
    if name not in valid:
        raise ModelError(
            f"architecture_kwargs {key!r}: unknown class {value!r}; valid names: {', '.join(valid)}"
        )
    import importlib

    module, _, attr = valid[name].partition(":")
    return getattr(importlib.import_module(module), attr)
