"""Saliency maps: which pixels of a tile drive one output of the model.

Built on PAIR's framework-agnostic ``saliency.core``: vanilla gradients, integrated
gradients (plain, guided, blur), XRAI and Grad-CAM, each optionally smoothed with
SmoothGrad. :class:`SaliencyMap` computes them; :mod:`.plot_utils` draws them
(``inferno``, ``overlay``, ``comparison``, ``overview``); :mod:`.select` picks the tiles
the workflow explains.

Examples
--------
>>> import histoatlas as ha
>>> from histoatlas.saliency import SaliencyMap, plot_utils
>>> model = ha.load_model("resources/demo/model")  # doctest: +SKIP
>>> sm = SaliencyMap(model, class_idx=0)  # doctest: +SKIP
>>> masks = sm.all(model.preprocess(tile))  # doctest: +SKIP
>>> fig = plot_utils.comparison(tile, masks)  # doctest: +SKIP
"""

from __future__ import annotations

from histoatlas.saliency import plot_utils
from histoatlas.saliency.maps import METHODS, SaliencyMap
from histoatlas.saliency.plot_utils import comparison, inferno, overlay, overview
from histoatlas.saliency.select import select_tiles, select_tiles_to_csv
from histoatlas.saliency.smooth import SMOOTH_DEFAULTS
from histoatlas.saliency.writer import write_saliency_maps

__all__ = [
    "METHODS",
    "SMOOTH_DEFAULTS",
    "SaliencyMap",
    "comparison",
    "inferno",
    "overlay",
    "overview",
    "plot_utils",
    "select_tiles",
    "select_tiles_to_csv",
    "write_saliency_maps",
]
