"""Reading a UMAP plot back: how many pixels each palette colour covers."""

from __future__ import annotations

import numpy as np
from PIL import Image


def palette_pixels(png, n_colours: int) -> list[int]:
    """Pixels of each of the first ``n_colours`` + 1 palette colours in a UMAP plot."""
    from histoatlas.analysis.plotting import qualitative_colours

    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    counts = []
    for colour in qualitative_colours(n_colours + 1):
        target = np.round(np.asarray(colour[:3]) * 255).astype(int)
        counts.append(int((np.abs(rgb - target).max(axis=1) <= 1).sum()))
    return counts
