"""The atlas of a workflow cohort, from the files the other rules wrote.

Reads ``coords.parquet`` (with the dataset's tiles, or the whole dataset when the
``cluster`` label needs the activations), ``mosaic.parquet`` and, when there are
saliency maps, ``maps.csv``; computes the labels as the UMAP plots do; and writes the
atlas folder atomically (built under a temporary name, renamed when complete).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.analysis.map_stream import cluster_ids
from histoatlas.analysis.slidemap import SlideMap
from histoatlas.atlas.build import AtlasSettings, build_atlas
from histoatlas.atlas.labels import cohort_labels
from histoatlas.atomic import atomic_output


@dataclass(frozen=True)
class CohortFiles:
    """The workflow outputs an atlas is built from (the rule's named inputs).

    ``coords`` is ``umap/coords.parquet``; ``tiles``, ``slides`` and ``features`` are the
    dataset's ``tiles.parquet``, ``slides.parquet`` and ``features.h5`` (read only for the
    ``cluster`` label); ``mosaic`` is ``mosaic/mosaic.parquet``; ``saliency``, when the run
    makes saliency maps, ``saliency/maps.csv``.
    """

    coords: str | os.PathLike
    tiles: str | os.PathLike
    slides: str | os.PathLike
    features: str | os.PathLike
    mosaic: str | os.PathLike
    saliency: str | os.PathLike | None = None

    @classmethod
    def from_mapping(cls, files: Mapping[str, Any]) -> CohortFiles:
        """The files of a mapping (a rule's ``input.items()``), ignoring other keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(files).items() if k in names})


def build_cohort_atlas(
    out_dir: str | os.PathLike,
    files: CohortFiles,
    *,
    labels: Sequence[str],
    mosaic_cols: int,
    settings: AtlasSettings | None = None,
    n_clusters: int | None = None,
    cohort: str = "",
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Build a cohort's atlas from its workflow outputs.

    Parameters
    ----------
    out_dir : path
        The atlas folder (written atomically: built under a temporary name, renamed when
        complete; it must not exist).
    files : CohortFiles
        The map, the dataset, the mosaic and the saliency manifest.
    labels : sequence of str
        Labels to colour by, the first shown first (see
        :func:`histoatlas.atlas.labels.cohort_labels`).
    mosaic_cols : int
        ``mosaic.num_tiles_x`` the mosaic was made with.
    settings : AtlasSettings, optional
        Its ``seed`` also seeds k-means of ``cluster`` (as the ``cluster`` UMAP plot does
        with ``umap.seed``).
    n_clusters : int, optional
        k of ``cluster`` (``plots.n_clusters``; default 8).
    cohort : str
        The page's title.
    num_workers : int, optional
        Threads reading tiles.

    Returns
    -------
    dict
        As :func:`histoatlas.atlas.build_atlas`.
    """
    settings = settings or AtlasSettings()
    slide_table = pd.read_parquet(files.slides)
    slide_map, values = map_and_labels(
        files, slide_table, labels, n_clusters=n_clusters or 8, seed=settings.seed
    )
    with atomic_output(out_dir) as tmp:
        return build_atlas(
            tmp,
            points=slide_map.data,
            labels=values,
            slides=slide_table,
            mosaic=pd.read_parquet(files.mosaic),
            mosaic_cols=mosaic_cols,
            saliency=pd.read_csv(files.saliency) if files.saliency else None,
            cohort=cohort,
            settings=settings,
            num_workers=num_workers,
        )


def map_and_labels(
    files: CohortFiles, slide_table: pd.DataFrame, labels: Sequence[str], *, n_clusters, seed
) -> tuple[SlideMap, dict[str, np.ndarray]]:
    """The cohort's map (coordinates and tiles table) and each label's value per point.

    ``cluster`` is that of ``umap_cluster.png`` (:func:`map_stream.cluster_ids`: k-means
    on a capped sample, rows assigned slide file by slide file), never every activation
    in memory at once: a 10^7-tile cohort's ``features.h5`` is 30 GB.
    """
    tiles = pd.read_parquet(files.tiles)
    slide_map = SlideMap.load(files.coords, tiles=tiles, slides=slide_table)
    others = [name for name in labels if name != "cluster"]
    values = cohort_labels(slide_map, others, n_clusters=n_clusters, seed=seed)
    if "cluster" in labels:
        values["cluster"] = cluster_ids(files.features, n_clusters, seed=seed).astype(np.int64)
    return slide_map, {name: values[name] for name in dict.fromkeys(labels)}
