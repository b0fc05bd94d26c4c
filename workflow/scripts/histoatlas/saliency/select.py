"""Which tiles get saliency maps: explicit points, or the top tiles of each class.

The config key ``saliency.tiles`` is either a list of ``{slide, x, y}`` (level-0
points, each snapped to the kept tile that contains it; an optional ``class`` names the
output to explain, by name or index, default the tile's predicted class), or
``{top_k_per_class: k}`` (for each class, the k tiles with the highest predicted
probability). The result, ``tiles.csv``, carries everything needed to read each tile
back from its slide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from histoatlas.atomic import atomic_output
from histoatlas.errors import ConfigError, EmptyDatasetError, SheetError
from histoatlas.io.table_rows import iter_batches

COLUMNS = [
    "slide",
    "tile",
    "x",
    "y",
    "class_idx",
    "class_name",
    "probability",
    "path",
    "mpp",
    "tile_px",
    "tile_um",
    "name",
]
_TILE_COLUMNS = ("slide", "tile", "x", "y")
_SLIDE_COLUMNS = ("slide", "path", "mpp", "tile_px", "tile_um", "patch_size_level0")


def class_columns(tiles) -> list[str]:
    """The ``pred_<class>`` columns of a tiles table, in class-index order.

    ``pred_label`` (the predicted class name) and non-float columns are not
    probabilities.
    """
    from pandas.api.types import is_float_dtype

    return [
        c
        for c in tiles.columns
        if c.startswith("pred_") and c != "pred_label" and is_float_dtype(tiles[c])
    ]


def select_tiles(tiles, slides, spec: Any):
    """Pick the tiles to explain, as the rows of ``tiles.csv``.

    Parameters
    ----------
    tiles : pandas.DataFrame
        The dataset's ``tiles.parquet``: ``slide``, ``tile``, ``x``, ``y``,
        ``pred_<class>`` columns.
    slides : pandas.DataFrame
        The dataset's ``slides.parquet``: ``slide``, ``path``, ``mpp``, ``tile_px``,
        ``tile_um``, ``patch_size_level0``.
    spec : list of dict or dict
        ``[{"slide": ..., "x": ..., "y": ..., "class": optional}, ...]`` or
        ``{"top_k_per_class": k}``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`; ``name`` (``{slide}_{x}_{y}_{class_name}``) is the
        folder the tile's maps go to. A tile picked twice for the same class appears
        once.

    Raises
    ------
    ConfigError
        A malformed spec, an unknown slide or class, or a point in no kept tile.
    SheetError
        The dataset tables lack a needed column or disagree on slides.
    EmptyDatasetError
        The dataset has no tiles.

    Examples
    --------
    >>> select_tiles(tiles, slides, {"top_k_per_class": 2})  # doctest: +SKIP
    >>> select_tiles(tiles, slides, [{"slide": "s1", "x": 1000, "y": 2300}])  # doctest: +SKIP
    """
    import pandas as pd

    _require(tiles, _TILE_COLUMNS, "tiles table")
    _require(slides, _SLIDE_COLUMNS, "slides table")
    if len(tiles) == 0:
        raise EmptyDatasetError("the dataset has no tiles, so no tile can get a saliency map")
    tiles = tiles.reset_index(drop=True)  # rows are found by label below
    if isinstance(spec, Mapping) and "top_k_per_class" in spec:
        unknown = sorted(set(spec) - {"top_k_per_class"})
        if unknown:
            raise ConfigError(f"saliency.tiles: unknown key(s) {unknown} beside top_k_per_class")
        picked = _top_k(tiles, spec["top_k_per_class"])
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        picked = _explicit(tiles, slides, spec)
    else:
        raise ConfigError(
            f"saliency.tiles must be a list of {{slide, x, y}} or {{top_k_per_class: k}}, "
            f"got {spec!r}"
        )
    picked = picked.drop_duplicates(["slide", "tile", "class_idx"], ignore_index=True)
    info = slides.drop_duplicates("slide").set_index("slide")
    missing = sorted(set(picked["slide"]) - set(info.index))
    if missing:
        raise SheetError(
            f"slides table has no row for slide(s) {missing} found in the tiles table; "
            "rerun merge_dataset"
        )
    for col in ("path", "mpp", "tile_px", "tile_um"):
        picked[col] = info.loc[picked["slide"], col].to_numpy()
    picked["name"] = [
        tile_dir_name(s, x, y, c)
        for s, x, y, c in zip(
            picked["slide"], picked["x"], picked["y"], picked["class_name"], strict=True
        )
    ]
    return pd.DataFrame(picked, columns=COLUMNS).reset_index(drop=True)


def select_tiles_to_csv(
    tiles_parquet: str | os.PathLike,
    slides_parquet: str | os.PathLike,
    spec: Any,
    out_csv: str | os.PathLike,
    *,
    batch_rows: int = 1 << 16,
):
    """Read the dataset tables, :func:`select_tiles`, and write ``tiles.csv`` atomically.

    The tiles table is read in row batches, its needed columns only: for
    ``top_k_per_class`` each batch's contenders join the best tiles so far (the same
    choice, ties in table order, as on the whole table); for explicit points only the
    named slides' rows are read. Memory does not grow with the cohort.

    Returns
    -------
    pandas.DataFrame
        What was written.
    """
    import pandas as pd

    slides = pd.read_parquet(slides_parquet)
    tiles = _contenders(tiles_parquet, spec, batch_rows)
    selected = select_tiles(tiles, slides, spec)
    with atomic_output(out_csv) as tmp:
        selected.to_csv(tmp, index=False)
    return selected


def _contenders(tiles_parquet, spec: Any, batch_rows: int):
    """The rows of the tiles table that :func:`select_tiles` can pick for ``spec``."""
    import pandas as pd
    import pyarrow.parquet as pq

    source = pq.ParquetFile(tiles_parquet)
    names = source.schema_arrow.names
    wanted = [c for c in names if c in _TILE_COLUMNS or c.startswith("pred_")]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        named = sorted({str(e["slide"]) for e in spec if isinstance(e, Mapping) and "slide" in e})
        if {"slide"} <= set(names) and named:
            subset = pq.read_table(tiles_parquet, columns=wanted, filters=[("slide", "in", named)])
            if subset.num_rows or not source.metadata.num_rows:
                return subset.to_pandas()
    if not (isinstance(spec, Mapping) and "top_k_per_class" in spec):
        return pd.read_parquet(tiles_parquet, columns=wanted)
    try:
        k = max(int(spec["top_k_per_class"]), 1)
    except (TypeError, ValueError):
        k = 1  # select_tiles names the bad value
    best = None
    for batch in iter_batches(tiles_parquet, columns=wanted, batch_rows=batch_rows):
        part = batch.to_pandas()
        best = part if best is None else pd.concat([best, part], ignore_index=True)
        keep = set()
        for column in class_columns(best):
            keep.update(best.nlargest(k, column, keep="first").index)
        if keep:  # without predictions select_tiles says so; keep the first rows only
            best = best.loc[sorted(keep)].reset_index(drop=True)
        else:
            best = best.head(1)
    return best if best is not None else pd.read_parquet(tiles_parquet, columns=wanted)


def tile_dir_name(slide: str, x: int, y: int, class_name: str) -> str:
    """Folder name of one explained tile: ``{slide}_{x}_{y}_{class}``.

    The class is part of the name because a tile can be explained for two classes;
    characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(class_name)) or "class"
    return f"{slide}_{int(x)}_{int(y)}_{safe}"


# -- the two kinds of spec --------------------------------------------------------------


def _top_k(tiles, k: Any):
    import pandas as pd

    try:
        k = int(k)
    except (TypeError, ValueError):
        raise ConfigError(f"saliency.tiles.top_k_per_class must be an integer, got {k!r}") from None
    if k < 1:
        raise ConfigError(f"saliency.tiles.top_k_per_class must be >= 1, got {k}")
    columns = class_columns(tiles)
    if not columns:
        raise ConfigError(
            "saliency.tiles.top_k_per_class needs predictions, but the tiles table has no "
            "pred_<class> columns: set features.include_preds: true, or list tiles explicitly"
        )
    parts = []
    for idx, col in enumerate(columns):
        # nlargest keeps the table order among ties, so the choice is reproducible
        top = tiles.nlargest(k, col, keep="first")
        parts.append(_rows(top, idx, col.removeprefix("pred_"), top[col]))
    return pd.concat(parts, ignore_index=True)


def _explicit(tiles, slides, spec: Sequence[Any]):
    import pandas as pd

    if len(spec) == 0:
        raise ConfigError("saliency.tiles is an empty list: name at least one {slide, x, y}")
    columns = class_columns(tiles)
    names = [c.removeprefix("pred_") for c in columns]
    patch = slides.drop_duplicates("slide").set_index("slide")["patch_size_level0"]
    parts = []
    for n, entry in enumerate(spec):
        if not isinstance(entry, Mapping) or not {"slide", "x", "y"} <= set(entry):
            raise ConfigError(
                f"saliency.tiles[{n}] must be a mapping with slide, x and y, got {entry!r}"
            )
        unknown = sorted(set(entry) - {"slide", "x", "y", "class"})
        if unknown:
            raise ConfigError(f"saliency.tiles[{n}]: unknown key(s) {unknown}")
        slide = str(entry["slide"])
        try:
            x, y = float(entry["x"]), float(entry["y"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"saliency.tiles[{n}]: x and y must be numbers, got {entry['x']!r}, {entry['y']!r}"
            ) from None
        if slide not in patch.index:
            raise ConfigError(
                f"saliency.tiles[{n}]: slide {slide!r} is not in the dataset; slides: "
                f"{', '.join(map(str, patch.index))}"
            )
        row = tiles.loc[[snap_point(tiles, slide, x, y, int(patch[slide]))]]
        idx, name = _entry_class(entry, row, columns, names, n)
        prob = row[columns[idx]] if columns else pd.Series([np.nan], index=row.index)
        parts.append(_rows(row, idx, name, prob))
    return pd.concat(parts, ignore_index=True)


def snap_point(tiles, slide: str, x: float, y: float, patch_size_level0: int):
    """Index label of the kept tile of ``slide`` whose square contains level-0 ``(x, y)``.

    A tile covers ``[x, x + patch) x [y, y + patch)``. With overlapping tiles
    (``stride_div > 1``) several contain the point; the one whose centre is nearest
    wins.

    Raises
    ------
    ConfigError
        No kept tile of the slide contains the point; the message names the slide,
        the point and the nearest kept tile.
    """
    own = tiles[tiles["slide"] == slide]
    tx, ty = own["x"].to_numpy(np.float64), own["y"].to_numpy(np.float64)
    p = float(patch_size_level0)
    inside = (tx <= x) & (x < tx + p) & (ty <= y) & (y < ty + p)
    dist = (tx + p / 2 - x) ** 2 + (ty + p / 2 - y) ** 2
    if not inside.any():
        hint = "it has no kept tiles"
        if len(own):
            near = int(np.argmin(dist))
            hint = (
                f"the nearest kept tile starts at ({int(tx[near])}, {int(ty[near])}) and "
                f"spans {int(p)} px"
            )
        raise ConfigError(
            f"saliency.tiles: point ({x:g}, {y:g}) of slide {slide!r} is not inside any kept "
            f"(tissue) tile; {hint}. Choose a point on tissue, in level-0 pixels"
        )
    dist[~inside] = np.inf
    return own.index[int(np.argmin(dist))]


def _entry_class(entry, row, columns, names, n) -> tuple[int, str]:
    if "class" not in entry:
        if not columns:
            raise ConfigError(
                f"saliency.tiles[{n}] gives no class and the dataset has no predictions to "
                "pick one from: add class: <name or index>, or set features.include_preds"
            )
        idx = int(np.argmax(row[columns].to_numpy(np.float64)[0]))
        return idx, names[idx]
    cls = entry["class"]
    if isinstance(cls, str) and cls in names:
        return names.index(cls), cls
    try:
        idx = int(cls)
    except (TypeError, ValueError):
        idx = None
    if idx is None or (names and not 0 <= idx < len(names)) or idx < 0:
        known = ", ".join(names) if names else "(no class names: give an index)"
        raise ConfigError(f"saliency.tiles[{n}]: class {cls!r} unknown; classes: {known}")
    return idx, names[idx] if names else str(idx)


def _rows(tiles, class_idx: int, class_name: str, probability):
    import pandas as pd

    return pd.DataFrame(
        {
            "slide": tiles["slide"].astype(str).to_numpy(),
            "tile": tiles["tile"].to_numpy(np.int64),
            "x": tiles["x"].to_numpy(np.int64),
            "y": tiles["y"].to_numpy(np.int64),
            "class_idx": class_idx,
            "class_name": class_name,
            "probability": np.asarray(probability, np.float64),
        }
    )


def _require(table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SheetError(
            f"the dataset's {what} lacks column(s) {missing}; has {list(table.columns)}"
        )
