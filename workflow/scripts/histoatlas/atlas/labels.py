"""Labels of the atlas: each one as small integer codes per point and a palette.

A label is categorical or continuous as in the UMAP plots
(:func:`histoatlas.analysis.plotting.is_categorical`), with the plots' palette, so a colour
means the same on the page and in ``umap_{label}.png``. Categorical codes index the categories
(in the plots' order), then "(missing)"; continuous values are quantised to 255 steps
between their minimum and maximum (code 255: missing) and drawn with viridis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.map_labels import apply_label
from histoatlas.analysis.plotting import (
    MISSING_COLOUR,
    MISSING_LABEL,
    category_order,
    is_categorical,
    qualitative_colours,
)
from histoatlas.atlas.encode import smallest_uint

CONTINUOUS_STEPS = 255  # codes 0 .. 254; 255 is missing
CONTINUOUS_CMAP = "viridis"


@dataclass(frozen=True)
class EncodedLabel:
    """One label of every point, as the page draws it.

    The codes take the smallest unsigned integer type that holds them, so a label of
    10^6 points is a megabyte or less in the page's data.

    Attributes
    ----------
    name : str
        As shown in the page's "colour by" list.
    kind : {"categorical", "continuous"}
    codes : ndarray, shape (N,), dtype uint8, uint16 or uint32
        Per point, an index into ``palette``.
    palette : list of str
        ``#rrggbb`` per code.
    categories : list of str
        Categorical: the text of each code (the last is "(missing)" when some point has
        none). Continuous: empty.
    counts : list of int
        Categorical: points per code.
    vmin, vmax : float or None
        Continuous: the values of codes 0 and 254.
    """

    name: str
    kind: str
    codes: np.ndarray
    palette: list[str]
    categories: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    vmin: float | None = None
    vmax: float | None = None

    def meta(self) -> dict[str, Any]:
        """What the page needs besides the codes (JSON-ready)."""
        meta = {"name": self.name, "kind": self.kind, "palette": self.palette}
        if self.kind == "categorical":
            meta.update(categories=self.categories, counts=self.counts)
        else:
            meta.update(vmin=self.vmin, vmax=self.vmax, missing=CONTINUOUS_STEPS)
        return meta

    def take(self, rows: np.ndarray) -> EncodedLabel:
        """The label of the points ``rows`` (codes subset; categories and palette kept)."""
        codes = self.codes[rows]
        counts = self.counts
        if self.kind == "categorical":
            counts = np.bincount(codes, minlength=len(self.categories)).tolist()
        return EncodedLabel(
            self.name, self.kind, codes, self.palette, self.categories, counts, self.vmin, self.vmax
        )


def encode_label(name: str, values: Sequence | pd.Series) -> EncodedLabel:
    """Encode one label of every point.

    Parameters
    ----------
    name : str
        Label name.
    values : sequence, shape (N,)
        Label of each point; missing values (None, NaN) allowed.

    Returns
    -------
    EncodedLabel

    Examples
    --------
    >>> label = encode_label("subtype", ["b", "a", None])
    >>> label.categories, label.codes.tolist()
    (['a', 'b', '(missing)'], [1, 0, 2])
    """
    values = pd.Series(values).reset_index(drop=True)
    missing = values.isna().to_numpy()
    if is_categorical(values) or missing.all():
        return _categorical(name, values, missing)
    return _continuous(name, pd.to_numeric(values, errors="raise").to_numpy(np.float64), missing)


def _categorical(name: str, values: pd.Series, missing: np.ndarray) -> EncodedLabel:
    from matplotlib.colors import to_hex

    order = category_order(values)
    palette = [to_hex(c) for c in qualitative_colours(len(order))]
    categories = [str(v) for v in order]
    n_codes = len(order) + int(missing.any())
    codes = np.full(len(values), len(order), dtype=smallest_uint(max(n_codes - 1, 0)))
    if len(order):
        keep = ~missing
        codes[keep] = pd.Categorical(values[keep], categories=order).codes
    if missing.any():
        categories.append(MISSING_LABEL)
        palette.append(MISSING_COLOUR)
    counts = np.bincount(codes, minlength=n_codes).tolist()
    return EncodedLabel(name, "categorical", codes, palette, categories, counts)


def _continuous(name: str, numbers: np.ndarray, missing: np.ndarray) -> EncodedLabel:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    finite = np.isfinite(numbers) & ~missing
    vmin, vmax = float(numbers[finite].min()), float(numbers[finite].max())
    span = vmax - vmin if vmax > vmin else 1.0
    top = CONTINUOUS_STEPS - 1
    codes = np.full(len(numbers), CONTINUOUS_STEPS, dtype=np.uint8)
    codes[finite] = np.round((numbers[finite] - vmin) / span * top).astype(np.uint8)
    cmap = colormaps[CONTINUOUS_CMAP]
    palette = [to_hex(cmap(k / top)) for k in range(CONTINUOUS_STEPS)] + [MISSING_COLOUR]
    return EncodedLabel(name, "continuous", codes, palette, vmin=vmin, vmax=vmax)


def cohort_labels(
    slide_map: Any, names: Sequence[str], *, n_clusters: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """Values of each label for every point of a map, as the UMAP plots compute them.

    Parameters
    ----------
    slide_map : SlideMap
        Loaded with its dataset (``cluster`` needs the activations) or its tiles table.
    names : sequence of str
        Built-ins ``slide``, ``prediction``, ``uncertainty``, ``cluster`` or columns of
        the tiles table (sheet labels).
    n_clusters, seed : int
        k-means of ``cluster`` (the plots' ``plots.n_clusters`` and ``umap.seed`` give
        the same clusters as ``umap_cluster.png``).

    Returns
    -------
    dict
        name -> ndarray, shape (N,), in the map's row order.

    Raises
    ------
    HistoatlasError
        For a label the map cannot give (the message lists what it has).
    """
    out = {}
    for name in dict.fromkeys(names):
        apply_label(slide_map, name, n_clusters=n_clusters, seed=seed)
        out[name] = slide_map.data["label"].to_numpy(copy=True)
    return out
