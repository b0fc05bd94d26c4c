"""Turn a model path into a :class:`LoadedModel`, whatever kind of model it is.

The path decides the loader: a directory with ``params.json`` (its ``backend`` picks
torch or TensorFlow), a TorchScript or pickled torch file, or a Keras file (``.keras``,
``.h5``, ``.hdf5``) or TensorFlow SavedModel directory. Each backend's package is imported
only when a model of its framework is used, so a torch model never pays for TensorFlow's
import, nor a Keras model for torch's.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from histoatlas.backends.base import LoadedModel, Normalizer
from histoatlas.backends.params import ModelParams, ModelSource
from histoatlas.errors import ModelError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# backend name (params.json "backend") -> its package
BACKENDS = {"torch": "histoatlas.backends.torch", "tensorflow": "histoatlas.backends.keras"}


def load_model(
    path: str | os.PathLike,
    *,
    device: str | None = None,
    trust_model_code: bool = False,
) -> LoadedModel:
    """Load a model for inference (see :class:`LoadedModel`).

    Parameters
    ----------
    path : str or PathLike
        A model directory (``params.json`` + weights; the architecture is rebuilt in
        Python, so every layer can be read), a TorchScript file (final output only;
        a ``params.json`` beside it supplies tile size and normalisation), a whole
        pickled torch module (needs ``trust_model_code``), a Keras 3 ``.keras`` file, a
        legacy Keras 2 ``.h5``/``.hdf5`` file or TensorFlow SavedModel directory (read
        with tf-keras), or a model directory whose ``params.json`` says ``"backend":
        "tensorflow"`` and names such a file in ``weights``.
    device : str, optional
        Device; default CUDA, then MPS (torch only), then CPU.
    trust_model_code : bool
        Allow checkpoints that need arbitrary Python objects unpickled, and Keras
        ``Lambda`` layers (their code is stored in the file). Such a file can run any
        code when loaded: only for files from a source you trust.

    Returns
    -------
    LoadedModel
        The network in eval mode on its device, with params, preprocess and provenance.

    Raises
    ------
    ModelError
        If the path is missing, is not a model histoatlas can load, its weights do not
        fit its architecture, or it needs unpickling that was not allowed.
    ConfigError
        If ``device`` names a device that is not available.

    Examples
    --------
    >>> model = load_model("resources/demo/model")  # doctest: +SKIP
    >>> model.backend, model.kind, model.class_names  # doctest: +SKIP
    ('torch', 'directory', ['tumor', 'stroma'])
    """
    path = Path(path)
    source = ModelSource(path, *read_params(path))
    loader = backend_loader(_backend_name(path, source.params, source.params_path))
    return loader.load(source, device=device, trust_model_code=trust_model_code)


def get_preprocess_fn(path: str | os.PathLike) -> Normalizer:
    """The preprocessing a model expects, read from its params without loading weights.

    Parameters
    ----------
    path : str or PathLike
        A model path as :func:`load_model` takes it.

    Returns
    -------
    callable
        Mapping uint8 ``(..., H, W, 3)`` to float32 ``(x / 255 - mean) / std``, channels
        last (a :class:`Normalizer`); for a model whose params.json resizes its input
        (``input_px``: an encoder preset), the tiles are resized and cropped first, as the
        backend does on the way into the network.

    Raises
    ------
    ModelError
        If the path is missing or its ``params.json`` is invalid.

    Examples
    --------
    >>> preprocess = get_preprocess_fn("resources/demo/model")  # doctest: +SKIP
    >>> preprocess(tiles).dtype  # doctest: +SKIP
    dtype('float32')
    """
    params, _ = read_params(Path(path))
    if params.transforms_input:
        return backend_loader(params.backend).preprocess_fn(params)
    return Normalizer(params.mean, params.std)


def read_params(path: Path) -> tuple[ModelParams, Path | None]:
    """The ``params.json`` of a model path, and where it was found.

    A directory must have one (a TensorFlow SavedModel directory may go without); a
    file uses a ``params.json`` beside it if there is one, else the defaults.
    """
    if not path.exists():
        raise ModelError(
            f"model path {path} does not exist; give a model directory (params.json + "
            "weights), a TorchScript file or a Keras file"
        )
    if path.is_dir():
        params_path = path / "params.json"
        if not params_path.exists() and (path / "saved_model.pb").exists():
            return ModelParams(backend="tensorflow"), None
        return ModelParams.from_json(params_path, defaults=param_defaults), params_path
    beside = path.parent / "params.json"
    if beside.is_file():
        return ModelParams.from_json(beside, defaults=param_defaults), beside
    return ModelParams(), None


def param_defaults(raw) -> dict:
    """The keys a backend fills in for a ``params.json`` that leaves them out.

    The torch backend's architecture presets (``"architecture": "uni2-h"``) supply the
    tiling, the model input, the normalisation and the weights file name; nothing is
    imported but the preset table.
    """
    backend = raw.get("backend", "torch")
    if backend not in BACKENDS:
        return {}  # ModelParams.check names the bad backend
    return backend_loader(backend).param_defaults(raw)


def model_backend(path: str | os.PathLike) -> str:
    """``"tensorflow"`` or ``"torch"``: the framework a model path needs, without importing it.

    Decided as :func:`load_model` decides: Keras file suffixes and SavedModel directories
    are TensorFlow, a model directory says so in its ``params.json``; anything else (and
    a path that does not exist yet) is torch.

    Examples
    --------
    >>> model_backend("model.keras"), model_backend("model.pt")
    ('tensorflow', 'torch')
    """
    path = Path(path)
    if not path.exists():
        return "tensorflow" if path.suffix.lower() in KERAS_SUFFIXES else "torch"
    params, params_path = read_params(path)
    return _backend_name(path, params, params_path)


def _backend_name(path: Path, params: ModelParams, params_path: Path | None) -> str:
    if path.is_dir():
        return params.backend
    return "tensorflow" if path.suffix.lower() in KERAS_SUFFIXES else "torch"


def backend_module(name: str, part: str):
    """A module of a backend's package (``"torch"``, ``"tensorflow"``), imported on demand.

    Every backend has the same modules: ``loading`` (``load(source, *, device,
    trust_model_code)``, ``wrap(obj, device) -> LoadedModel or None``,
    ``param_defaults(raw_params) -> dict`` and ``preprocess_fn(params)``),
    ``model``, ``gradients``, ``architectures`` and ``training`` (``Trainer``).

    Raises
    ------
    ModelError
        If ``name`` is not a backend.
    """
    if name not in BACKENDS:
        raise ModelError(f"unknown model backend {name!r}; known: {', '.join(BACKENDS)}")
    return importlib.import_module(f"{BACKENDS[name]}.{part}")


def backend_loader(name: str):
    """The ``loading`` module of a backend (see :func:`backend_module`)."""
    return backend_module(name, "loading")


def as_loaded_model(model: Any, *, device: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` for what a caller hands over.

    Parameters
    ----------
    model : LoadedModel, torch.nn.Module or keras.Model
        A loaded model (moved to ``device`` when one is given), or a bare network: a torch
        module taking ``(B, 3, H, W)`` (used where its parameters are, unless ``device``)
        or a Keras model taking ``(B, H, W, 3)``; a bare network gets default params
        (ImageNet normalisation, no class names).
    device : str, optional

    Raises
    ------
    ModelError
        If no backend knows the object.
    """
    if isinstance(model, LoadedModel):
        return model.to(device) if device is not None else model
    for name in BACKENDS:
        wrapped = backend_loader(name).wrap(model, device)
        if wrapped is not None:
            return wrapped
    raise ModelError(
        f"cannot use a {type(model).__name__} as a model: pass a torch.nn.Module, a Keras "
        "model or what histoatlas.load_model(path) returns"
    )


