"""The analysis: activations of tiles and slides (:mod:`~histoatlas.analysis.features`,
:mod:`~histoatlas.analysis.extract`), the cohort's dataset table, UMAP, labelled plots and
mosaic maps. Uses :mod:`histoatlas.io` and :mod:`histoatlas.backends`, never a framework
directly."""
