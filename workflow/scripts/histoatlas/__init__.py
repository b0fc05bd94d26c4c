"""histoatlas: latent-space analysis of whole-slide histology images.

The public names load lazily, so ``import histoatlas`` stays fast and pulls in
neither torch, TensorFlow nor umap until they are used.

Examples
--------
>>> import histoatlas as ha
>>> wsi = ha.WSI("slide.svs", tile_px=224, tile_um=112)  # doctest: +SKIP
>>> features = ha.Features("model_dir", layers=["postconv"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "WSI": "histoatlas.io.wsi",
    "Features": "histoatlas.analysis.features",
    "extract_slide": "histoatlas.analysis.extract",
    "load_model": "histoatlas.backends",
    "get_preprocess_fn": "histoatlas.backends",
    "DatasetFeatures": "histoatlas.analysis.dataset",
    "SlideMap": "histoatlas.analysis.slidemap",
    "Mosaic": "histoatlas.analysis.mosaic",
    "saliency": "histoatlas.saliency",
    "errors": "histoatlas.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'histoatlas' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name].endswith(name) else getattr(module, name)
    globals()[name] = value
    return value
