"""Weights files: read them safely, find the state dict inside, load it strictly.

- safetensors files are recognised by their content (an 8-byte header length, then a
  JSON header), not by torch's file-name dispatch; a ``.safetensors`` name whose content
  is not safetensors is an error. Everything else goes through ``torch.load(...,
  weights_only=True)`` (:func:`read_checkpoint`): a checkpoint that needs arbitrary Python
  objects unpickled could run arbitrary code, so it is refused unless the caller says it
  trusts the file.
- ``weights_key`` takes the state dict under a key (``teacher``, ``model``,
  ``state_dict``); ``weights_prefix`` keeps the keys under a prefix and strips it
  (``visual.`` in CONCH's CoCa file); ``ignore_keys`` drops keys by glob pattern.
- Loading is strict; when keys do not fit, the error says what to change.
"""

from __future__ import annotations

import fnmatch
import pickle
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from histoatlas.errors import ModelError

_SHOWN = 5
_DEFAULT_HINT = (
    "Check params.json's architecture and architecture_kwargs (e.g. num_classes, or "
    "class_names, which sets it)."
)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB


def is_safetensors(path: str | Path) -> bool:
    """Whether the file's content is safetensors (header length, then a JSON object)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(_MAX_HEADER, path.stat().st_size - 8) and head[8:9] == b"{"


def read_weights(path: str | Path, *, trust_model_code: bool = False) -> tuple[object, str]:
    """Read a weights file onto the CPU.

    Returns
    -------
    obj : object
        A dict of tensors (safetensors), or what ``torch.load(weights_only=True)`` gives.
    fmt : {"safetensors", "torch"}

    Raises
    ------
    ModelError
        If the file is missing, a ``.safetensors`` file is not safetensors, or torch
        cannot read it safely (see ``read_checkpoint``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except Exception as e:
            raise ModelError(f"cannot read safetensors file {path}: {e}") from None
    if path.suffix == ".safetensors":
        raise ModelError(
            f"{path} is named .safetensors but its content is not safetensors (no JSON "
            "header); it is corrupt, truncated or another format under the wrong name"
        )
    return read_checkpoint(path, trust_model_code=trust_model_code), "torch"


def read_checkpoint(path: Path, *, trust_model_code: bool = False):
    """``torch.load`` a checkpoint safely onto the CPU.

    Raises
    ------
    ModelError
        If the file needs arbitrary objects unpickled and ``trust_model_code`` is
        False (the message says why), or torch cannot read it at all.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_model_code:
            raise _unsafe_pickle_error(path, e) from None
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None


def _unsafe_pickle_error(path: Path, e: Exception) -> ModelError:
    found = re.search(r"GLOBAL (\S+)", str(e))
    if found:
        return ModelError(
            f"{path} is not a plain state dict: loading it means unpickling arbitrary "
            f"Python objects (it references {found.group(1)}), which can execute "
            "arbitrary code. Save the weights with torch.save(model.state_dict(), "
            "path) and load them into a model directory, or pass "
            "trust_model_code=True if you trust the file's source."
        )
    # corrupt, or pickled with opcodes the safe unpickler does not support
    _, _, detail = str(e).partition("WeightsUnpickler error:")
    detail = (detail.strip().splitlines() or [type(e).__name__])[0]
    return ModelError(
        f"cannot read weights file {path} safely ({detail}): it is corrupt, or a "
        "pickle that only a full unpickle can read, which can execute arbitrary "
        "code; pass trust_model_code=True only if you trust the file's source"
    )


@dataclass
class Selection:
    """What :func:`select_state_dict` did: the key it took, the keys outside the prefix."""

    weights_key: str | None = None
    outside_prefix: list[str] = field(default_factory=list)


def select_state_dict(
    obj,
    *,
    weights_key: str | None = None,
    weights_prefix: str | None = None,
    source: str | Path = "weights",
) -> tuple[dict, Selection]:
    """The state dict inside a checkpoint, selected as the options say.

    Parameters
    ----------
    obj : mapping
        What :func:`read_weights` returned.
    weights_key : str, optional
        Take ``obj[weights_key]``. Without it: ``obj`` itself when it maps names to
        tensors, else the dict under ``state_dict`` or ``model``.
    weights_prefix : str, optional
        Keep only keys starting with it, and strip it.
    source : str or Path
        Named in errors.

    Returns
    -------
    state : dict
    selection : Selection

    Raises
    ------
    ModelError
        If ``weights_key`` is absent, nothing sits under ``weights_prefix``, or the
        result is not a state dict; each message lists what the file does hold.
    """
    sel = Selection(weights_key=weights_key)
    state = _unwrap(obj, weights_key, source)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if weights_prefix:
        inside = {k[len(weights_prefix) :]: v for k, v in state.items()
                  if k.startswith(weights_prefix)}  # fmt: skip
        if not inside:
            raise ModelError(
                f"{source}: no key starts with weights_prefix {weights_prefix!r}; the keys "
                f"start with {_top_prefixes(state)}"
            )
        sel.outside_prefix = [k for k in state if not k.startswith(weights_prefix)]
        state = inside
    return state, sel


def drop_ignored(state: Mapping, patterns: Sequence[str]) -> tuple[dict, list[str]]:
    """Drop the keys that match any glob pattern (``fnmatch``, case-sensitive).

    Returns
    -------
    state : dict
        The other keys.
    ignored : list of str
        The dropped keys.

    Examples
    --------
    >>> state, ignored = drop_ignored({"a.attn_mask": 0, "a.w": 1}, ["*.attn_mask"])
    >>> list(state), ignored
    (['a.w'], ['a.attn_mask'])
    """
    ignored = [k for k in state if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    dropped = set(ignored)
    return {k: v for k, v in state.items() if k not in dropped}, ignored


def _unwrap(obj, weights_key: str | None, source) -> dict:
    import torch

    if isinstance(obj, torch.nn.Module):  # a trusted, pickled module
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise ModelError(f"{source} holds a {type(obj).__name__}, not a state dict")
    if weights_key is not None:
        if weights_key not in obj:
            raise ModelError(
                f"{source}: weights_key {weights_key!r} not in the file; its top-level keys: "
                f"{_shown(sorted(map(str, obj)))}"
            )
        obj = obj[weights_key]
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise ModelError(f"{source}: {weights_key!r} holds a {type(obj).__name__}")
    elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = Mapping | torch.nn.Module
        wrappers = [k for k in ("state_dict", "model") if isinstance(obj.get(k), wrapped)]
        if not wrappers:
            nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
            raise ModelError(
                f"{source} is not a plain state dict (tensors by name); its top-level keys: "
                f"{_shown(sorted(map(str, obj)))}. Set weights_key to the one that holds the "
                f"weights (dicts: {_shown(nested) or 'none'}), e.g. 'teacher'"
            )
        return _unwrap(obj[wrappers[0]], None, source)
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"{source}: {len(bad)} entries are not tensors ({_shown(bad)}); set weights_key "
            "to the entry that holds the state dict"
        )
    return dict(obj)


def fit_problems(expected: Mapping, state: Mapping) -> tuple[list, list, list]:
    """Missing keys, unexpected keys and ``(key, file shape, model shape)`` mismatches.

    ``expected`` maps names to tensors or shapes (a model's ``state_dict()``, meta or not).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(_shape(expected[k])))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(_shape(expected[k]))
    ]
    return missing, unexpected, mismatched


def load_strict(model, state: Mapping, *, weights, architecture: str) -> None:
    """Load ``state`` into ``model``: every key must be there, with the model's shape.

    On a meta-device model the tensors are assigned (``assign=True``).

    Raises
    ------
    ModelError
        Naming the file, the architecture, a few keys, and the likely fix.
    """
    expected = model.state_dict()
    missing, unexpected, mismatched = fit_problems(expected, state)
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing key(s): {_shown(missing)}"] if missing else []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
        for key, got, want in mismatched[:3]:
            parts.append(
                f"size mismatch for {key}: {list(got)} in the file, {list(want)} in the model"
            )
        hints = mismatch_hints(missing, unexpected, mismatched, expected)
        raise ModelError(
            f"weights {weights} do not fit architecture {architecture!r}: {'; '.join(parts)}. "
            + (" ".join(hints) or _DEFAULT_HINT)
        )
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(state, strict=True, assign=on_meta)


def mismatch_hints(missing, unexpected, mismatched, expected) -> list[str]:
    """Plain-language fixes for the usual ways a checkpoint and an architecture disagree."""
    hints = []
    gammas = [k for k in unexpected if re.fullmatch(r".*blocks\.\d+\.ls[12]\.gamma", k)]
    if gammas:
        hints.append(
            f"The file has LayerScale weights ({len(gammas)} 'blocks.*.ls*.gamma' keys) that "
            "the model was built without: set architecture_kwargs init_values (1e-5 for UNI, "
            'UNI2-h, Virchow, H-optimus, GPFM), or use the preset, e.g. "architecture": '
            '"uni".'
        )
    hf = ("embeddings.patch_embeddings.", ".attention.attention.query.", ".attention.q_proj.")
    prefix = _common_prefix_fix(unexpected, expected)
    if any(part in k for k in unexpected for part in hf):
        hints.append(
            "The file is in Hugging Face transformers layout: use the preset 'phikon' "
            "(ViTModel) or 'phikon-v2' (Dinov2Model), which convert it."
        )
    elif prefix:
        hints.append(f"Every file key starts with {prefix!r}: set weights_prefix {prefix!r}.")
    if any(k.endswith("reg_token") for k in unexpected + missing):
        hints.append("Register tokens differ: check architecture_kwargs reg_tokens.")
    if any("mlp.fc1" in k or "mlp.fc2" in k for k, _, _ in mismatched):
        hints.append("MLP shapes differ: check mlp_ratio and mlp_layer (e.g. 'swiglupacked').")
    if any(k.endswith("pos_embed") for k, _, _ in mismatched):
        hints.append("pos_embed differs: check img_size, patch_size, no_embed_class.")
    return hints


def _common_prefix_fix(unexpected, expected) -> str | None:
    if not unexpected:
        return None
    first = unexpected[0].split(".")[0] + "."
    if all(k.startswith(first) for k in unexpected):
        stripped = {k[len(first) :] for k in unexpected}
        if stripped & set(expected):
            return first
    return None


def _top_prefixes(state: Mapping) -> str:
    counts = Counter(k.split(".")[0] for k in state)
    return ", ".join(f"{name}. ({n} keys)" for name, n in counts.most_common(_SHOWN))


def _shown(keys: Sequence[str]) -> str:
    keys = list(keys)
    return ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")


def _shape(value):
    return value.shape if hasattr(value, "shape") else value
