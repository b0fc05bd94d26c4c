"""The training half of the backend interface: what a backend's ``Trainer`` (the demo CNN's
optimisation step) is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingSpec:
    """What a backend's ``Trainer`` (the demo CNN's training step) is built from.

    Attributes
    ----------
    n_classes, width : int
        Of the demo CNN.
    tile_px : int
        Tile edge (a Keras network is built for it; torch takes any size).
    mean, std : ndarray, shape (3,)
        Input normalisation, in [0, 1] units.
    class_weights : ndarray, shape (n_classes,)
        Loss weight of each class.
    learning_rate : float
        Adam's.
    seed : int
        Seeds the weights.
    num_threads : int
        The framework's intra-op threads.
    """

    n_classes: int
    width: int
    tile_px: int
    mean: Any
    std: Any
    class_weights: Any
    learning_rate: float
    seed: int
    num_threads: int
