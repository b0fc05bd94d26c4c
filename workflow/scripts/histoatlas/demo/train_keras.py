"""Train the demo CNN in Keras 3 (the demo's ``backend: tensorflow``).

The same network (:func:`histoatlas.models.keras_architectures.demo_cnn_keras`), data,
split, augmentations and class-balanced loss as the torch training in
:mod:`histoatlas.demo.train`, which calls :func:`fit_keras` and writes the model
directory; the network is saved whole as ``model.keras``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from histoatlas.demo.train import Fitted, _augment


def fit_keras(
    tiles: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    *,
    mean: np.ndarray,
    std: np.ndarray,
    n_classes: int,
    width: int,
    epochs: int,
    seed: int,
    max_seconds: float,
    batch_size: int,
    learning_rate: float,
    num_threads: int,
    say: Callable[[str], object],
) -> Fitted:
    """Train the Keras demo CNN on ``tiles[train]``.

    Parameters
    ----------
    tiles : ndarray, shape (N, H, W, 3), dtype uint8
    labels : ndarray, shape (N,), dtype int64
    train : ndarray of int
        Rows of ``tiles`` to train on.
    mean, std : ndarray, shape (3,)
        Normalisation, in [0, 1] units, as ``params.json`` will record it.
    n_classes, width : int
        Of :func:`demo_cnn_keras`.
    epochs, seed, max_seconds, batch_size, learning_rate
        As :func:`histoatlas.demo.train.train_demo_model`.
    num_threads : int
        TensorFlow intra-op threads (takes effect only if TensorFlow has not started).
    say : callable
        Progress lines.

    Returns
    -------
    Fitted
        ``predict``, ``save`` (writes ``model.keras``), ``epochs``, ``seconds``.
    """
    from histoatlas.models.keras_architectures import demo_cnn_keras
    from histoatlas.models.keras_model import import_tensorflow, keras3

    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
    except RuntimeError:  # TensorFlow's runtime started already
        pass
    keras = keras3()
    keras.utils.set_random_seed(seed)
    model = demo_cnn_keras(n_classes, width, tile_px=int(tiles.shape[1]))
    counts = np.bincount(labels, minlength=n_classes)
    # balanced loss: the demo's classes cover unequal areas
    class_weight = dict(enumerate((counts.sum() / np.maximum(counts, 1) / n_classes).tolist()))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    scale = (np.asarray(mean, np.float32), np.asarray(std, np.float32))

    def to_input(batch: np.ndarray) -> np.ndarray:
        return ((batch.astype(np.float32) / 255.0 - scale[0]) / scale[1]).astype(np.float32)

    rng = np.random.default_rng(seed)
    start = time.monotonic()
    steps_done, steps_per_epoch = 0, -(-len(train) // batch_size)
    out_of_time = False
    for epoch in range(epochs):
        order = rng.permutation(train)
        total, seen = 0.0, 0
        for b in range(steps_per_epoch):
            rows = order[b * batch_size : (b + 1) * batch_size]
            x = to_input(_augment(tiles[rows], rng))
            loss = model.train_on_batch(x, labels[rows], class_weight=class_weight)
            total += float(np.asarray(loss).ravel()[0]) * len(rows)
            seen += len(rows)
            steps_done += 1
            if time.monotonic() - start > max_seconds:
                out_of_time = True
                break
        say(
            f"epoch {epoch + 1}: loss {total / max(seen, 1):.3f} "
            f"({time.monotonic() - start:.1f} s)"
            + (" - time budget reached" if out_of_time else "")
        )
        if out_of_time:
            break
    seconds = time.monotonic() - start

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(to_input(batch), training=False)).argmax(1)

    def save(path: Path) -> None:
        model.save(path)

    return Fitted(predict, save, round(steps_done / steps_per_epoch, 3), seconds)
