"""UMAP of a whole cohort in three steps, each in bounded memory, the middle one in parallel.

1. :func:`fit_cohort` (rule ``fit_umap``): reads only the rows it fits, straight from the
   per-slide files through the dataset's virtual ``features.h5`` (at most
   ``max_tiles_per_slide`` per slide, ``max_fit_tiles`` in all; the same seeded sample as the
   one-job :func:`~histoatlas.analysis.umap_fit.fit_umap`), fits, and writes the model (frame
   not yet set) and the sample's layout.
2. :func:`project_shard` (rule ``project_umap``, one job per shard of slides): projects the
   shard's other tiles with ``transform``, in chunks of ``chunk_size`` rows taken in cohort
   order as the one-job path takes them; fitted tiles keep their fitted positions.
3. :func:`gather_layout` (rule ``gather_umap``): the clipping box and [0, 1] frame of every
   tile's layout (exact percentiles, streamed), then ``coords.parquet`` and ``umap.joblib``.

With a reference map (``umap.reference``) step 1 is skipped: every tile is projected onto
the reference and scaled by its frame, so a new slide needs its own shard alone.

umap-learn's ``transform`` weighs each call's graph by its largest edge and picks its epochs
by the call's size (100 up to 10,000 rows, else 30), so a projected tile's position depends a
little on which tiles share its call: a cohort in one shard gets today's one-job layout bit
for bit; more shards place the projected tiles as the one-job path would with those calls.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from histoatlas.analysis.umap_fit import fit_model
from histoatlas.analysis.umap_layout import sample_in_order, streamed_layout_frame
from histoatlas.analysis.umap_model import FittedUMAP
from histoatlas.atomic import atomic_output
from histoatlas.errors import EmptyDatasetError, HistoatlasError
from histoatlas.io.slide_h5 import open_slide_h5
from histoatlas.io.slide_rows import VirtualFeatures, iter_feature_chunks
from histoatlas.io.table_rows import iter_batches

log = logging.getLogger(__name__)

# rows per transform call, as the one-job path (FittedUMAP.raw_transform) takes them
CHUNK_SIZE = 50_000
# rows of the layout tables read at a time: a few MB, whatever the cohort
BATCH_ROWS = 1 << 16


def fit_cohort(
    features_path: str | os.PathLike,
    *,
    model_path: str | os.PathLike,
    sample_path: str | os.PathLike,
    max_tiles_per_slide: int | None = None,
    max_fit_tiles: int | None = None,
    **fit_kwargs,
) -> FittedUMAP:
    """Fit UMAP on the cohort's sample, reading those rows alone from the per-slide files.

    Parameters
    ----------
    features_path : path
        The dataset's ``features.h5``: its virtual ``features`` maps the per-slide files in
        cohort order (attributes ``slides`` and ``n_tiles``), so reading a row reads it
        from its slide's file.
    model_path : path
        Where to write the fitted model (``umap.joblib`` format, frame unset).
    sample_path : path
        Where to write the sample's layout: ``slide``, ``tile``, ``raw_x``, ``raw_y``.
    max_tiles_per_slide, max_fit_tiles : int, optional
        Caps of the seeded sample, per slide and in all.
    **fit_kwargs
        ``pca_dim``, ``random_state``, ``margin`` and UMAP's keywords
        (see :func:`~histoatlas.analysis.umap_fit.fit_model`).

    Returns
    -------
    FittedUMAP

    Raises
    ------
    EmptyDatasetError
        If the cohort has no tiles, or too few to fit.
    """
    slides, counts = _cohort_slides(features_path)
    n_total = int(sum(counts))
    if n_total == 0:
        raise EmptyDatasetError(
            f"UMAP: the cohort has no tiles ({len(slides)} slides, every one without tissue "
            "after filtering); check the slides, or relax the tissue filters in config `tiles:`"
        )
    rows = sample_in_order(
        counts, max_tiles_per_slide, seed=fit_kwargs.get("random_state", 0), max_total=max_fit_tiles
    )
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    train = VirtualFeatures.open(features_path).read_rows(
        np.concatenate([s + r for s, r in zip(starts, rows, strict=True)])
    )
    fitted = fit_model(
        train,
        n_total=n_total,
        max_tiles_per_slide=max_tiles_per_slide,
        max_fit_tiles=max_fit_tiles,
        **fit_kwargs,
    )
    del train
    embedding = np.asarray(fitted.umap.embedding_, dtype=np.float32)
    sample = _table(
        slide=np.repeat(np.asarray(slides, dtype=object), [len(r) for r in rows]),
        tile=np.concatenate(rows),
        raw_x=embedding[:, 0],
        raw_y=embedding[:, 1],
    )
    _write_table(sample, sample_path)
    fitted.save(model_path)
    return fitted


def _cohort_slides(features_path) -> tuple[list[str], list[int]]:
    """The dataset's slides and their tile counts, in cohort order (``features.h5``'s)."""
    import h5py

    try:
        with h5py.File(features_path, "r") as f:
            return json.loads(f.attrs["slides"]), [int(n) for n in json.loads(f.attrs["n_tiles"])]
    except (OSError, KeyError) as e:
        raise HistoatlasError(
            f"{features_path} is not a dataset's features.h5 (merge_dataset's): {e}"
        ) from None


def project_shard(
    h5_paths: Sequence[str | os.PathLike],
    slides: Sequence[str],
    *,
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    sample_path: str | os.PathLike | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Place every tile of a shard of slides: fitted tiles from the sample, the rest projected.

    Parameters
    ----------
    h5_paths, slides : sequence
        The shard's per-slide files and slide ids, in cohort order.
    model_path : path
        The fitted model (``fit_umap``'s) or a reference ``umap.joblib``.
    out_path : path
        Parquet: ``slide``, ``tile``, ``x``, ``y`` (level-0), ``raw_x``, ``raw_y`` (UMAP
        units), ``fitted``; one row per tile, in cohort order.
    sample_path : path, optional
        ``fit_umap``'s sample (None with a reference map: every tile is projected).
    chunk_size : int
        Rows per ``transform`` call.

    Returns
    -------
    int
        Tiles placed.
    """
    import pyarrow.parquet as pq

    fitted = FittedUMAP.load(model_path)
    known = _sample_of(sample_path, slides) if sample_path else {}
    projector = _Projector(fitted, chunk_size)
    placed = 0
    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, SHARD_SCHEMA) as writer:
        for path, slide in zip(h5_paths, slides, strict=True):
            projector.add(_SlideLayout.start(path, slide, *known.get(slide, _NONE)))
            for done in projector.completed():
                placed += _write_slide(writer, done)
        for done in projector.completed(flush=True):
            placed += _write_slide(writer, done)
    log.info("placed %d tiles of %d slides (%d projected)", placed, len(slides), projector.done)
    return placed


