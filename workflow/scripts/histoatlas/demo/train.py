"""Train the demo CNN on labelled tiles of the demo slides.

Training is seeded and deterministic on a given machine (fixed split, data order and
augmentations) unless ``max_seconds`` cuts it short. The loop is the demo's; each
optimisation step is the backend's (``Trainer`` of :mod:`histoatlas.backends.torch.training`
or :mod:`histoatlas.backends.keras.training`), so the torch and Keras demos learn from the
same tiles in the same order. The model directory (``params.json``, the weights,
``training.json``) appears only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoatlas.backends.loading import BACKENDS, backend_module
from histoatlas.backends.params import ModelParams
from histoatlas.backends.training import TrainingSpec
from histoatlas.demo.data import (
    accuracy,
    augment,
    channel_stats,
    collect_labelled_tiles,
    split_indices,
)
from histoatlas.errors import ConfigError, EmptyDatasetError

log = logging.getLogger(__name__)

# the weights file of the model directory, per backend (the demo rule's output names it)
WEIGHTS = {"torch": "weights.pt", "tensorflow": "model.keras"}


@dataclass(frozen=True)
class TrainOptions:
    """How the demo CNN is trained.

    Attributes
    ----------
    epochs : int
        Passes over the training tiles.
    seed : int
        Seeds the split, data order, augmentations and weights.
    max_seconds : float
        Training time budget in seconds (tiling and evaluation not counted), checked after
        every batch.
    batch_size : int
        Tiles per optimisation step.
    learning_rate : float
        Adam's learning rate.
    val_fraction : float
        Fraction of each class's tiles held out.
    width : int
        ``width`` of :func:`histoatlas.backends.torch.architectures.demo_cnn`.
    num_threads : int, optional
        Intra-op threads of the framework; default: all cores (``os.cpu_count()``).
    backend : {"torch", "tensorflow"}
        Train the torch ``demo_cnn`` or the same network in Keras 3
        (:func:`histoatlas.backends.keras.architectures.demo_cnn_keras`).
    """

    epochs: int = 10
    seed: int = 0
    max_seconds: float = 60
    batch_size: int = 32
    learning_rate: float = 2e-3
    val_fraction: float = 0.2
    width: int = 16
    num_threads: int | None = None
    backend: str = "torch"


def train_demo_model(
    slide_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str],
    tile_px: int = 224,
    tile_um: float | str = 112,
    options: TrainOptions = TrainOptions(),
) -> dict:
    """Train the demo CNN on the demo slides and write its model directory.

    Adam on class-balanced cross-entropy, random flips and 90-degree rotations, a
    stratified held-out split of the tiles. Stops after ``options.epochs`` or once
    ``options.max_seconds`` of training have passed, then measures accuracy with the final
    weights, which are the ones saved. Progress goes to this module's logger.

    Parameters
    ----------
    slide_paths, label_paths : sequence of path
        Demo slides and their class maps, in the same order.
    out_dir : str or PathLike
        Model directory to write: ``params.json`` (:class:`ModelParams`), the weights
        (torch: ``weights.pt``, a plain state dict; tensorflow: ``model.keras``, the whole
        Keras 3 model) and ``training.json`` (metrics, and the held-out tiles as
        ``[slide path, x, y, label]``). Replaced as a whole, only when complete.
    class_names : sequence of str
        Class names, in label order (as stored in the class maps).
    tile_px, tile_um : int, float or str
        The tiling (``tile_um`` may be ``"20x"``), written to ``params.json``.
    options : TrainOptions

    Returns
    -------
    dict
        ``train_accuracy``, ``val_accuracy`` (final weights, no augmentation),
        ``n_tiles``, ``n_train``, ``n_val``, ``class_counts``, ``epochs`` (completed,
        fractional if stopped mid-epoch), ``seconds`` (training time), ``backend``.

    Raises
    ------
    EmptyDatasetError
        If fewer than two classes have tiles.
    SheetError
        If the class maps do not match ``class_names``.
    ConfigError
        If ``options.backend`` is neither ``torch`` nor ``tensorflow``.

    Examples
    --------
    >>> train_demo_model(["demo-1.tiff"], ["demo-1.labels.png"], "model",
    ...                  class_names=["epithelium", "stroma", "ihc"])  # doctest: +SKIP
    {'train_accuracy': 0.97, 'val_accuracy': 0.95, 'n_tiles': 160, ...}
    """
    opts = options
    if opts.backend not in BACKENDS:
        raise ConfigError(f"demo backend {opts.backend!r} is not one of {', '.join(BACKENDS)}")
    class_names = tuple(class_names)
    data = collect_labelled_tiles(
        slide_paths, label_paths, class_names=class_names, tile_px=tile_px, tile_um=tile_um
    )
    counts = _class_counts(data["labels"], class_names, n_slides=len(slide_paths))
    train, val = split_indices(data["labels"], val_fraction=opts.val_fraction, seed=opts.seed)
    mean, std = channel_stats(data["tiles"][train])
    trainer = _trainer(
        opts, n_classes=len(class_names), data=data, mean=mean, std=std, counts=counts
    )
    epochs, seconds = _fit(trainer, data, train, opts)
    result = _evaluate(trainer, data, train, val, class_names, counts)
    result.update(epochs=epochs, seconds=round(seconds, 2), backend=opts.backend)
    log.info(
        f"accuracy: train {result['train_accuracy']:.3f}, held-out {result['val_accuracy']:.3f} "
        f"on {len(val)} tiles (chance {1 / len(class_names):.3f}); {epochs} epochs in "
        f"{seconds:.1f} s"
    )
    params = _model_params(opts, class_names, tile_px, tile_um, mean, std)
    training = {**result, "held_out": _held_out(data, val, slide_paths)}
    _write_model_dir(Path(out_dir), trainer.save, params, training)
    return result


def _model_params(opts: TrainOptions, class_names, tile_px, tile_um, mean, std) -> ModelParams:
    """The demo model directory's ``params.json``."""
    return ModelParams(
        backend=opts.backend,
        architecture="demo_cnn",
        weights=WEIGHTS[opts.backend],
        tile_px=int(tile_px),
        tile_um=tile_um,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        class_names=class_names,
        output="softmax",
        architecture_kwargs={"num_classes": len(class_names), "width": int(opts.width)},
    )


