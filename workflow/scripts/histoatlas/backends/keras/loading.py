"""Read Keras models: Keras 3 ``.keras`` files, legacy Keras 2 ``.h5`` files, SavedModels.

Which Keras reads a file is decided by the file, not by the user:

- ``.keras`` (a zip with ``metadata.json``): Keras 3 (``keras``), unless its metadata says
  Keras 2 wrote it (tf-keras can save that format too), then ``tf_keras``;
- ``.h5`` / ``.hdf5``: ``tf_keras`` (Keras 2 for TF 2.16+), which reads Keras 2.x files that
  Keras 3 refuses (e.g. the legacy ``dtype`` key in initializer configs), unless the file's
  ``keras_version`` attribute says Keras 3 wrote it;
- a TensorFlow SavedModel directory (``saved_model.pb``, as ``model.save(dir)`` wrote it
  in TF 2.x): ``tf_keras``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

from histoatlas.backends.keras.graph import final_activation, is_keras_model, output_width
from histoatlas.backends.keras.model import KerasModel, keras3, resolve_device, tf_keras
from histoatlas.backends.params import ModelParams, ModelSource
from histoatlas.errors import ModelError

# layer classes whose Python code is stored in the file (run on load)
_CODE_LAYERS = ("Lambda",)


def load_keras_model(
    source: ModelSource, *, device: str | None = None, trust_model_code: bool = False
) -> KerasModel:
    """Load a Keras model: a ``.keras``/``.h5`` file, a SavedModel or a model directory.

    Parameters
    ----------
    source : ModelSource
        ``path``: a Keras file, a SavedModel directory, or a model directory whose
        ``params.json`` says ``"backend": "tensorflow"`` and names the Keras file (or
        SavedModel folder) in ``weights``; ``params`` and ``params_path`` as read (a bare
        file, without ``params_path``, takes ``tile_px`` from the model's input shape and
        ``output`` from its last layer).
    device : str, optional
        See :func:`resolve_device`.
    trust_model_code : bool
        Allow ``Lambda`` layers, whose Python code is stored in the file and runs on load.

    Returns
    -------
    KerasModel

    Raises
    ------
    ModelError
        If the file is missing, holds weights only, needs code that was not trusted, or
        Keras cannot read it (naming the file, the Keras that wrote it and the one
        installed).
    ConfigError
        If ``device`` is not available.
    """
    path, params, params_path = Path(source.path), source.params, source.params_path
    if params.transforms_input:
        raise ModelError(
            f"{params_path}: input_px/resize_px (resizing tiles on their way into the "
            "network) are a torch-backend option; for a Keras model set tile_px to its "
            "input size and leave input_px and resize_px out"
        )
    file = path
    if path.is_dir() and params_path is not None:
        file = path / params.weights
        if not file.exists() and (path / "saved_model.pb").is_file():
            file = path  # a SavedModel directory with a params.json put into it
        elif not file.exists():
            raise ModelError(
                f"model directory {path}: the Keras model {params.weights!r} (params.json "
                "'weights') is not there; set 'weights' to the .keras/.h5 file or the "
                "SavedModel folder inside the directory"
            )
    model, version, kind = read_keras_file(file, trust_model_code=trust_model_code)
    # a params.json beside a Keras file may leave out "backend" (whose default is torch)
    params = dataclasses.replace(params, backend="tensorflow")
    if params_path is None:
        params = _infer_params(model, params, file)
    loaded = KerasModel(
        model=model,
        backend="tensorflow",
        params=params,
        path=path,
        device=resolve_device(device),
        kind=kind,
        weights_path=file,
        params_path=params_path,
    )
    loaded.keras_version = version
    if params_path is not None and params.output != "none":
        if loaded.final_activation() == params.output:
            warnings.warn(
                f"{path}: the network ends in {params.output} already, and params.json "
                f'\'output\' applies {params.output} again; set "output": "none"',
                stacklevel=2,
            )
    return loaded


def read_keras_file(file: Path, *, trust_model_code: bool = False) -> tuple[Any, str, str]:
    """Read a Keras model file with the Keras that can read it.

    Returns
    -------
    model : keras.Model or tf_keras.Model
    keras_version : str
        Version of the Keras that read it.
    kind : {"keras", "h5", "savedmodel"}

    Raises
    ------
    ModelError
        See :func:`load_keras_model`.
    """
    file = Path(file)
    if file.is_dir():
        if not (file / "saved_model.pb").is_file():
            raise ModelError(
                f"{file} is a directory but neither a SavedModel (no saved_model.pb) nor a "
                "model directory with params.json"
            )
        module = tf_keras()
        model = _call_loader(module, file, "SavedModel", written_by=None)
        return model, module.__version__, "savedmodel"
    suffix = file.suffix.lower()
    if suffix == ".keras":
        written_by = _keras_zip_version(file)
        legacy = written_by is not None and written_by.startswith("2.")
        module = tf_keras() if legacy else keras3()
        model = _call_loader(
            module, file, ".keras", written_by=written_by, safe_mode=not trust_model_code
        )
        return model, module.__version__, "keras"
    if suffix in (".h5", ".hdf5"):
        written_by, config = _h5_model_config(file)
        if not trust_model_code:
            _refuse_code_layers(config, file)
        keras_3 = written_by is not None and written_by.startswith("3.")
        module = keras3() if keras_3 else tf_keras()
        extra = {"safe_mode": False} if keras_3 else {}  # code layers were checked above
        model = _call_loader(module, file, "HDF5", written_by=written_by, **extra)
        return model, module.__version__, "h5"
    raise ModelError(
        f"{file}: not a Keras model file (.keras, .h5, .hdf5) nor a SavedModel directory"
    )


def _call_loader(module, file: Path, what: str, *, written_by: str | None, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return module.models.load_model(str(file), compile=False, **kwargs)
    except Exception as e:
        detail = " ".join(str(e).split())[:600]
        if "safe_mode" in detail:
            raise ModelError(
                f"{file} holds a Lambda layer whose Python code would run on loading; "
                "load it only if you trust its source (trust_model_code=True, config "
                "trust_model_code: true)"
            ) from None
        writer = f"Keras {written_by}" if written_by else "an unknown Keras version"
        if written_by and written_by != module.__version__:
            hint = (
                f"Keras {written_by} may write what Keras {module.__version__} cannot read: "
                f"re-save the model where it loads (keras=={written_by}) as .h5, or load it "
                "there and export its weights into a model built in code"
            )
        else:
            hint = (
                "custom layers or objects cannot be loaded by histoatlas; re-save the model "
                "with built-in layers only"
            )
        name = "Keras" if module.__name__ == "keras" else "tf-keras"
        raise ModelError(
            f"cannot load {what} model {file}: written by {writer}, installed {name} "
            f"{module.__version__} fails with {type(e).__name__}: {detail}; {hint}"
        ) from None


def _keras_zip_version(file: Path) -> str | None:
    """The ``keras_version`` in a ``.keras`` file's ``metadata.json``."""
    try:
        with zipfile.ZipFile(file) as z:
            meta = json.loads(z.read("metadata.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise ModelError(
            f"{file} is not a valid .keras file (a zip with metadata.json and config.json): "
            f"{type(e).__name__}: {e}"
        ) from None
    version = meta.get("keras_version")
    return str(version) if version else None


def _h5_model_config(file: Path) -> tuple[str | None, dict]:
    """``keras_version`` and ``model_config`` of a Keras HDF5 file."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise ModelError(f"{file} is not a readable HDF5 file: {e}") from None
    raw = attrs.get("model_config")
    if raw is None:
        raise ModelError(
            f"{file} holds weights only (no model_config: saved with save_weights); save the "
            "whole model (model.save) or build it and load the weights yourself"
        )
    version = attrs.get("keras_version")
    decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return (str(decode(version)) if version is not None else None), json.loads(decode(raw))


def _refuse_code_layers(config: Any, file: Path) -> None:
    """Raise ModelError if a legacy config holds a layer whose code runs on loading."""
    found = sorted(set(_class_names(config)) & set(_CODE_LAYERS))
    if found:
        raise ModelError(
            f"{file} holds {', '.join(found)} layer(s) whose Python code is stored in the file "
            "and would run on loading (tf-keras does not guard legacy .h5 files); load it "
            "only if you trust its source (trust_model_code=True, config trust_model_code: true)"
        )


def _class_names(obj: Any):
    if isinstance(obj, dict):
        if isinstance(obj.get("class_name"), str):
            yield obj["class_name"]
        for value in obj.values():
            yield from _class_names(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _class_names(value)


def _infer_params(model, params: ModelParams, file: Path) -> ModelParams:
    """Defaults of a bare Keras file: tile_px from the input shape, output from the head."""
    changes: dict[str, Any] = {"backend": "tensorflow", "weights": file.name}
    shape = _input_shape(model)
    if shape is not None and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        changes["tile_px"] = int(shape[1])
    activated = final_activation(model)
    width = output_width(model)
    if activated is not None:
        changes["output"] = "none"
    elif width == 1:
        changes["output"] = "sigmoid"
    return dataclasses.replace(params, **changes)


def _input_shape(model) -> tuple | None:
    try:
        shape = model.inputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return tuple(shape)


def load(source: ModelSource, *, device: str | None, trust_model_code: bool) -> KerasModel:
    """Load a Keras model path (see :func:`load_keras_model`)."""
    return load_keras_model(source, device=device, trust_model_code=trust_model_code)


def wrap(obj, device: str | None) -> KerasModel | None:
    """A bare Keras 3 / tf-keras model as a :class:`KerasModel` (None for anything else)."""
    if not is_keras_model(obj):
        return None
    name = getattr(obj, "name", type(obj).__name__)
    return KerasModel(
        model=obj,
        backend="tensorflow",
        params=ModelParams(backend="tensorflow"),
        path=Path(f"<Keras model {name}>"),
        device=resolve_device(device),
        kind="bare",
        weights_path=Path(),
    )


def param_defaults(raw) -> dict:
    """Keras models have no architecture presets: nothing to fill in."""
    return {}


def preprocess_fn(params: ModelParams):
    """Keras models take their tiles as read (asked for only when params.json resizes)."""
    raise ModelError(
        "input_px/resize_px (resizing tiles on their way into the network) are a "
        "torch-backend option; for a Keras model set tile_px to its input size"
    )