def gather_layout(
    shard_paths: Sequence[str | os.PathLike],
    *,
    model_path: str | os.PathLike,
    umap_path: str | os.PathLike,
    coords_path: str | os.PathLike,
    reference: bool = False,
) -> FittedUMAP:
    """Frame the cohort's layout and write ``coords.parquet`` and ``umap.joblib``.

    Parameters
    ----------
    shard_paths : sequence of path
        :func:`project_shard` outputs, in cohort order.
    model_path : path
        The fitted model, or the reference map.
    umap_path, coords_path : path
        Outputs: the model with its frame (a byte copy of a reference), and one row per
        tile: ``slide``, ``tile``, ``x``, ``y``, ``umap_x``, ``umap_y`` in [0, 1].
    reference : bool
        The model is a reference map: keep its frame.

    Returns
    -------
    FittedUMAP
    """
    import pyarrow.parquet as pq

    fitted = FittedUMAP.load(model_path)
    if not reference:
        margin = fitted.params.get("margin", 0.1)
        fitted.set_frame(streamed_layout_frame(lambda: _raw_blocks(shard_paths), margin=margin))
    with atomic_output(coords_path) as tmp, pq.ParquetWriter(tmp, COORDS_SCHEMA) as writer:
        for shard in shard_paths:
            for batch in iter_batches(shard, batch_rows=BATCH_ROWS):
                raw = np.stack([batch["raw_x"], batch["raw_y"]], axis=1).astype(np.float32)
                xy = fitted.scale(raw)
                columns = {k: batch[k] for k in ("slide", "tile", "x", "y")}
                writer.write_table(_arrow(columns | {"umap_x": xy[:, 0], "umap_y": xy[:, 1]}))
    fitted.save(umap_path)
    return fitted


# -- the shard's tiles ------------------------------------------------------------------

_NONE = (np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.float32))


@dataclass
class _SlideLayout:
    """One slide of a shard while its tiles are being placed."""

    path: str
    slide: str
    coords: np.ndarray  # (N, 2) int64, level-0
    raw: np.ndarray  # (N, 2) float32, UMAP units
    fitted: np.ndarray  # (N,) bool
    left: int  # rows still to project

    @classmethod
    def start(cls, path, slide: str, tiles: np.ndarray, raw: np.ndarray) -> _SlideLayout:
        with open_slide_h5(path, ("features", "coords")) as f:
            coords = f["coords"][()].astype(np.int64, copy=False)
        fitted = np.zeros(len(coords), dtype=bool)
        fitted[tiles] = True
        layout = np.full((len(coords), 2), np.nan, dtype=np.float32)
        layout[tiles] = raw
        return cls(os.fspath(path), slide, coords, layout, fitted, int((~fitted).sum()))


