"""Training a small classifier in Keras 3: the demo CNN's training step (:class:`Trainer`).

The same network as the torch backend's (:func:`demo_cnn_keras`), the same loss and
optimiser; the demo (:mod:`histoatlas.demo.train`) runs the loop. Saved whole as
``model.keras``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoatlas.backends.keras.architectures import demo_cnn_keras
from histoatlas.backends.keras.model import keras3
from histoatlas.backends.training import TrainingSpec
from histoatlas.runtime import import_tensorflow

WEIGHTS_FILE = "model.keras"


class Trainer:
    """Adam on class-weighted sparse cross-entropy for :func:`demo_cnn_keras`.

    Parameters
    ----------
    spec : TrainingSpec
        ``num_threads`` takes effect only if TensorFlow has not started yet.
    """

    weights_file = WEIGHTS_FILE

    def __init__(self, spec: TrainingSpec) -> None:
        tf = import_tensorflow()
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(spec.num_threads))
        except RuntimeError:  # TensorFlow's runtime started already
            pass
        keras = keras3()
        keras.utils.set_random_seed(spec.seed)
        self.model = demo_cnn_keras(spec.n_classes, spec.width, tile_px=int(spec.tile_px))
        self.class_weight = dict(enumerate(np.asarray(spec.class_weights).tolist()))
        self.model.compile(
            optimizer=keras.optimizers.Adam(spec.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        self.mean = np.asarray(spec.mean, np.float32)
        self.std = np.asarray(spec.std, np.float32)

    def _input(self, tiles: np.ndarray) -> np.ndarray:
        return ((tiles.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)

    def step(self, tiles: np.ndarray, labels: np.ndarray) -> float:
        """One optimisation step on uint8 tiles ``(B, H, W, 3)``; returns the batch's loss."""
        loss = self.model.train_on_batch(self._input(tiles), labels, class_weight=self.class_weight)
        return float(np.asarray(loss).ravel()[0])

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Predicted class ``(B,)`` of uint8 tiles."""
        return np.asarray(self.model(self._input(tiles), training=False)).argmax(1)

    def save(self, path: Path) -> None:
        """Write the whole model as a Keras 3 ``.keras`` file."""
        self.model.save(path)
