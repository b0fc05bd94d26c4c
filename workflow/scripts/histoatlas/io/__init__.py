"""Reading and writing: slides (:mod:`~histoatlas.io.wsi`, read through the region readers of
:mod:`~histoatlas.io.regions` and :mod:`~histoatlas.io.readers`), tissue detection, pyramidal
TIFF writing, the per-slide HDF5 file and the slide sheet. The lowest layer: it imports no
deep-learning framework and nothing of histoatlas but :mod:`histoatlas.errors`,
:mod:`histoatlas.atomic` and :mod:`histoatlas.runtime`."""
