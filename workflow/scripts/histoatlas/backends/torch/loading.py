"""Load PyTorch models: architectures rebuilt in Python with their state dict, TorchScript files.

A model directory's network is built by :mod:`histoatlas.backends.torch.encoders` (an
architecture name or an encoder preset) and its weights read by
:mod:`histoatlas.backends.torch.checkpoints`: safetensors, or ``torch.load(...,
weights_only=True)``, since a checkpoint that needs arbitrary Python objects unpickled could
run arbitrary code (refused unless the caller says it trusts the file). TorchScript files
give their final output only, because forward hooks register on them without error but
never fire (DESIGN, "Known traps").
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

from histoatlas.backends.params import ModelParams, ModelSource
from histoatlas.backends.torch.checkpoints import read_checkpoint
from histoatlas.backends.torch.encoders import build_encoder, params_defaults
from histoatlas.backends.torch.model import TorchModel, resolve_device
from histoatlas.errors import ModelError

log = logging.getLogger(__name__)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_torch_directory(
    path: Path,
    params: ModelParams,
    params_path: Path,
    *,
    device: str | None,
    trust_model_code: bool,
) -> TorchModel:
    """Load a model directory: build the architecture (or preset), then load its weights
    as params.json says (see :func:`histoatlas.backends.torch.encoders.build_encoder`)."""
    weights = path / params.weights
    if not weights.is_file():
        raise ModelError(
            f"model directory {path}: weights file {params.weights!r} (params.json "
            f"'weights') not found at {weights}"
        )
    if is_torchscript(weights):
        return load_torchscript(weights, params, params_path, device=device, path=path)
    model, info = build_encoder(
        params, weights, device=None, trust_model_code=trust_model_code, source=params_path
    )
    if info.ignored or info.outside_prefix:
        log.info(
            f"{weights}: loaded {info.n_loaded} tensors into {info.spec.name!r}; left out "
            f"{len(info.outside_prefix)} outside weights_prefix and {len(info.ignored)} "
            "matching ignore_keys"
        )
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


def preprocess_fn(params: ModelParams):
    """The preprocessing of a model with these params, without loading it (see
    :func:`histoatlas.backends.get_preprocess_fn`): resize and crop, then normalise."""
    from histoatlas.backends.torch.transform import Preprocess

    return Preprocess(params)


def param_defaults(raw) -> dict:
    """``params.json`` keys an encoder preset fills in (``{}`` unless ``architecture`` names
    one; see :func:`histoatlas.backends.torch.encoders.presets.params_defaults`)."""
    return params_defaults(raw.get("architecture"))
