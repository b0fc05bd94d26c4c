"""The interactive atlas: a cohort's latent space as one static web page.

``build_atlas`` writes a folder whose ``index.html`` opens from disk (``file://``, no
server, no network) or from any static file host: the UMAP of every tile as a zoomable
scatter coloured by any label, the mosaic map as a Deep Zoom pyramid at full tile
resolution, linked (hover, click and box selection in one show up in the other), with
each tile's slide, position, labels, prediction, image and saliency maps.

Modules: :mod:`~histoatlas.atlas.encode` (binary data inside ``<script>`` files),
:mod:`~histoatlas.atlas.labels` (label codes and palettes),
:mod:`~histoatlas.atlas.pyramid` (streaming Deep Zoom writer),
:mod:`~histoatlas.atlas.tiles` (tiles read back from the slides),
:mod:`~histoatlas.atlas.page` (the page's static files) and
:mod:`~histoatlas.atlas.build` (all of it together).

Examples
--------
>>> from histoatlas.atlas import AtlasSettings, build_atlas, cohort_labels
>>> sm = SlideMap.load("results/demo/umap", tiles=pd.read_parquet(tiles_path))  # doctest: +SKIP
>>> build_atlas(
...     "atlas", points=sm.data, labels=cohort_labels(sm, ["subtype", "slide"]),
...     slides=slides, mosaic=pd.read_parquet(mosaic_path), mosaic_cols=50,
... )  # doctest: +SKIP
"""

from __future__ import annotations

from histoatlas.atlas.build import AtlasSettings, build_atlas, draw_order
from histoatlas.atlas.labels import EncodedLabel, cohort_labels, encode_label

__all__ = [
    "AtlasSettings",
    "EncodedLabel",
    "build_atlas",
    "cohort_labels",
    "draw_order",
    "encode_label",
]
