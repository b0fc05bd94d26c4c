"""Merging a cohort's per-slide HDF5 files into its dataset table (the merge rule's work).

``merge_dataset`` writes ``tiles.parquet`` (one row per tile), ``slides.parquet`` (one row
per slide) and ``features.h5``, whose ``features`` is an HDF5 virtual dataset over the
per-slide files (no copy of the activations) and whose ``slide_features`` holds each
slide's mean activation. It reads one slide at a time, and a slide's activations in row
chunks: its memory does not grow with the cohort.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histoatlas.atomic import atomic_output
from histoatlas.errors import HistoatlasError
from histoatlas.io.sheet import label_columns
from histoatlas.io.slide_h5 import open_slide_h5, slide_attrs
from histoatlas.io.slide_rows import feature_mean

TILE_KEYS = ["slide", "tile", "x", "y", "grid_i", "grid_j"]


def merge_dataset(
    h5_paths: Sequence[str | os.PathLike],
    sheet: pd.DataFrame,
    *,
    tiles_path: str | os.PathLike,
    slides_path: str | os.PathLike,
    features_path: str | os.PathLike,
) -> pd.DataFrame:
    """Merge per-slide HDF5 files into the cohort's dataset table, one slide at a time.

    Memory holds one slide's keys and predictions and one chunk of its activations:
    ``tiles.parquet`` grows slide by slide (one row group each), each slide's mean
    activation is summed over row chunks, and ``features.h5`` points at the slide files.

    Parameters
    ----------
    h5_paths : sequence of path
        One per-slide file per row of ``sheet``, in the same order.
    sheet : DataFrame
        The checked slide sheet (``slide``, ``path``, optional ``mpp``, labels).
    tiles_path, slides_path, features_path : path
        Where to write ``tiles.parquet``, ``slides.parquet`` and ``features.h5``.

    Returns
    -------
    slides : DataFrame
        The slide table as written (``n_tiles`` per slide).

    Raises
    ------
    HistoatlasError
        If the files disagree on layers, feature width or classes (they come from
        different featuresets), naming the first file that differs.
    """
    import pyarrow.parquet as pq

    if len(h5_paths) != len(sheet):
        raise ValueError(f"{len(h5_paths)} h5 files for {len(sheet)} sheet rows")
    labels = label_columns(sheet)
    slides, slide_means, sources = [], [], []
    reference, writer = None, None
    with atomic_output(tiles_path) as tmp:
        try:
            for path, (_, row) in zip(h5_paths, sheet.iterrows(), strict=True):
                parts = _read_keys(path)
                signature = _signature(parts.attrs, parts.width)
                if reference is None:
                    reference = (path, signature, parts.attrs)
                elif signature != reference[1]:
                    raise HistoatlasError(
                        f"{path} has layers/width/classes {signature}, but {reference[0]} has "
                        f"{reference[1]}; all slides of a dataset must come from one featureset"
                    )
                table = _slide_tiles(row, parts, labels)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, _tiles_schema(table, sheet, labels))
                writer.write_table(_to_arrow(table, writer.schema))
                slides.append(_slide_row(row, parts, labels))
                slide_means.append(parts.mean)
                sources.append((Path(path), parts.n, parts.width))
        finally:
            if writer is not None:
                writer.close()
    slides_df = pd.DataFrame(slides)
    with atomic_output(slides_path) as tmp:
        slides_df.to_parquet(tmp, index=False)
    _write_features_h5(features_path, sources, slide_means, slides_df, reference[2])
    return slides_df


@dataclass
class _SlideKeys:
    """What the dataset needs of one slide file: everything but its activations, and
    their mean (all read in one open of the file)."""

    attrs: dict
    coords: np.ndarray
    grid: np.ndarray
    predictions: np.ndarray | None
    n: int
    width: int
    mean: np.ndarray


def _read_keys(path) -> _SlideKeys:
    with open_slide_h5(path, ("features", "coords", "grid")) as f:
        predictions = f["predictions"][()].astype(np.float32) if "predictions" in f else None
        return _SlideKeys(
            attrs=slide_attrs(f),
            coords=f["coords"][()].astype(np.int64, copy=False),
            grid=f["grid"][()].astype(np.int32, copy=False),
            predictions=predictions,
            n=int(f["features"].shape[0]),
            width=int(f["features"].shape[1]),
            mean=feature_mean(f["features"]),
        )


def _tiles_schema(first: pd.DataFrame, sheet: pd.DataFrame, labels: list[str]):
    """The Arrow schema of ``tiles.parquet``: the first slide's columns, with each label's
    type taken from the whole sheet (a label empty on the first slide is still typed)."""
    import pyarrow as pa

    schema = pa.Schema.from_pandas(first, preserve_index=False).remove_metadata()
    if labels:
        typed = pa.Schema.from_pandas(sheet[labels], preserve_index=False)
        for label in labels:
            schema = schema.set(schema.get_field_index(label), typed.field(label))
    if "pred_label" in first.columns:
        schema = schema.set(
            schema.get_field_index("pred_label"), pa.field("pred_label", pa.string())
        )
    return schema


def _to_arrow(table: pd.DataFrame, schema):
    import pyarrow as pa

    return pa.Table.from_pandas(
        table, schema=schema, preserve_index=False
    ).replace_schema_metadata()


def _slide_tiles(row, sf, labels: list[str]) -> pd.DataFrame:
    """One slide's rows of ``tiles.parquet``: keys, the sheet's labels, predictions."""
    table = tile_keys(row["slide"], sf)
    for label in labels:
        table[label] = row[label]
    if sf.predictions is not None:
        names = class_names_of(sf.attrs, sf.predictions.shape[1])
        for k, name in enumerate(names):
            table[f"pred_{name}"] = sf.predictions[:, k]
        table["pred_label"] = pd.Series(
            np.asarray(names, dtype=object)[sf.predictions.argmax(axis=1)]
            if len(sf.coords)
            else np.empty(0, dtype=object),
            dtype=object,
        )
    return table


def _slide_row(row, sf, labels: list[str]) -> dict:
    """One slide's row of ``slides.parquet``."""
    return {
        "slide": row["slide"],
        "path": str(sf.attrs.get("slide_path", row["path"])),
        "mpp": float(sf.attrs["mpp"]),
        "tile_px": int(sf.attrs["tile_px"]),
        "tile_um": float(sf.attrs["tile_um"]),
        "patch_size_level0": int(sf.attrs["patch_size_level0"]),
        # the centre of each tile the model saw (a preset's crop); older files: all of it
        "view_fraction": float(sf.attrs.get("view_fraction", 1.0)),
        "n_tiles": len(sf.coords),
        **{label: row[label] for label in labels},
    }


