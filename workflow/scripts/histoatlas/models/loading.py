"""Turn a model path into a :class:`LoadedModel`, whatever kind of model it is.

The path decides the loader: a directory with ``params.json`` (its ``backend`` picks
torch or TensorFlow), a TorchScript or pickled torch file, or a Keras file (``.keras``,
``.h5``, ``.hdf5``) or TensorFlow SavedModel directory. Keras models are handled by
``histoatlas.models.keras_model``, which is the only place that imports TensorFlow: a
torch model never pays for its import.
"""

from __future__ import annotations

import os
from pathlib import Path

from histoatlas.errors import ModelError
from histoatlas.models.loaded import LoadedModel, Normalizer
from histoatlas.models.params import ModelParams

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def load_model(
    path: str | os.PathLike,
    *,
    device: str | None = None,
    trust_model_code: bool = False,
) -> LoadedModel:
    """Load a model for inference.

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
    from histoatlas.models import torch_model

    path = Path(path)
    params, params_path = read_params(path)
    if _is_keras(path, params, params_path):
        return _load_keras(
            path, params, params_path, device=device, trust_model_code=trust_model_code
        )
    if path.is_dir():
        return torch_model.load_torch_directory(
            path, params, params_path, device=device, trust_model_code=trust_model_code
        )
    return torch_model.load_torch_file(
        path, params, params_path, device=device, trust_model_code=trust_model_code
    )


def get_preprocess_fn(path: str | os.PathLike) -> Normalizer:
    """The preprocessing a model expects, read from its params without loading weights.

    Parameters
    ----------
    path : str or PathLike
        A model path as :func:`load_model` takes it.

    Returns
    -------
    Normalizer
        Callable mapping uint8 ``(..., H, W, 3)`` to float32 ``(x / 255 - mean) / std``,
        channels last.

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
        return ModelParams.from_json(params_path), params_path
    beside = path.parent / "params.json"
    if beside.is_file():
        return ModelParams.from_json(beside), beside
    return ModelParams(), None


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
    return "tensorflow" if _is_keras(path, params, params_path) else "torch"


def _is_keras(path: Path, params: ModelParams, params_path: Path | None) -> bool:
    if path.is_dir():
        return params.backend == "tensorflow"
    return path.suffix.lower() in KERAS_SUFFIXES


def _load_keras(
    path: Path,
    params: ModelParams,
    params_path: Path | None,
    *,
    device: str | None,
    trust_model_code: bool,
) -> LoadedModel:
    from histoatlas.models import keras_model

    return keras_model.load_keras_model(
        path,
        params=params,
        params_path=params_path,
        device=device,
        trust_model_code=trust_model_code,
    )
