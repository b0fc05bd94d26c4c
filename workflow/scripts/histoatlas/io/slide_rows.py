"""Reading a per-slide file in bounded memory: activations in row chunks, chosen rows, means.

The cohort's jobs read thousands of per-slide files (:mod:`histoatlas.io.slide_h5`); none
of them may hold a slide's whole ``(N, F)`` activations, which for a 200,000-tile slide of
a 1,536-d encoder is 1.2 GB. Chunks are sized in bytes (:data:`CHUNK_BYTES`), so a wide
encoder reads fewer rows at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoatlas.errors import HistoatlasError
from histoatlas.io.slide_h5 import open_slide_h5

# bytes of float32 activations read at once (rows = CHUNK_BYTES / (4 F))
CHUNK_BYTES = 32 * 2**20
# rows per h5py point selection: bounds the selection's own bookkeeping
SELECT_ROWS = 4096


def chunk_rows(width: int, *, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of ``width`` float32 columns that fit in ``chunk_bytes`` (at least 1)."""
    return max(1, chunk_bytes // (4 * max(int(width), 1)))


def iter_feature_chunks(
    path: str | os.PathLike, *, rows: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)``: consecutive float32 row blocks of a per-slide file's
    ``features``, ``rows`` at a time (default: :func:`chunk_rows` of its width)."""
    with open_slide_h5(path, ("features",)) as f:
        yield from _chunks(f["features"], rows)


def _chunks(features, rows: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks of an open ``features`` dataset, as float32."""
    step = rows or chunk_rows(features.shape[1])
    for first in range(0, len(features), step):
        yield first, features[first : first + step].astype(np.float32, copy=False)


def read_rows(path: str | os.PathLike, rows: np.ndarray, *, dataset: str = "features"):
    """Chosen rows of one dataset of a per-slide file, reading only those rows.

    Parameters
    ----------
    path : path
        A per-slide file.
    rows : ndarray of int, shape (M,)
        Sorted, unique row indices.
    dataset : str
        ``features`` (default), ``coords``, ``grid`` or ``predictions``.

    Returns
    -------
    ndarray, shape (M, width)
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) <= 0).any():
        raise ValueError("rows must be sorted and unique")
    with open_slide_h5(path, (dataset,)) as f:
        data = f[dataset]
        out = np.empty((len(rows), data.shape[1]), dtype=data.dtype)
        for k in range(0, len(rows), SELECT_ROWS):
            part = rows[k : k + SELECT_ROWS]
            out[k : k + len(part)] = data[part]
    return out


def feature_mean(features) -> np.ndarray:
    """Mean activation of a slide's tiles, accumulated in float64 over row chunks.

    Parameters
    ----------
    features : h5py.Dataset
        The ``features`` of a per-slide file that is open (its reader reads the rest of
        the file in the same open).

    Returns
    -------
    ndarray, shape (F,), dtype float32
        NaN everywhere for a slide without tiles.
    """
    n, width = features.shape
    if n == 0:
        return np.full(width, np.nan, dtype=np.float32)
    total = np.zeros(width, dtype=np.float64)
    for _, block in _chunks(features, None):
        total += block.sum(axis=0, dtype=np.float64)
    return (total / n).astype(np.float32)


@dataclass(frozen=True)
class VirtualFeatures:
    """A dataset's virtual ``features``: where its rows live, read one slide file at a time.

    Reading a virtual dataset through HDF5 opens every source file it touches and keeps
    them open, each with its own metadata and chunk caches, until the dataset is closed:
    a sample from 1,000 slide files took 1.1 GB more than the same sample from 100
    (``benchmarks/README.md``, "cohort"). This reads the mapping once (:meth:`open`) and
    each slide's rows from its own file, which is then closed.

    Attributes
    ----------
    n_rows, width : int
        The virtual dataset's shape.
    sources : tuple of (first_row, file, dataset)
        In row order; a slide without tiles has none. A plain (not virtual) ``features``
        is its own one source.
    """

    n_rows: int
    width: int
    sources: tuple[tuple[int, Path, str], ...]

    @classmethod
    def open(cls, path: str | os.PathLike) -> VirtualFeatures:
        """Read the mapping of a dataset's ``features.h5`` (``merge_dataset``'s), whose
        source paths are relative to its folder; a missing source file is named."""
        import h5py

        folder = Path(path).parent
        with h5py.File(path, "r") as f:
            features = f["features"]
            n_rows, width = features.shape
            if features.is_virtual:
                sources = [
                    (int(m.vspace.get_select_bounds()[0][0]), folder / m.file_name, m.dset_name)
                    for m in features.virtual_sources()
                ]
            else:  # a plain dataset (an empty cohort's, or one written whole)
                sources = [(0, Path(path), "features")] if n_rows else []
        for _, file, _ in sources:
            if not file.exists():
                raise HistoatlasError(
                    f"{path} points to {file}, which is missing: a per-slide file has moved "
                    "or been deleted since the dataset was merged; rerun merge_dataset"
                )
        return cls(int(n_rows), int(width), tuple(sorted(sources)))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Chosen rows (sorted, unique indices of the virtual dataset), as float32."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and (np.diff(rows) <= 0).any():
            raise ValueError("rows must be sorted and unique")
        out = np.empty((len(rows), self.width), dtype=np.float32)
        starts = [start for start, _, _ in self.sources]
        # rows are sorted, so each source's rows are one run of them
        bounds = np.searchsorted(rows, starts[1:] + [self.n_rows])
        first = 0
        for (start, file, dataset), stop in zip(self.sources, bounds, strict=True):
            if stop > first:
                out[first:stop] = read_rows(file, rows[first:stop] - start, dataset=dataset)
            first = stop
        return out

    def iter_chunks(self, *, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over every row, file by file: blocks never span two
        slides' files, and ``first_row`` is the block's row in the virtual dataset."""
        for start, file, _ in self.sources:
            for first, block in iter_feature_chunks(file, rows=rows):
                yield start + first, block