def _write_features_h5(path, sources, slide_means, slides_df, first_attrs: dict) -> None:
    """``features.h5``: the virtual ``features``, ``slide_features`` and the attributes."""
    import h5py

    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_virtual_features(f, sources, Path(path).parent)
        f.create_dataset("slide_features", data=np.stack(slide_means).astype(np.float32))
        f.attrs["slides"] = json.dumps(slides_df["slide"].tolist())
        f.attrs["n_tiles"] = json.dumps(slides_df["n_tiles"].tolist())
        for key in ("layers", "layer_slices", "class_names"):
            f.attrs[key] = json.dumps(first_attrs.get(key))
        for key in ("pooling", "model", "model_sha256"):
            f.attrs[key] = str(first_attrs.get(key))


def tile_keys(slide: str, sf) -> pd.DataFrame:
    """The key columns of ``tiles.parquet`` (see ``TILE_KEYS``) for one slide's file."""
    return pd.DataFrame(
        {
            "slide": slide,
            "tile": np.arange(len(sf.coords), dtype=np.int64),
            "x": sf.coords[:, 0],
            "y": sf.coords[:, 1],
            "grid_i": sf.grid[:, 0],
            "grid_j": sf.grid[:, 1],
        },
        columns=TILE_KEYS,
    )


def _signature(attrs: dict, width: int) -> tuple:
    return (tuple(attrs.get("layers") or ()), width, tuple(attrs.get("class_names") or ()))


def class_names_of(attrs: dict, n_classes: int) -> list[str]:
    """The file's class names, or ``0..C-1`` when it names none (or not C)."""
    names = list(attrs.get("class_names") or ())
    return names if len(names) == n_classes else [str(k) for k in range(n_classes)]


def _write_virtual_features(f, sources: list[tuple[Path, int, int]], out_dir: Path) -> None:
    """Create ``features`` as a virtual dataset over each slide file's ``features``.

    Source paths are stored relative to the dataset file, which HDF5 resolves against
    the dataset file's own directory, so the results folder can be moved as a whole.
    Built with h5py's low-level calls rather than ``create_virtual_dataset`` because
    that one stamps the dataset with its creation time, and the same inputs must give
    the same bytes.
    """
    from h5py import h5d, h5p, h5s, h5t

    width = sources[0][2]
    total = sum(n for _, n, _ in sources)
    if total == 0:
        f.create_dataset("features", shape=(0, width), dtype=np.float32)
        return
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.array([np.nan], dtype=np.float32))
    space = h5s.create_simple((total, width))
    start = 0
    for path, n, _ in sources:
        if n == 0:
            continue
        rel = os.path.relpath(Path(path).resolve(), out_dir.resolve())
        rows = space.copy()
        rows.select_hyperslab((start, 0), (n, width))
        dcpl.set_virtual(rows, rel.encode(), b"features", h5s.create_simple((n, width)))
        start += n
    float32 = h5t.py_create(np.dtype(np.float32), logical=1)
    h5d.create(f.id, b"features", float32, space, dcpl=dcpl).close()