def _trainer(opts: TrainOptions, *, n_classes: int, data: dict, mean, std, counts):
    """The backend's ``Trainer`` for the demo CNN."""
    spec = TrainingSpec(
        n_classes=n_classes,
        width=opts.width,
        tile_px=int(data["tiles"].shape[1]),
        mean=mean,
        std=std,
        # balanced loss: the demo's classes cover unequal areas
        class_weights=counts.sum() / np.maximum(counts, 1) / len(counts),
        learning_rate=opts.learning_rate,
        seed=opts.seed,
        num_threads=opts.num_threads or os.cpu_count() or 1,
    )
    return backend_module(opts.backend, "training").Trainer(spec)


def _held_out(data: dict, val: np.ndarray, slide_paths) -> list:
    """The held-out tiles as ``[slide path, x, y, label]``."""
    return [
        [str(slide_paths[int(s)]), int(x), int(y), int(c)]
        for s, (x, y), c in zip(
            data["slide"][val], data["coords"][val], data["labels"][val], strict=True
        )
    ]


def _class_counts(labels: np.ndarray, class_names: tuple[str, ...], *, n_slides: int):
    """Tiles per class; at least two classes must have some."""
    counts = np.bincount(labels, minlength=len(class_names))
    log.info(
        f"{len(labels)} labelled tiles: "
        + ", ".join(f"{n} {c}" for n, c in zip(class_names, counts, strict=True))
    )
    if (counts > 0).sum() < 2:
        found = dict(zip(class_names, counts.tolist(), strict=True))
        raise EmptyDatasetError(
            f"demo training needs tiles of at least two classes, got {found} from "
            f"{n_slides} slide(s); add slides or use smaller tiles"
        )
    return counts


def _fit(trainer, data: dict, train: np.ndarray, opts: TrainOptions):
    """The training loop: seeded order and augmentations, stopped by the time budget.

    Returns the epochs completed (fractional if cut short) and the seconds spent.
    """
    tiles, labels = data["tiles"], data["labels"]
    epochs, batch_size = opts.epochs, opts.batch_size
    rng = np.random.default_rng(opts.seed)
    start = time.monotonic()
    steps_done, steps_per_epoch = 0, -(-len(train) // batch_size)
    out_of_time = False
    for epoch in range(epochs):
        order = rng.permutation(train)
        total, seen = 0.0, 0
        for b in range(steps_per_epoch):
            rows = order[b * batch_size : (b + 1) * batch_size]
            total += trainer.step(augment(tiles[rows], rng), labels[rows]) * len(rows)
            seen += len(rows)
            steps_done += 1
            if time.monotonic() - start > opts.max_seconds:
                out_of_time = True
                break
        log.info(
            f"epoch {epoch + 1}: loss {total / max(seen, 1):.3f} "
            f"({time.monotonic() - start:.1f} s)"
            + (" - time budget reached" if out_of_time else "")
        )
        if out_of_time:
            break
    return round(steps_done / steps_per_epoch, 3), time.monotonic() - start


def _evaluate(trainer, data: dict, train, val, class_names, counts) -> dict:
    """Accuracy with the final weights on the training and held-out tiles."""
    tiles, labels = data["tiles"], data["labels"]
    return {
        "train_accuracy": accuracy(trainer.predict, tiles[train], labels[train]),
        "val_accuracy": accuracy(trainer.predict, tiles[val], labels[val]),
        "n_tiles": int(len(labels)),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "class_counts": dict(zip(class_names, counts.tolist(), strict=True)),
    }


def _write_model_dir(
    out_dir: Path, save_weights: Callable[[Path], None], params, training: dict
) -> None:
    """Write the model directory beside its final name, then swap it in."""
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_weights(tmp / params.weights)
        (tmp / "training.json").write_text(json.dumps(training, indent=1) + "\n")
        params.to_json(tmp / "params.json")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
