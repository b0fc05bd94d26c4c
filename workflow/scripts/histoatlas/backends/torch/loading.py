"""Load PyTorch models: architectures rebuilt in Python with their state dict, TorchScript files.

Weights are read with ``torch.load(..., weights_only=True)``: a checkpoint that needs
arbitrary Python objects unpickled could run arbitrary code, so it is refused unless the
caller says it trusts the file. TorchScript files give their final output only, because
forward hooks register on them without error but never fire (DESIGN, "Known traps").
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

from histoatlas.backends.params import ModelParams, ModelSource
from histoatlas.backends.torch.architectures import ARCHITECTURES
from histoatlas.backends.torch.model import TorchModel, resolve_device
from histoatlas.errors import ModelError

_MAX_KEYS_SHOWN = 5


def build_architecture(name: str, kwargs: Mapping | None = None):
    """Build an untrained network from its ``params.json`` architecture name.

    Parameters
    ----------
    name : str
        ``demo_cnn`` (histoatlas's own), ``torchvision:<name>``, ``timm:<name>``, or a
        bare name looked up in that order. Never downloads weights.
    kwargs : mapping, optional
        Passed to the builder (``num_classes``, timm's ``img_size``, ...).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ModelError
        If no source knows the name, or the builder rejects ``kwargs``.
    """
    kwargs = dict(kwargs or {})
    source, _, bare = name.rpartition(":")
    if source not in ("", "histoatlas", "torchvision", "timm"):
        raise ModelError(
            f"architecture {name!r}: unknown source {source!r}; use 'torchvision:<name>', "
            "'timm:<name>' or a histoatlas name"
        )
    if not source:
        source = _find_source(bare)
    try:
        if source == "histoatlas":
            if bare not in ARCHITECTURES:
                raise ModelError(
                    f"architecture {name!r} is not a histoatlas architecture; "
                    f"available: {', '.join(sorted(ARCHITECTURES))}"
                )
            return ARCHITECTURES[bare](**kwargs)
        if source == "torchvision":
            import torchvision

            if bare not in torchvision.models.list_models():
                raise ModelError(f"architecture {name!r}: torchvision has no model {bare!r}")
            return torchvision.models.get_model(bare, weights=None, **kwargs)
        import timm

        if not timm.is_model(bare):
            raise ModelError(f"architecture {name!r}: timm has no model {bare!r}")
        return timm.create_model(bare, pretrained=False, **kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot build architecture {name!r} with architecture_kwargs {kwargs}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _find_source(name: str) -> str:
    if name in ARCHITECTURES:
        return "histoatlas"
    import torchvision

    if name in torchvision.models.list_models():
        return "torchvision"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ModelError(
        f"architecture {name!r} is neither a histoatlas architecture "
        f"({', '.join(sorted(ARCHITECTURES))}) nor a torchvision or timm model name"
    )


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_checkpoint(path: Path, *, trust_model_code: bool = False):
    """``torch.load`` a checkpoint safely onto the CPU.

    Raises
    ------
    ModelError
        If the file needs arbitrary objects unpickled and ``trust_model_code`` is
        False (the message says why), or torch cannot read it at all.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_model_code:
            found = re.search(r"GLOBAL (\S+)", str(e))
            if found:
                raise ModelError(
                    f"{path} is not a plain state dict: loading it means unpickling arbitrary "
                    f"Python objects (it references {found.group(1)}), which can execute "
                    "arbitrary code. Save the weights with torch.save(model.state_dict(), "
                    "path) and load them into a model directory, or pass "
                    "trust_model_code=True if you trust the file's source."
                ) from None
            # corrupt, or pickled with opcodes the safe unpickler does not support
            _, _, detail = str(e).partition("WeightsUnpickler error:")
            detail = (detail.strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(
                f"cannot read weights file {path} safely ({detail}): it is corrupt, or a "
                "pickle that only a full unpickle can read, which can execute arbitrary "
                "code; pass trust_model_code=True only if you trust the file's source"
            ) from None
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None


def extract_state_dict(obj, path: Path) -> dict:
    """The state dict inside a checkpoint: bare, a module, or wrapped in ``state_dict``/``model``.

    A ``module.`` prefix on every key (``nn.DataParallel``) is removed.
    """
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
        if all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
        return state
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping | torch.nn.Module):
            return extract_state_dict(obj[key], path)
    raise ModelError(
        f"{path} is a dict with keys {sorted(map(str, obj))[:_MAX_KEYS_SHOWN]}, not a state "
        "dict (tensors by parameter name), nor one wrapped under 'state_dict' or 'model'"
    )


def load_state_dict_strict(model, state: dict, *, weights: Path, architecture: str) -> None:
    """Load ``state`` into ``model``; every key must match, with the same shape.

    Raises
    ------
    ModelError
        Naming the weights file, the architecture and a few missing/unexpected keys
        or the mismatched shapes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    hint = "check params.json's architecture and architecture_kwargs (e.g. num_classes)"
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:_MAX_KEYS_SHOWN]) + (", ..." if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        raise ModelError(
            f"weights {weights} do not fit architecture {architecture!r}: "
            f"{'; '.join(parts)}; {hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:3]) or str(e)
        raise ModelError(
            f"weights {weights} do not fit architecture {architecture!r}: {detail}; {hint}"
        ) from None


def load_torch_directory(
    path: Path,
    params: ModelParams,
    params_path: Path,
    *,
    device: str | None,
    trust_model_code: bool,
) -> TorchModel:
    """Load a model directory: rebuild the architecture, then load its state dict."""
    weights = path / params.weights
    if not weights.is_file():
        raise ModelError(
            f"model directory {path}: weights file {params.weights!r} (params.json "
            f"'weights') not found at {weights}"
        )
    if is_torchscript(weights):
        return load_torchscript(weights, params, params_path, device=device, path=path)
    kwargs = dict(params.architecture_kwargs)
    if params.class_names and "num_classes" not in kwargs:
        kwargs["num_classes"] = len(params.class_names)
    model = build_architecture(params.architecture, kwargs)
    state = extract_state_dict(read_checkpoint(weights, trust_model_code=trust_model_code), weights)
    load_state_dict_strict(model, state, weights=weights, architecture=params.architecture)
    return _loaded(model, params, path, "directory", weights, params_path, device)


def load_torchscript(
    file: Path,
    params: ModelParams,
    params_path: Path | None,
    *,
    device: str | None,
    path: Path | None = None,
) -> TorchModel:
    """Load a TorchScript archive (final output only)."""
    import torch

    device = resolve_device(device)
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in torch 2.14; loading still works
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(file), map_location=device)
    except Exception as e:
        raise ModelError(f"cannot load TorchScript file {file}: {type(e).__name__}: {e}") from None
    model.eval()
    return TorchModel(
        model=model,
        backend="torch",
        params=params,
        path=path or file,
        device=device,
        kind="torchscript",
        weights_path=file,
        params_path=params_path,
    )


def load_torch_file(
    file: Path,
    params: ModelParams,
    params_path: Path | None,
    *,
    device: str | None,
    trust_model_code: bool,
) -> TorchModel:
    """Load a single model file: TorchScript, or (trusted) a whole pickled module."""
    import torch

    if is_torchscript(file):
        return load_torchscript(file, params, params_path, device=device)
    obj = read_checkpoint(file, trust_model_code=trust_model_code)
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(
            f"{file} holds weights but no network ({type(obj).__name__}); put it in a model "
            "directory beside a params.json naming its architecture, or save the model as "
            "TorchScript"
        )
    return _loaded(obj, params, file, "pickled", file, params_path, device)


def load(source: ModelSource, *, device: str | None, trust_model_code: bool) -> TorchModel:
    """Load a torch model path: a model directory, TorchScript or a (trusted) pickled module."""
    load_path = load_torch_directory if source.path.is_dir() else load_torch_file
    return load_path(
        source.path,
        source.params,
        source.params_path,
        device=device,
        trust_model_code=trust_model_code,
    )


def wrap(obj, device: str | None) -> TorchModel | None:
    """A bare ``torch.nn.Module`` as a :class:`TorchModel` (None for anything else).

    The module stays where its parameters are unless ``device`` is given; it gets default
    params (ImageNet normalisation, no class names); a ``ScriptModule`` counts as TorchScript.
    """
    import sys

    if "torch" not in sys.modules:  # nothing can be a torch module before torch is imported
        return None
    import torch

    if not isinstance(obj, torch.nn.Module):
        return None
    if device is None:
        param = next(iter(obj.parameters()), None)
        device = str(param.device) if param is not None else "cpu"
    else:
        device = resolve_device(device)
        obj.to(device)
    scripted = isinstance(obj, torch.jit.ScriptModule)
    return TorchModel(
        model=obj,
        backend="torch",
        params=ModelParams(),
        path=Path(f"<torch module {type(obj).__name__}>"),
        device=device,
        kind="torchscript" if scripted else "bare",
        weights_path=Path(),
    )


def _loaded(net, params, path, kind, weights_path, params_path, device) -> TorchModel:
    """A network in eval mode as a :class:`TorchModel` on ``device``."""
    return TorchModel(
        model=net.eval(),
        backend="torch",
        params=params,
        path=path,
        device="cpu",
        kind=kind,
        weights_path=weights_path,
        params_path=params_path,
    ).to(device)
