"""Load trained networks (PyTorch now; Keras behind the same interface later).

Examples
--------
>>> from histoatlas.models import load_model
>>> model = load_model("resources/demo/model")  # doctest: +SKIP
>>> model.preprocess(tiles).shape  # doctest: +SKIP
(32, 224, 224, 3)
"""

from __future__ import annotations

from histoatlas.models.loaded import LoadedModel, Normalizer
from histoatlas.models.loading import get_preprocess_fn, load_model, read_params
from histoatlas.models.params import ModelParams

__all__ = [
    "LoadedModel",
    "ModelParams",
    "Normalizer",
    "get_preprocess_fn",
    "load_model",
    "read_params",
]
