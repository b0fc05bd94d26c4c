"""Labelling a :class:`~histoatlas.analysis.slidemap.SlideMap`: by a column, by slide, by
predicted probability, by uncertainty, by k-means cluster (:class:`MapLabels`), and the
workflow's labels by name (:func:`apply_label`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from histoatlas.errors import ConfigError, HistoatlasError


class MapLabels:
    """The ``label*`` and ``cluster`` methods of :class:`SlideMap` (uses ``data``,
    ``class_names``, ``_activations``; sets ``data["label"]`` and ``label_name``)."""

    def _set_label(self, values: Any, name: str) -> Any:
        self.data["label"] = pd.Series(values, index=self.data.index)
        self.label_name = name
        return self

    def label(self, column: str) -> Any:
        """Label points by a column of ``data`` (a sheet label, ``slide``, ``pred_label``).

        Returns
        -------
        SlideMap
            ``self``, for chaining.

        Raises
        ------
        HistoatlasError
            If the column does not exist (the message lists those that do).
        """
        if column not in self.data.columns or column == "label":
            available = ", ".join(c for c in self.data.columns if c != "label")
            raise HistoatlasError(f"no column {column!r} to label the map by; have: {available}")
        return self._set_label(self.data[column].to_numpy(), column)

    def label_by_slide(self, labels: Mapping[str, Any], *, name: str = "label") -> Any:
        """Label points by a ``{slide: label}`` mapping; slides not in it are missing.

        Returns
        -------
        SlideMap
            ``self``.
        """
        if "slide" not in self.data.columns:
            raise HistoatlasError("this map has no `slide` column to label by")
        return self._set_label(self.data["slide"].map(dict(labels)).to_numpy(), name)

    def label_by_preds(self, class_index: int | str) -> Any:
        """Label points by the predicted probability of one class (continuous).

        Parameters
        ----------
        class_index : int or str
            Index into ``class_names`` (or the class name).

        Returns
        -------
        SlideMap
            ``self``.
        """
        columns = self._pred_columns()
        names = [c.removeprefix("pred_") for c in columns]
        if isinstance(class_index, str):
            if class_index not in names:
                raise HistoatlasError(f"no class {class_index!r}; classes: {', '.join(names)}")
            class_index = names.index(class_index)
        if not -len(columns) <= class_index < len(columns):
            raise HistoatlasError(
                f"class_index {class_index} out of range for {len(columns)} classes "
                f"({', '.join(names)})"
            )
        column = columns[class_index]
        return self._set_label(self.data[column].to_numpy(np.float64), f"p({names[class_index]})")

    def label_by_uncertainty(self) -> Any:
        """Label points by prediction uncertainty (continuous, in [0, 1]).

        Uses an ``uncertainty`` column when the data has one; otherwise the normalised
        entropy of the predicted class probabilities, ``-sum(p log p) / log(C)``
        (0: one class certain, 1: all classes equally likely).

        Returns
        -------
        SlideMap
            ``self``.
        """
        if "uncertainty" in self.data.columns:
            return self._set_label(self.data["uncertainty"].to_numpy(np.float64), "uncertainty")
        probs = self.data[self._pred_columns()].to_numpy(np.float64)
        return self._set_label(normalized_entropy(probs), "uncertainty")

    def _pred_columns(self) -> list[str]:
        named = [f"pred_{c}" for c in self.class_names]
        if named and all(c in self.data.columns for c in named):
            return named
        found = [c for c in self.data.columns if c.startswith("pred_") and c != "pred_label"]
        if not found:
            raise HistoatlasError(
                "this map has no predictions (pred_<class> columns); extract with "
                "`features.include_preds: true`, or load the map with its dataset"
            )
        return found

    def cluster(self, n_clusters: int, *, seed: int = 0) -> np.ndarray:
        """K-means on the activations; labels the map by cluster (``data["cluster"]``).

        Parameters
        ----------
        n_clusters : int
            Number of clusters ``k``.
        seed : int
            Seed of k-means.

        Returns
        -------
        ndarray, shape (N,), dtype int64
            Cluster of each point, ``0 .. k-1``, numbered by size (0 is the largest).

        Raises
        ------
        HistoatlasError
            If the map carries no activations (load it with ``dataset=``).
        ConfigError
            If ``n_clusters`` is below 1 or above the number of points.
        """
        from sklearn.cluster import KMeans

        if self._activations is None:
            raise HistoatlasError(
                "clustering needs the activations: build the map with from_features, or "
                "SlideMap.load(folder, dataset=DatasetFeatures.from_dataset(...))"
            )
        if not 1 <= n_clusters <= len(self):
            raise ConfigError(
                f"n_clusters={n_clusters} must lie in [1, {len(self)}] (the number of points)"
            )
        raw = KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto").fit_predict(
            self._activations
        )
        # renumber by size so the ids do not depend on k-means' arbitrary order
        counts = np.bincount(raw, minlength=n_clusters)
        rank = np.empty(n_clusters, dtype=np.int64)
        rank[np.lexsort((np.arange(n_clusters), -counts))] = np.arange(n_clusters)
        ids = rank[raw]
        self.data["cluster"] = ids
        self._set_label(ids, "cluster")
        return ids


def apply_label(slide_map: Any, label: str, *, n_clusters: int = 8, seed: int = 0) -> Any:
    """Label a map by a built-in label or a column, as the workflow's plots do.

    Parameters
    ----------
    slide_map : SlideMap
    label : str
        ``"slide"``; ``"prediction"`` (the predicted class, ``pred_label``);
        ``"uncertainty"`` (:meth:`SlideMap.label_by_uncertainty`); ``"cluster"``
        (:meth:`SlideMap.cluster` with ``n_clusters`` and ``seed``); or any column of
        ``slide_map.data`` (a sheet label).
    n_clusters, seed : int
        For ``"cluster"``.

    Returns
    -------
    SlideMap
        ``slide_map``, labelled.
    """
    if label == "prediction":
        if "pred_label" not in slide_map.data.columns:
            raise HistoatlasError(
                "label 'prediction' needs predictions (pred_label); extract with "
                "`features.include_preds: true`, or drop it from the plots"
            )
        slide_map.label("pred_label")
        slide_map.label_name = "prediction"
    elif label == "uncertainty":
        slide_map.label_by_uncertainty()
    elif label == "cluster":
        slide_map.cluster(n_clusters, seed=seed)
    else:
        slide_map.label(label)
    return slide_map


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of class probabilities divided by ``log(C)``, in [0, 1].

    Parameters
    ----------
    probs : ndarray, shape (N, C)
        Class probabilities (e.g. softmax outputs); each row is renormalised to sum
        to 1, negative values count as 0.

    Returns
    -------
    ndarray, shape (N,), dtype float64
        0 for a one-hot row; 1 for a uniform row; 0 when ``C == 1``.
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0, None)
    n, c = probs.shape
    if c < 2:
        return np.zeros(n)
    total = probs.sum(axis=1, keepdims=True)
    p = np.divide(probs, total, out=np.full_like(probs, 1.0 / c), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.clip(-terms.sum(axis=1) / np.log(c), 0.0, 1.0)
