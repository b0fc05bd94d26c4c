"""Coerce command-line config overrides to the types the config schema declares.

``snakemake --config "umap={n_neighbors: 15}"`` merges the nested key, but Snakemake 9
hands the nested value over as the string ``'15'``, which the schema would reject (or,
worse, pass on as a string). Each string whose schema type is not ``string`` is parsed
as YAML and kept when it gives the declared type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from histoatlas.errors import ConfigError
from histoatlas.io.tiling import parse_tile_um

_PY_TYPES = {
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
    "string": str,
}


def _types(schema: dict) -> list[str]:
    if "type" in schema:
        t = schema["type"]
        return t if isinstance(t, list) else [t]
    out: list[str] = []
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        out += _types(option)
    if "enum" in schema:
        out += sorted({_json_type(v) for v in schema["enum"]})
    return out


def _json_type(value: Any) -> str:
    for name, py in _PY_TYPES.items():
        if isinstance(value, py) and not (
            name in ("integer", "number") and isinstance(value, bool)
        ):
            return name
    return "string"


def _matches(value: Any, types: list[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, _PY_TYPES[t]) for t in types if t != "boolean")


def coerce_config(value: Any, schema: dict) -> Any:
    """Return ``value`` with strings parsed where the schema expects another type.

    Parameters
    ----------
    value : any
        A config (sub)tree, as Snakemake built it from config files and ``--config``.
    schema : dict
        The JSON schema of that (sub)tree.

    Returns
    -------
    any
        A new tree; the input is not modified. Values that do not parse into a declared
        type are left as they are, for schema validation to report.

    Examples
    --------
    >>> schema = {"type": "object", "properties": {"k": {"type": "integer"}}}
    >>> coerce_config({"k": "15"}, schema)
    {'k': 15}
    """
    types = _types(schema)
    if isinstance(value, str) and set(types) - {"string"}:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if not isinstance(parsed, str) and _matches(parsed, types):
            value = parsed
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: coerce_config(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_config(v, schema["items"]) for v in value]
    return value


def check_config(config: dict, schema: dict) -> None:
    """Raise a short ConfigError naming the key if ``config`` breaks ``schema``.

    Snakemake's own validation reports the same problem as a dump of the JSON schema;
    this names the key as a dotted path (``tiles.px``), the value, what is wrong, what
    the key means and its default, in one line. Run it on the coerced config (see
    :func:`coerce_config`), before Snakemake's validation fills in the defaults.

    Parameters
    ----------
    config : dict
        The configuration.
    schema : dict
        Its JSON schema (``workflow/schemas/config.schema.yaml``).

    Raises
    ------
    ConfigError
        For the most relevant violation (``jsonschema.exceptions.best_match``).

    Examples
    --------
    >>> from histoatlas.errors import ConfigError
    >>> schema = {"type": "object", "properties": {"k": {"type": "integer"}}}
    >>> try:
    ...     check_config({"k": "many"}, schema)
    ... except ConfigError as e:
    ...     print(e)
    config key `k`: 'many' is not of type 'integer'; fix it in the config file or in --config
    """
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    error = best_match(validator.iter_errors(config))
    if error is None:
        return
    key = ""
    for part in error.absolute_path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    where = f"config key `{key}`" if key else "config"
    sub = _subschema(schema, list(error.absolute_path))
    hints = []
    if error.validator == "additionalProperties" and sub.get("properties"):
        hints.append(f"known keys{f' of `{key}`' if key else ''}: {', '.join(sub['properties'])}")
    elif sub.get("description"):
        about = " ".join(str(sub["description"]).split()).rstrip(".")
        default = f"; default {sub['default']!r}" if "default" in sub else ""
        hints.append(f"`{key}`: {about}{default}")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ConfigError(f"{where}: {error.message}{hint}; fix it in the config file or in --config")


def _subschema(schema: dict, path: list) -> dict:
    """The schema of the value at ``path`` (keys and list indices) of the config."""
    for part in path:
        if isinstance(part, int):
            schema = schema.get("items", {}) if isinstance(schema.get("items"), dict) else {}
        else:
            schema = schema.get("properties", {}).get(part, {})
    return schema


# Model file or folder names that say nothing about the model: the folder above names it.
GENERIC_MODEL_NAMES = frozenset(
    {"model", "models", "weights", "checkpoint", "checkpoints", "pytorch_model", "saved_model"}
)
# Settings of `tiles` and `features` that are not part of the featureset's results (the
# reader gives OpenSlide's pixels whichever it is).
_NOT_IN_FEATURESET = {
    "tiles": ("px", "um", "allow_model_mismatch", "reader"),
    "features": ("name", "batch_size"),
}


def model_label(model: str | Path) -> str:
    """A short name for a model path: its folder or file name, made safe for paths.

    Generic names (``model``, ``weights``, ``pytorch_model``, ...) say nothing, so the
    name of the folder above is used instead (``resources/demo/model`` -> ``demo``,
    ``/models/uni/pytorch_model.bin`` -> ``uni``).

    Examples
    --------
    >>> model_label("/models/UNI2-h"), model_label("resources/demo/model")
    ('UNI2-h', 'demo')
    >>> model_label("/data/nets/resnet50 tcga.pt")
    'resnet50_tcga'
    """
    path = Path(model)
    name = path.stem if path.suffix and not path.is_dir() else path.name
    while name.lower() in GENERIC_MODEL_NAMES and path.parent.name:
        path = path.parent
        name = path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def model_tiling(tiles: dict, model_px, model_um, *, model: str, source) -> dict:
    """``tiles`` with ``px`` and ``um`` taken from the model where the config leaves them null.

    Parameters
    ----------
    tiles : dict
        The config's ``tiles`` (``px``, ``um`` may be None).
    model_px, model_um
        The model's ``tile_px`` and ``tile_um`` (its params.json, or its architecture
        preset: UNI's 256 px at 20x).
    model : str
        The model path, for messages.
    source : str, Path or None
        Where the model's values come from; None when it declares none (a bare file).

    Returns
    -------
    dict
        A new ``tiles``. A ``um`` taken from the model keeps its form (``"20x"``) when
        ``px`` is the model's too, else it becomes microns, so a tile keeps its area.

    Raises
    ------
    ConfigError
        If the config leaves ``px`` or ``um`` null and the model declares no tiling.

    Examples
    --------
    >>> model_tiling({"px": None, "um": None}, 256, "20x", model="uni", source="p.json")
    {'px': 256, 'um': '20x'}
    >>> model_tiling({"px": 224, "um": None}, 256, "20x", model="uni", source="p.json")
    {'px': 224, 'um': 128.0}
    """
    out = dict(tiles)
    if out.get("px") is not None and out.get("um") is not None:
        return out
    if source is None:
        raise ConfigError(
            f"tiles.px / tiles.um are null (the model's tiling), but the model {model} has no "
            "params.json to give one: set tiles.px and tiles.um in the config"
        )
    if out.get("um") is None:
        same_px = out.get("px") in (None, int(model_px))
        out["um"] = model_um if same_px else parse_tile_um(model_um, int(model_px))
    if out.get("px") is None:
        out["px"] = int(model_px)
    return out


def run_info(config: dict, *, model_predicts: bool) -> dict:
    """What a run computes beyond what the config says: for the targets and the report.

    Parameters
    ----------
    config : dict
        The validated config.
    model_predicts : bool
        False for an encoder (``params.json`` output ``"embedding"``): no predictions.

    Returns
    -------
    dict
        ``predictions``: predictions are stored (asked for, and the model has them);
        ``saliency``: the saliency rule runs (on the top tiles of each predicted class, or
        on the tiles the config lists).

    Examples
    --------
    >>> cfg = {"features": {"include_preds": True}, "saliency": {"tiles": {"top_k_per_class": 2}}}
    >>> run_info(cfg, model_predicts=False)
    {'predictions': False, 'saliency': False}
    """
    predictions = bool(config["features"]["include_preds"]) and model_predicts
    listed = isinstance(config["saliency"]["tiles"], list)
    return {"predictions": predictions, "saliency": predictions or listed}


def featureset_name(config: dict, schema: dict) -> str:
    """The featureset of a config: ``features.name``, or one derived from model and tiling.

    Per-slide activations go to ``results/features/{featureset}/``, shared by every cohort
    that uses the same model and tiling (``tiles.px`` and ``tiles.um`` resolved: see
    :func:`model_tiling`). When ``features.name`` is not given, the name is
    ``{model}-{px}px-{um}`` (:func:`model_label`; ``um`` as ``112um`` or ``20x``), followed by
    ``-`` and six hex digits of a hash of every other extraction setting (``tiles`` and
    ``features`` keys) that differs from its default. Another model or any other setting
    that changes the activations thus gets a folder of its own, and no run overwrites
    another's files.

    Parameters
    ----------
    config : dict
        The validated config (defaults filled in).
    schema : dict
        The config schema, for the defaults.

    Returns
    -------
    str
        A name made of letters, digits, ``.``, ``_`` and ``-``.

    Examples
    --------
    >>> schema = {"properties": {"tiles": {"properties": {}}, "features": {"properties": {}}}}
    >>> cfg = {"model": "/models/uni", "tiles": {"px": 224, "um": "20x"}, "features": {}}
    >>> featureset_name(cfg, schema)
    'uni-224px-20x'
    """
    import hashlib
    import json

    given = config["features"].get("name")
    if given:
        return str(given)
    tiles = config["tiles"]
    if tiles.get("px") is None or tiles.get("um") is None:
        raise ConfigError("featureset_name needs tiles.px and tiles.um (see model_tiling)")
    um = str(tiles["um"]).lower() if isinstance(tiles["um"], str) else f"{tiles['um']:g}um"
    name = f"{model_label(config['model'])}-{tiles['px']}px-{um}"
    changed = {}
    for section, skip in _NOT_IN_FEATURESET.items():
        defaults = schema["properties"][section]["properties"]
        for key, value in sorted(config[section].items()):
            if key not in skip and value != defaults.get(key, {}).get("default"):
                changed[f"{section}.{key}"] = value
    if changed:
        digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()
        name += f"-{digest[:6]}"
    return name
