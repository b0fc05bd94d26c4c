"""``extract_slide`` called with flat keywords in tests, split into its option objects.

``extract(path, out, model=m, tile_px=32, tile_um=64, layers=["postconv"], batch_size=4)``
builds :class:`TileOptions`, :class:`FeatureOptions` and :class:`RunOptions` from the
keywords each declares (``tile_px``/``tile_um``/``allow_tile_px_mismatch`` are the tiling's
``px``/``um``/``allow_model_mismatch``; ``tissue`` is a dict of tiling keys).
"""

from __future__ import annotations

from dataclasses import fields

from histoatlas.analysis.extract import FeatureOptions, RunOptions, extract_slide
from histoatlas.io.tiling import TileOptions

RENAMES = {"tile_px": "px", "tile_um": "um", "allow_tile_px_mismatch": "allow_model_mismatch"}
OPTIONS = (TileOptions, FeatureOptions, RunOptions)
DIRECT = ("mpp", "slide_name", "trust_model_code")


def extract(slide_path, out_path, *, model, tissue: dict | None = None, **flat) -> dict:
    """:func:`extract_slide` with the options of ``flat`` sorted into their objects."""
    flat = {RENAMES.get(k, k): v for k, v in flat.items()}
    flat.update(tissue or {})
    direct = {k: flat.pop(k) for k in DIRECT if k in flat}
    built = {}
    for cls in OPTIONS:
        names = {f.name for f in fields(cls)}
        built[cls] = cls(**{k: flat.pop(k) for k in list(flat) if k in names})
    if flat:
        raise TypeError(f"extract() got unknown option(s) {sorted(flat)}")
    return extract_slide(
        slide_path,
        out_path,
        model=model,
        tiles=built[TileOptions],
        features=built[FeatureOptions],
        run=built[RunOptions],
        **direct,
    )
