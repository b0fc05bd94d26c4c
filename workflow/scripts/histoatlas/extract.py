"""Extract one slide's per-tile activations into its HDF5 file (the extract rule's work).

Tiles stream from :meth:`WSI.iter_batches` (a pool of reading workers) into the model.
On an accelerator, reading, filtering and inference overlap: worker processes read ahead
while the GPU runs. On the CPU the model's threads need every core, so reading takes turns
with the model instead (all workers on the next batch, then the model on all cores): the
throughput is then model cost / (model cost + read cost), the most a shared CPU gives
(``benchmarks/README.md``). The file is written once, through
:func:`~histoatlas.atomic.atomic_output`, when every tile is done: a failed or killed job
leaves no file that looks finished.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TextIO

import numpy as np

from histoatlas.errors import ConfigError, ModelError


def extract_slide(
    slide_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model,
    layers: str | Sequence[str] = ("postconv",),
    pooling: str | None = "avg",
    include_preds: bool = True,
    tile_px: int,
    tile_um: float | str,
    stride_div: int = 1,
    mpp: float | None = None,
    slide_name: str | None = None,
    tissue: Mapping | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    precision: str = "float32",
    overlap: bool | None = None,
    reader_processes: bool | None = None,
    allow_tile_px_mismatch: bool = False,
    trust_model_code: bool = False,
    log: TextIO | None = None,
    progress_every: float = 10.0,
) -> dict:
    """Tile a slide, run the model on every kept tile and write ``{slide}.h5``.

    Parameters
    ----------
    slide_path : str or PathLike
        The whole-slide image.
    out_path : str or PathLike
        The per-slide HDF5 file to write (see :mod:`histoatlas.slide_h5`).
    model : str, PathLike or LoadedModel
        Model path (see :func:`histoatlas.load_model`) or a loaded model.
    layers, pooling, include_preds
        As for :class:`histoatlas.Features`.
    tile_px : int
        Tile edge in pixels; must equal the model's ``params.json`` ``tile_px``.
    tile_um : float or str
        Tile edge in microns, or a magnification such as ``"20x"``.
    stride_div : int
        Grid step is the tile size divided by this (2: 50 % overlap).
    mpp : float, optional
        Overrides the slide file's microns per pixel (the sheet's ``mpp`` column).
    slide_name : str, optional
        Slide id stored in the file; default the file name without suffix.
    tissue : mapping, optional
        Tissue and filter options of :class:`histoatlas.WSI` (``otsu``,
        ``tissue_fraction``, ``grayspace_fraction``, ...).
    batch_size : int, optional
        Tiles per forward pass (default: see :class:`Features`).
    num_workers : int, optional
        Slide-reading workers; default every core this process may use. On a GPU the
        reading sets the pace: on 16 Xeon cores an H200 ran ResNet-50 at 8,600 tiles/s
        while reading gave 1,700 tiles/s with 4 workers, 3,500 with 16.
    device : str, optional
        Torch device; default CUDA, then MPS, then CPU.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of the forward pass (see :class:`Features`); activations
        are stored as float32 and the file's ``precision`` attribute records it.
    overlap : bool, optional
        Read the next batches while the model runs. Default: on an accelerator yes;
        on the CPU no (reading waits for the model, which keeps every core).
    reader_processes : bool, optional
        Read in worker processes rather than threads (see :meth:`WSI.iter_batches`).
        Default: processes on an accelerator with more than 8 workers (threads stop
        scaling there), else threads.
    allow_tile_px_mismatch : bool
        Run even when ``tile_px`` differs from the model's ``tile_px``.
    trust_model_code : bool
        Allow model files that need arbitrary objects unpickled (see ``load_model``).
    log : text stream, optional
        Where progress goes; default ``sys.stderr`` (the job's log).
    progress_every : float
        Least seconds between two progress lines.

    Returns
    -------
    dict
        ``n_grid``, ``n_candidates``, ``n_kept``, ``n_filtered``; ``seconds`` (reading
        and inference), ``tiles_per_s`` (kept tiles per second of that) and
        ``seconds_total`` (including model loading and tissue detection).

    Raises
    ------
    ModelError
        If the model cannot be loaded, or ``tile_px`` differs from the model's and
        ``allow_tile_px_mismatch`` is False (naming both values).
    LayerError
        If a layer is not in the model.
    SlideError
        If the slide cannot be opened or read, or has no usable MPP.
    ConfigError
        If a tiling or tissue option is invalid.

    Examples
    --------
    >>> qc = extract_slide("s1.svs", "results/features/demo/s1.h5",
    ...                    model="resources/demo/model", tile_px=224, tile_um=112)  # doctest: +SKIP
    >>> qc["n_kept"], round(qc["tiles_per_s"])  # doctest: +SKIP
    (812, 240)
    """
    import histoatlas
    from histoatlas.features import Features
    from histoatlas.models import LoadedModel, load_model
    from histoatlas.progress import Progress
    from histoatlas.slide_h5 import QC_ATTRS, write_slide_h5
    from histoatlas.wsi import WSI

    stream = log if log is not None else sys.stderr
    t_start = time.perf_counter()
    # Cheap checks first (params.json, then opening the slide and its MPP), so a bad
    # model path or slide fails in milliseconds, before the network loads.
    if not isinstance(model, LoadedModel):
        check_model_path(model, tile_px=tile_px, allow_mismatch=allow_tile_px_mismatch)
    with WSI(
        slide_path,
        tile_px,
        tile_um,
        stride_div=stride_div,
        mpp=mpp,
        name=slide_name,
        **_tissue_kwargs(tissue, WSI),
    ) as wsi:
        _say(stream, f"{wsi!r}")
        if isinstance(model, LoadedModel):
            loaded = model.to(device) if device is not None else model
        else:
            loaded = load_model(model, device=device, trust_model_code=trust_model_code)
        check_tile_px(loaded, tile_px, allow_mismatch=allow_tile_px_mismatch)
        features = Features(
            loaded,
            layers,
            pooling=pooling,
            include_preds=include_preds,
            batch_size=batch_size,
            precision=precision,
        )
        features.probe(wsi.tile_px)
        _say(stream, f"{features!r}, {features.num_features} features per tile")
        candidates = wsi.candidates
        rank = np.full(wsi.grid_shape, -1, dtype=np.int64)
        rank[candidates[:, 0], candidates[:, 1]] = np.arange(len(candidates))
        progress = Progress(
            len(candidates), stream=stream, label=wsi.name, unit="tiles", every=progress_every
        )
        chunks = []
        kept = 0
        t_loop = time.perf_counter()
        on_cpu = loaded.device.startswith("cpu")
        overlap = not on_cpu if overlap is None else bool(overlap)
        if num_workers is None:
            num_workers = available_cores()
        if reader_processes is None:
            # threads stop scaling near 8 (Python's GIL); processes go on with the cores
            reader_processes = not on_cpu and num_workers > PROCESS_READERS_ABOVE
        batches = wsi.iter_batches(
            features.batch_size,
            num_workers=num_workers,
            prefetch=1 if overlap else 0,
            processes=bool(reader_processes),
        )
        # closing: a failure stops the readers now, not when the traceback dies
        with (
            cpu_threads_beside_readers(
                loaded.device, num_workers if overlap else 0, backend=loaded.backend
            ),
            keep_freed_memory(on_cpu),
            contextlib.closing(
                features.iter_features(batches, prefetch_depth=2 if overlap else 0)
            ) as results,
        ):
            for batch, feats, preds in results:
                chunks.append((feats, preds, batch.coords, batch.grid))
                kept += len(feats)
                # candidates are read in order, so the last tile's rank counts those scanned
                i, j = batch.grid[-1]
                progress.set(int(rank[i, j]) + 1, note=f"{kept} kept")
        seconds = time.perf_counter() - t_loop
        progress.close(done=len(candidates))

        feats, preds, coords, grid = _stack(chunks, features)
        order = np.lexsort((grid[:, 0], grid[:, 1]))  # row by row, as WSI.candidates
        qc = dict(wsi.qc or {}) or {
            "n_grid": int(np.prod(wsi.grid_shape)),
            "n_candidates": len(candidates),
            "n_kept": kept,
            "n_filtered": len(candidates) - kept,
        }
        attrs = {
            "slide": wsi.name,
            "slide_path": os.fspath(slide_path),
            "mpp": float(wsi.mpp),
            "level0_width": int(wsi.dimensions[0]),
            "level0_height": int(wsi.dimensions[1]),
            "tile_px": int(wsi.tile_px),
            "tile_um": float(wsi.tile_um),
            "patch_size_level0": int(wsi.patch_size_level0),
            "stride_div": int(stride_div),
            "grid_shape": tuple(int(v) for v in wsi.grid_shape),
            "layers": list(features.layers),
            "layer_slices": {k: list(v) for k, v in features.layer_slices.items()},
            "pooling": features.pooling or "none",
            "model": os.fspath(loaded.path),
            "model_sha256": loaded.sha256(),
            "class_names": loaded.class_names,
            "histoatlas_version": histoatlas.__version__,
            "precision": features.precision,
            **{k: int(qc[k]) for k in QC_ATTRS},  # tile counts, for the cohort's qc table
        }
        write_slide_h5(
            out_path,
            features=feats[order],
            coords=coords[order],
            grid=grid[order],
            predictions=preds[order] if preds is not None else None,
            attrs=attrs,
        )
    qc["seconds"] = seconds
    qc["tiles_per_s"] = kept / seconds if seconds > 0 else 0.0
    qc["seconds_total"] = time.perf_counter() - t_start
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in qc.items()}
    _say(stream, f"{attrs['slide']}: wrote {out_path} ({kept} tiles); qc {shown}")
    return qc


def check_tile_px(loaded, tile_px: int, *, allow_mismatch: bool = False) -> None:
    """Refuse tiles of another size than the model was trained on.

    A model without ``params.json`` (a bare TorchScript file) declares no tile size,
    so nothing is checked.

    Raises
    ------
    ModelError
        Naming the model's and the config's ``tile_px``.
    """
    _check_tile_px(
        loaded.path, loaded.params, loaded.params_path, tile_px, allow_mismatch=allow_mismatch
    )


def check_model_path(
    model: str | os.PathLike, *, tile_px: int, allow_mismatch: bool = False
) -> None:
    """Check a model path and its ``tile_px`` without loading the network.

    Cheap (it reads ``params.json`` only, no torch), so the workflow calls it before any
    job runs: a wrong model path or tile size fails once, not once per slide.

    Parameters
    ----------
    model : str or PathLike
        Model directory, TorchScript or Keras file (see :func:`histoatlas.load_model`).
    tile_px : int
        The config's ``tiles.px``.
    allow_mismatch : bool
        Accept a ``tile_px`` other than the model's (``tiles.allow_model_mismatch``).

    Raises
    ------
    ModelError
        If the path does not exist, its ``params.json`` is missing or invalid, or its
        ``tile_px`` differs from ``tile_px`` and ``allow_mismatch`` is False.
    """
    from pathlib import Path

    from histoatlas.models.loading import read_params

    path = Path(model)
    params, params_path = read_params(path)
    _check_tile_px(path, params, params_path, tile_px, allow_mismatch=allow_mismatch)


def _check_tile_px(path, params, params_path, tile_px: int, *, allow_mismatch: bool) -> None:
    trained = int(params.tile_px)
    if params_path is None or trained == int(tile_px) or allow_mismatch:
        return
    raise ModelError(
        f"model {path} was trained on {trained} px tiles (tile_px in "
        f"{params_path}), but the config asks for tiles.px = {tile_px}; set "
        f"tiles.px to {trained}, or allow the mismatch (tiles.allow_model_mismatch: true, "
        "allow_tile_px_mismatch=True) if the network accepts other sizes"
    )


@contextlib.contextmanager
def cpu_threads_beside_readers(
    device: str, num_workers: int | None, *, backend: str = "torch"
) -> Iterator[int]:
    """Leave CPU cores to the slide readers while the model runs on the CPU beside them.

    torch's intra-op threads default to every core; with reader threads beside them
    the cores are oversubscribed and both slow down (measured on 16 cores, demo CNN at
    224 px: 335 tiles/s with 16 torch threads and 4 readers, 649 with 12). Readers are
    given up to half the cores; the thread count is only ever lowered, and restored
    afterwards. ``num_workers=0`` (readers that do not run beside the model, as
    ``extract_slide`` reads on the CPU) leaves every core to torch. TensorFlow fixes its
    thread pools when it starts, so a Keras model (``backend="tensorflow"``) is left as it
    is, and torch is not imported for it.

    Yields
    ------
    int
        The torch thread count in effect (0 for a Keras model).
    """
    if backend != "torch":
        yield 0
        return
    import torch

    before = torch.get_num_threads()
    if not device.startswith("cpu"):
        yield before
        return
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n_cpus = n_cpus or 1
    readers = min(4, n_cpus) if num_workers is None else num_workers
    threads = min(before, max(1, n_cpus - min(readers, n_cpus // 2)))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


# Reader workers above which an accelerator's reading uses processes (measured: threads
# peak at 8 on a 16-core Xeon, 2,550 tiles/s; 16 processes gave 3,550).
PROCESS_READERS_ABOVE = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# glibc's mallopt parameters, and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Keep the memory a CPU forward pass frees, instead of page-faulting it back each batch.

    A network's activations on the CPU are tensors of tens of MB; glibc's malloc serves
    those with ``mmap`` and returns them to the system when freed, so every batch
    faults its memory in again, page by page (measured, ResNet-50 at 224 px on 2 cores,
    batch 32: 16,000 page faults and 32 ms of system time per tile, 23 tiles/s; with
    freed memory kept, 0.3 ms and 46 tiles/s). While active, malloc neither maps big
    blocks apart nor trims the heap; afterwards its defaults return and the heap is
    trimmed. Does nothing (yields False) when disabled or where libc is not glibc.

    Yields
    ------
    bool
        Whether malloc was tuned.
    """
    import ctypes
    import platform

    libc = None
    if enabled and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt"):
            libc = None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def _tissue_kwargs(tissue: Mapping | None, wsi_class) -> dict:
    tissue = dict(tissue or {})
    known = [
        name
        for name, p in inspect.signature(wsi_class).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in ("stride_div", "mpp", "name")
    ]
    unknown = sorted(set(tissue) - set(known))
    if unknown:
        raise ConfigError(f"tissue option(s) {unknown} unknown; known: {', '.join(known)}")
    return tissue


def _stack(chunks: list, features) -> tuple:
    if not chunks:
        width, n_classes = features.num_features, features.num_classes
        preds = np.zeros((0, n_classes), np.float32) if features.include_preds else None
        return (
            np.zeros((0, width), np.float32),
            preds,
            np.zeros((0, 2), np.int64),
            np.zeros((0, 2), np.int32),
        )
    feats, preds, coords, grid = zip(*chunks, strict=True)
    return (
        np.concatenate(feats),
        np.concatenate(preds) if features.include_preds else None,
        np.concatenate(coords).astype(np.int64, copy=False),
        np.concatenate(grid).astype(np.int32, copy=False),
    )


def _say(stream: TextIO, line: str) -> None:
    print(line, file=stream, flush=True)
