"""Train the demo CNN on labelled tiles of the demo slides.

Tiles come from :class:`histoatlas.WSI` exactly as feature extraction will read them
(same tiling, same tissue filters); each kept tile takes the majority class of the
ground-truth map under it. Training is seeded and deterministic on a given machine
(fixed split, data order and augmentations) unless ``max_seconds`` cuts it short.
The model directory (``params.json``, the weights, ``training.json``) appears only when
complete. ``backend="tensorflow"`` trains the same network in Keras 3 instead
(:mod:`histoatlas.demo.train_keras`) and saves it as ``model.keras``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from histoatlas.demo.slides import read_label_map
from histoatlas.errors import ConfigError, EmptyDatasetError, SheetError

# A tile is labelled only if at least this fraction of it is tissue in the class map.
MIN_TISSUE = 0.5
BACKENDS = ("torch", "tensorflow")
# the weights file of the model directory, per backend (the demo rule's output names it)
WEIGHTS = {"torch": "weights.pt", "tensorflow": "model.keras"}


def collect_labelled_tiles(
    slide_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    *,
    class_names: Sequence[str],
    tile_px: int = 224,
    tile_um: float | str = 112,
    num_workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Tile the demo slides and label each kept tile by its majority class.

    Parameters
    ----------
    slide_paths, label_paths : sequence of path
        Demo slides and their class maps (``*.labels.png``), in the same order.
    class_names : sequence of str
        Expected class names; must equal those stored in every class map.
    tile_px : int
        Tile edge in pixels.
    tile_um : float or str
        Tile edge in microns, or a magnification such as ``"20x"``.
    num_workers : int, optional
        Tile-reading threads per slide (see :meth:`histoatlas.WSI.iter_batches`).

    Returns
    -------
    dict
        ``tiles`` uint8 ``(N, tile_px, tile_px, 3)``, ``labels`` int64 ``(N,)`` (index
        into ``class_names``), ``slide`` int64 ``(N,)`` (index into ``slide_paths``),
        ``coords`` int64 ``(N, 2)`` (level-0 x, y).

    Raises
    ------
    SheetError
        If the counts of slides and maps differ or a map's class names differ.
    """
    from histoatlas.wsi import WSI

    if len(slide_paths) != len(label_paths):
        raise SheetError(
            f"{len(slide_paths)} demo slides but {len(label_paths)} class maps; give one each"
        )
    class_names = tuple(class_names)
    parts: dict[str, list[np.ndarray]] = {"tiles": [], "labels": [], "slide": [], "coords": []}
    for index, (slide_path, label_path) in enumerate(zip(slide_paths, label_paths, strict=True)):
        label_map, names, ds = read_label_map(label_path)
        if names != class_names:
            raise SheetError(
                f"class map {label_path} has classes {list(names)}, expected "
                f"{list(class_names)}; rebuild the demo slides or fix class_names"
            )
        with WSI(slide_path, tile_px, tile_um) as wsi:
            size = wsi.patch_size_level0
            for batch in wsi.iter_batches(64, num_workers=num_workers):
                labels = np.array(
                    [_majority(label_map, x, y, size, ds, len(names)) for x, y in batch.coords]
                )
                keep = labels >= 0
                parts["tiles"].append(batch.tiles[keep])
                parts["labels"].append(labels[keep])
                parts["slide"].append(np.full(int(keep.sum()), index, np.int64))
                parts["coords"].append(batch.coords[keep])
    if not parts["tiles"]:
        tile_shape = (0, tile_px, tile_px, 3)
        return {
            "tiles": np.zeros(tile_shape, np.uint8),
            "labels": np.zeros(0, np.int64),
            "slide": np.zeros(0, np.int64),
            "coords": np.zeros((0, 2), np.int64),
        }
    return {key: np.concatenate(value) for key, value in parts.items()}