class _Projector:
    """Projects the rest rows of consecutive slides in calls of exactly ``chunk_size`` rows
    (the last one shorter), crossing slide boundaries as the one-job path does.

    Rows go straight into one preallocated ``(chunk_size, F)`` buffer: with the PCA's copy
    of it, the job's largest arrays.
    """

    def __init__(self, fitted: FittedUMAP, chunk_size: int) -> None:
        self.fitted, self.chunk_size = fitted, int(chunk_size)
        self.slides: deque[_SlideLayout] = deque()
        self.buffer: np.ndarray | None = None
        self.owners: list[tuple[_SlideLayout, np.ndarray]] = []  # rows of the buffer, in order
        self.buffered = 0
        self.done = 0

    def add(self, layout: _SlideLayout) -> None:
        self.slides.append(layout)
        if layout.left == 0:
            return
        for first, block in iter_feature_chunks(layout.path):
            rows = first + np.flatnonzero(~layout.fitted[first : first + len(block)])
            taken = 0
            while taken < len(rows):
                if self.buffer is None:
                    self.buffer = np.empty((self.chunk_size, block.shape[1]), dtype=np.float32)
                k = min(len(rows) - taken, self.chunk_size - self.buffered)
                part = rows[taken : taken + k]
                self.buffer[self.buffered : self.buffered + k] = block[part - first]
                self.owners.append((layout, part))
                self.buffered += k
                taken += k
                if self.buffered == self.chunk_size:
                    self._project()

    def completed(self, flush: bool = False):
        """Slides whose every tile is placed, in order (all of them when ``flush``)."""
        if flush and self.buffered:
            self._project()
        while self.slides and self.slides[0].left == 0:
            yield self.slides.popleft()

    def _project(self) -> None:
        raw = self.fitted.raw_transform(self.buffer[: self.buffered], chunk_size=self.chunk_size)
        start = 0
        for layout, rows in self.owners:
            layout.raw[rows] = raw[start : start + len(rows)]
            layout.left -= len(rows)
            start += len(rows)
        self.done += self.buffered
        self.owners, self.buffered = [], 0


def _write_slide(writer, layout: _SlideLayout) -> int:
    n = len(layout.coords)
    columns = {
        "slide": np.full(n, layout.slide, dtype=object),
        "tile": np.arange(n, dtype=np.int64),
        "x": layout.coords[:, 0],
        "y": layout.coords[:, 1],
        "raw_x": layout.raw[:, 0],
        "raw_y": layout.raw[:, 1],
        "fitted": layout.fitted,
    }
    writer.write_table(_arrow(columns, SHARD_SCHEMA))
    return n


def _sample_of(sample_path, slides: Sequence[str]) -> dict:
    """``{slide: (tiles, raw)}`` of the fitted sample, for the shard's slides only."""
    import pyarrow.parquet as pq

    table = pq.read_table(sample_path, filters=[("slide", "in", list(slides))]).to_pandas()
    out = {}
    for slide, part in table.groupby("slide", sort=False):
        raw = part[["raw_x", "raw_y"]].to_numpy(np.float32)
        out[slide] = (part["tile"].to_numpy(np.int64), raw)
    return out


def _raw_blocks(shard_paths):

    for shard in shard_paths:
        for batch in iter_batches(shard, columns=["raw_x", "raw_y"], batch_rows=BATCH_ROWS):
            yield np.stack([batch["raw_x"], batch["raw_y"]], axis=1).astype(np.float32)


# -- tables -----------------------------------------------------------------------------


def _schema(**types):
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in types.items()])


SHARD_SCHEMA = _schema(
    slide="string",
    tile="int64",
    x="int64",
    y="int64",
    raw_x="float32",
    raw_y="float32",
    fitted="bool_",
)
# coords.parquet, as SlideMap.save_coords writes it (the map kind rides in pandas' attrs)
COORDS_SCHEMA = _schema(
    slide="string", tile="int64", x="int64", y="int64", umap_x="float32", umap_y="float32"
).with_metadata({"PANDAS_ATTRS": '{"histoatlas": {"map_slide": null}}'})


def _arrow(columns: dict, schema=None):
    import pyarrow as pa

    schema = schema or COORDS_SCHEMA
    arrays = [
        col if isinstance(col, pa.Array) else pa.array(np.asarray(col), type=f.type)
        for f, col in ((f, columns[f.name]) for f in schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _table(**columns):
    import pandas as pd

    return pd.DataFrame(columns)


def _write_table(table, path) -> None:
    with atomic_output(path) as tmp:
        table.to_parquet(tmp, index=False)
