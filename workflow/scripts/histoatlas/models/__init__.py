"""Load trained networks, PyTorch or Keras (TensorFlow), behind one interface.

Examples
--------
>>> from histoatlas.models import load_model
>>> model = load_model("resources/demo/model")  # doctest: +SKIP
>>> model.preprocess(tiles).shape  # doctest: +SKIP
(32, 224, 224, 3)
"""

from __future__ import annotations

from histoatlas.models.loaded import LoadedModel, Normalizer
from histoatlas.models.loading import get_preprocess_fn, load_model, model_backend, read_params
from histoatlas.models.params import ModelParams

__all__ = [
    "LoadedModel",
    "ModelParams",
    "Normalizer",
    "get_preprocess_fn",
    "load_model",
    "model_backend",
    "read_params",
]