def check_tile_px(loaded, tile_px: int, *, allow_mismatch: bool = False) -> None:
    """Refuse tiles of another size than the model was trained on.

    A model without ``params.json`` (a bare TorchScript file) declares no tile size,
    so nothing is checked.

    Raises
    ------
    ModelError
        Naming the model's and the config's ``tile_px``.
    """
    _check_tile_px(
        loaded.path, loaded.params, loaded.params_path, tile_px, allow_mismatch=allow_mismatch
    )


def check_model_path(
    model: str | os.PathLike, *, tile_px: int, allow_mismatch: bool = False
) -> None:
    """Check a model path and its ``tile_px`` without loading the network.

    Cheap (it reads ``params.json`` only, no torch), so the workflow calls it before any
    job runs: a wrong model path or tile size fails once, not once per slide.

    Parameters
    ----------
    model : str or PathLike
        Model directory, TorchScript or Keras file (see :func:`histoatlas.load_model`).
    tile_px : int
        The config's ``tiles.px``.
    allow_mismatch : bool
        Accept a ``tile_px`` other than the model's (``tiles.allow_model_mismatch``).

    Raises
    ------
    ModelError
        If the path does not exist, its ``params.json`` is missing or invalid, or its
        ``tile_px`` differs from ``tile_px`` and ``allow_mismatch`` is False.
    """
    from pathlib import Path

    path = Path(model)
    params, params_path = read_params(path)
    _check_tile_px(path, params, params_path, tile_px, allow_mismatch=allow_mismatch)


def _check_tile_px(path, params, params_path, tile_px: int, *, allow_mismatch: bool) -> None:
    trained = int(params.tile_px)
    if params_path is None or trained == int(tile_px) or allow_mismatch:
        return
    raise ModelError(
        f"model {path} was trained on {trained} px tiles (tile_px in "
        f"{params_path}), but the config asks for tiles.px = {tile_px}; set "
        f"tiles.px to {trained}, or allow the mismatch (tiles.allow_model_mismatch: true, "
        "allow_tile_px_mismatch=True) if the network accepts other sizes"
    )