def _majority(label_map: np.ndarray, x: int, y: int, size: int, ds: int, n_classes: int) -> int:
    """Majority class (0-based) under a tile, or -1 if it is mostly background."""
    window = label_map[y // ds : -(-(y + size) // ds), x // ds : -(-(x + size) // ds)]
    counts = np.bincount(window.ravel(), minlength=n_classes + 1)
    if counts[1:].sum() < MIN_TISSUE * max(counts.sum(), 1):
        return -1
    return int(np.argmax(counts[1:]))


def training_inputs(sheet_path: str | os.PathLike) -> tuple[list[str], list[Path], tuple[str, ...]]:
    """Slides, class maps and class names of a demo cohort, from its slide sheet.

    Parameters
    ----------
    sheet_path : str or PathLike
        The sheet :func:`histoatlas.demo.build_demo_cohort` wrote (``slide, path, ...``).

    Returns
    -------
    slide_paths : list of str
        The sheet's ``path`` column.
    label_paths : list of Path
        The class map beside each slide (:func:`histoatlas.demo.label_path_for`).
    class_names : tuple of str
        Class names stored in the first class map.

    Raises
    ------
    SheetError
        If the sheet has no ``path`` column or no rows.
    """
    import pandas as pd

    from histoatlas.demo.slides import label_path_for

    sheet = pd.read_csv(sheet_path)
    if "path" not in sheet.columns or sheet.empty:
        raise SheetError(
            f"demo sheet {sheet_path} needs a `path` column and at least one row; "
            "rebuild it with make_demo_slides"
        )
    slide_paths = sheet["path"].astype(str).tolist()
    label_paths = [label_path_for(path) for path in slide_paths]
    return slide_paths, label_paths, read_label_map(label_paths[0])[1]


def split_indices(
    labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train / held-out split.

    Parameters
    ----------
    labels : ndarray, shape (N,), dtype int64
    val_fraction : float
        Fraction of each class held out (at least one tile of a class with two or more).
    seed : int

    Returns
    -------
    train, val : ndarray of int64
        Sorted row indices.

    Examples
    --------
    >>> train, val = split_indices(np.array([0, 0, 0, 0, 1, 1]), val_fraction=0.25, seed=0)
    >>> len(train), len(val)
    (4, 2)
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(rows)))
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        val.extend(rows[:n_val].tolist())
    val = np.sort(np.asarray(val, np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def train_demo_model(
    slide_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str],
    tile_px: int = 224,
    tile_um: float | str = 112,
    epochs: int = 10,
    seed: int = 0,
    max_seconds: float = 60,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    val_fraction: float = 0.2,
    width: int = 16,
    num_threads: int | None = None,
    backend: str = "torch",
    log: Callable[[str], object] | None = None,
) -> dict:
    """Train :func:`histoatlas.models.architectures.demo_cnn` on the demo slides.

    Adam on class-balanced cross-entropy, random flips and 90-degree rotations, a
    stratified held-out split of the tiles. Stops after ``epochs`` or once
    ``max_seconds`` of training have passed (checked after every batch), then measures
    accuracy with the final weights, which are the ones saved.

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
    tile_px : int
        Tile edge in pixels, written to ``params.json``.
    tile_um : float or str
        Tile edge in microns (or ``"20x"``), written to ``params.json``.
    epochs : int
        Passes over the training tiles.
    seed : int
        Seeds the split, data order, augmentations and weights.
    max_seconds : float
        Training time budget in seconds (tiling and evaluation not counted).
    batch_size : int
        Tiles per optimisation step.
    learning_rate : float
        Adam's learning rate.
    val_fraction : float
        Fraction of each class's tiles held out.
    width : int
        ``width`` of :func:`demo_cnn`.
    num_threads : int, optional
        Intra-op threads of the framework; default: all cores (``os.cpu_count()``).
    backend : {"torch", "tensorflow"}
        Train the torch ``demo_cnn`` or the same network in Keras 3
        (:func:`histoatlas.models.keras_architectures.demo_cnn_keras`).
    log : callable, optional
        Called with progress lines (e.g. ``print``).

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
        If ``backend`` is neither ``torch`` nor ``tensorflow``.

    Examples
    --------
    >>> train_demo_model(  # doctest: +SKIP
    ...     ["demo-1.tiff"], ["demo-1.labels.png"], "model",
    ...     class_names=["epithelium", "stroma", "ihc"],
    ... )
    {'train_accuracy': 0.97, 'val_accuracy': 0.95, 'n_tiles': 160, ...}
    """
    from histoatlas.models.params import ModelParams

    if backend not in BACKENDS:
        raise ConfigError(f"demo backend {backend!r} is not one of {', '.join(BACKENDS)}")
    say = log if log is not None else (lambda _line: None)
    class_names = tuple(class_names)
    data = collect_labelled_tiles(
        slide_paths, label_paths, class_names=class_names, tile_px=tile_px, tile_um=tile_um
    )
    tiles, labels = data["tiles"], data["labels"]
    counts = np.bincount(labels, minlength=len(class_names))
    say(
        f"{len(labels)} labelled tiles: "
        + ", ".join(f"{n} {c}" for n, c in zip(class_names, counts, strict=True))
    )
    if (counts > 0).sum() < 2:
        found = dict(zip(class_names, counts.tolist(), strict=True))
        raise EmptyDatasetError(
            f"demo training needs tiles of at least two classes, got {found} from "
            f"{len(slide_paths)} slide(s); add slides or use smaller tiles"
        )
    train, val = split_indices(labels, val_fraction=val_fraction, seed=seed)
    mean, std = _channel_stats(tiles[train])

    if backend == "tensorflow":
        from histoatlas.demo.train_keras import fit_keras as fit
    else:
        fit = _fit_torch
    fitted = fit(
        tiles,
        labels,
        train,
        mean=mean,
        std=std,
        n_classes=len(class_names),
        width=width,
        epochs=epochs,
        seed=seed,
        max_seconds=max_seconds,
        batch_size=batch_size,
        learning_rate=learning_rate,
        num_threads=num_threads or os.cpu_count() or 1,
        say=say,
    )

    train_acc = _accuracy(fitted.predict, tiles[train], labels[train])
    val_acc = _accuracy(fitted.predict, tiles[val], labels[val])
    result = {
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "n_tiles": int(len(labels)),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "class_counts": dict(zip(class_names, counts.tolist(), strict=True)),
        "epochs": fitted.epochs,
        "seconds": round(fitted.seconds, 2),
        "backend": backend,
    }
    say(
        f"accuracy: train {train_acc:.3f}, held-out {val_acc:.3f} on {len(val)} tiles "
        f"(chance {1 / len(class_names):.3f}); {result['epochs']} epochs in "
        f"{fitted.seconds:.1f} s"
    )

    params = ModelParams(
        backend=backend,
        architecture="demo_cnn",
        weights=WEIGHTS[backend],
        tile_px=int(tile_px),
        tile_um=tile_um,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        class_names=class_names,
        output="softmax",
        architecture_kwargs={"num_classes": len(class_names), "width": int(width)},
    )
    held_out = [
        [str(slide_paths[int(s)]), int(x), int(y), int(c)]
        for s, (x, y), c in zip(data["slide"][val], data["coords"][val], labels[val], strict=True)
    ]
    _write_model_dir(Path(out_dir), fitted.save, params, {**result, "held_out": held_out})
    return result


class Fitted(NamedTuple):
    """A trained demo network, as a backend's fit function hands it back.

    Attributes
    ----------
    predict : callable
        uint8 tiles ``(N, H, W, 3)`` -> predicted class ``(N,)`` int64 (eval mode).
    save : callable
        ``save(path)`` writes the weights file (``WEIGHTS[backend]``) at ``path``.
    epochs : float
        Epochs completed (fractional if the time budget cut one short).
    seconds : float
        Training time.
    """

    predict: Callable[[np.ndarray], np.ndarray]
    save: Callable[[Path], None]
    epochs: float
    seconds: float


def _fit_torch(
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
    """Train the torch ``demo_cnn`` on ``tiles[train]``."""
    import torch

    from histoatlas.models.architectures import demo_cnn

    torch.set_num_threads(num_threads)
    counts = np.bincount(labels, minlength=n_classes)
    torch.manual_seed(seed)
    model = demo_cnn(num_classes=n_classes, width=width)
    # channels-last convolutions run about twice as fast on CPU (measured here)
    model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # balanced loss: the demo's classes cover unequal areas
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    to_input = _Preprocess(mean, std)
    rng = np.random.default_rng(seed)

    start = time.monotonic()
    steps_done, steps_per_epoch = 0, -(-len(train) // batch_size)
    out_of_time = False
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(train)
        total, seen = 0.0, 0
        for b in range(steps_per_epoch):
            rows = order[b * batch_size : (b + 1) * batch_size]
            x = to_input(_augment(tiles[rows], rng))
            y = torch.from_numpy(labels[rows])
            optimiser.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
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
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(to_input(batch)).argmax(1).numpy()

    def save(path: Path) -> None:
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)

    return Fitted(predict, save, round(steps_done / steps_per_epoch, 3), seconds)


class _Preprocess:
    """uint8 NHWC tiles -> normalised float32 NCHW tensor, as histoatlas's loader does."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, tiles: np.ndarray):
        import torch

        x = (tiles.astype(np.float32) / 255.0 - self.mean) / self.std
        # NHWC memory seen as NCHW: torch's channels-last layout, no copy
        return torch.from_numpy(x).permute(0, 3, 1, 2)


def accuracy(
    model, tiles: np.ndarray, labels: np.ndarray, to_input, *, batch_size: int = 64
) -> float:
    """Fraction of ``tiles`` whose argmax prediction equals ``labels`` (eval mode).

    Parameters
    ----------
    model : torch.nn.Module
    tiles : ndarray, shape (N, H, W, 3), dtype uint8
    labels : ndarray, shape (N,)
    to_input : callable
        Maps a uint8 batch to the model's input tensor.
    batch_size : int

    Returns
    -------
    float
        NaN when ``tiles`` is empty.
    """
    import torch

    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(to_input(batch)).argmax(1).numpy()

    return _accuracy(predict, tiles, labels, batch_size=batch_size)


def _accuracy(predict, tiles: np.ndarray, labels: np.ndarray, *, batch_size: int = 64) -> float:
    """Fraction of ``tiles`` whose predicted class equals ``labels``; NaN when empty."""
    if len(tiles) == 0:
        return float("nan")
    hits = 0
    for b in range(0, len(tiles), batch_size):
        hits += int((predict(tiles[b : b + batch_size]) == labels[b : b + batch_size]).sum())
    return hits / len(tiles)


def _channel_stats(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 tiles, in [0, 1] units."""
    x = tiles.reshape(-1, 3)[:: max(1, tiles.size // 3 // 2_000_000)].astype(np.float64) / 255
    return x.mean(0), np.maximum(x.std(0), 1e-3)


def _augment(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip and 90-degree rotation per tile (tissue has no orientation)."""
    out = np.empty_like(tiles)
    ks, flips = rng.integers(4, size=len(tiles)), rng.integers(2, size=len(tiles))
    for n, (tile, k, flip) in enumerate(zip(tiles, ks, flips, strict=True)):
        tile = np.rot90(tile, k)
        out[n] = tile[:, ::-1] if flip else tile
    return out


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
