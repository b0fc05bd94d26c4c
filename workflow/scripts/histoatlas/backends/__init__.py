"""Trained networks, PyTorch or Keras (TensorFlow), behind one interface (:mod:`.base`).

:func:`load_model` reads a model path with the backend it needs; :func:`as_loaded_model`
wraps a network handed over in memory. Callers use only :class:`LoadedModel`'s methods.

Examples
--------
>>> from histoatlas.backends import load_model
>>> model = load_model("resources/demo/model")  # doctest: +SKIP
>>> model.preprocess(tiles).shape  # doctest: +SKIP
(32, 224, 224, 3)
"""

from __future__ import annotations

from histoatlas.backends.base import LoadedModel, Normalizer
from histoatlas.backends.loading import (
    as_loaded_model,
    get_preprocess_fn,
    load_model,
    model_backend,
    read_params,
)
from histoatlas.backends.params import ModelParams

__all__ = [
    "LoadedModel",
    "as_loaded_model",
    "ModelParams",
    "Normalizer",
    "get_preprocess_fn",
    "load_model",
    "model_backend",
    "read_params",
]
