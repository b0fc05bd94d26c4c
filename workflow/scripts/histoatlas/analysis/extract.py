"""Extract one slide's per-tile activations into its HDF5 file (the extract rule's work).

:func:`extract_slide` reads as its three steps: open the slide and the model
(:func:`_open`), run the tile batches through the model (:func:`_run_batches`), write the
file (:func:`_write`). Tiles stream from :meth:`WSI.iter_batches` (a pool of reading
workers) into the model. On an accelerator, reading, filtering and inference overlap:
worker processes read ahead while the GPU runs. On the CPU the model's threads need every
core, so reading takes turns with the model instead (all workers on the next batch, then
the model on all cores): the throughput is then model cost / (model cost + read cost), the
most a shared CPU gives (``benchmarks/README.md``). The file is written once, through
:func:`~histoatlas.atomic.atomic_output`, when every tile is done: a failed or killed job
leaves no file that looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

import histoatlas
from histoatlas import runtime
from histoatlas.analysis.features import Features
from histoatlas.backends import LoadedModel, load_model
from histoatlas.backends.base import POSTCONV
from histoatlas.backends.loading import check_model_path, check_tile_px
from histoatlas.errors import HistoatlasError
from histoatlas.io.slide_h5 import QC_ATTRS, READER_ATTRS, SlideH5Writer
from histoatlas.io.tiling import TileOptions
from histoatlas.io.wsi import WSI
from histoatlas.progress import Progress

log = logging.getLogger(__name__)

# Reader workers above which an accelerator's reading uses processes (measured: threads
# peak at 8 on a 16-core Xeon, 2,550 tiles/s; 16 processes gave 3,550).
PROCESS_READERS_ABOVE = 8


@dataclass(frozen=True)
class FeatureOptions:
    """What the model computes per tile (``features:`` of the config).

    Attributes
    ----------
    layers : tuple of str
        Layer names, ``postconv`` and ``output``, concatenated in this order.
    pooling : {"avg", "max", None}
        See :class:`histoatlas.Features`.
    include_preds : bool
        Also store the predictions.
    precision : {"float32", "bfloat16", "float16"}
        Compute precision of the forward pass (activations are stored as float32).
    """

    layers: tuple[str, ...] = (POSTCONV,)
    pooling: str | None = "avg"
    include_preds: bool = True
    precision: str = "float32"

    def __post_init__(self) -> None:
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        object.__setattr__(self, "layers", layers)


@dataclass(frozen=True)
class RunOptions:
    """How the work is done; none of it changes a result.

    Attributes
    ----------
    batch_size : int, optional
        Tiles per forward pass (default: see :class:`histoatlas.Features`).
    num_workers : int, optional
        Slide-reading workers; default every core this process may use. On a GPU the
        reading sets the pace: on 16 Xeon cores an H200 ran ResNet-50 at 8,600 tiles/s
        while reading gave 1,700 tiles/s with 4 workers, 3,500 with 16.
    device : str, optional
        Default: CUDA, then MPS, then CPU.
    overlap : bool, optional
        Read the next batches while the model runs. Default: on an accelerator yes; on
        the CPU no (reading waits for the model, which keeps every core).
    reader_processes : bool, optional
        Read in worker processes rather than threads (see :meth:`WSI.iter_batches`).
        Default: processes on an accelerator with more than 8 workers (threads stop
        scaling there), else threads.
    progress_every : float
        Least seconds between two progress lines.
    """

    batch_size: int | None = None
    num_workers: int | None = None
    device: str | None = None
    overlap: bool | None = None
    reader_processes: bool | None = None
    progress_every: float = 10.0


@dataclass
class _Extracted:
    """What the batches gave: the kept tiles and the time taken."""

    kept: int = 0
    seconds: float = 0.0
    last: int = -1  # rank among WSI.candidates of the last tile written


def extract_slide(
    slide_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    model: str | os.PathLike | LoadedModel,
    tiles: TileOptions,
    features: FeatureOptions = FeatureOptions(),
    run: RunOptions = RunOptions(),
    mpp: float | None = None,
    slide_name: str | None = None,
    trust_model_code: bool = False,
) -> dict:
    """Tile a slide, run the model on every kept tile and write ``{slide}.h5``.

    The three steps: open the slide and the model, run the batches into the file, close it.

    Parameters
    ----------
    slide_path : str or PathLike
        The whole-slide image.
    out_path : str or PathLike
        The per-slide HDF5 file to write (see :mod:`histoatlas.io.slide_h5`).
    model : str, PathLike or LoadedModel
        Model path (see :func:`histoatlas.load_model`) or a loaded model.
    tiles : TileOptions
        Tile size, stride and the tissue filters; ``tiles.px`` must equal the model's
        ``params.json`` ``tile_px`` unless ``tiles.allow_model_mismatch``.
    features : FeatureOptions
        Layers, pooling, predictions, precision.
    run : RunOptions
        Batch size, readers, device, overlap: how, not what.
    mpp : float, optional
        Overrides the slide file's microns per pixel (the sheet's ``mpp`` column).
    slide_name : str, optional
        Slide id stored in the file; default the file name without suffix.
    trust_model_code : bool
        Allow model files that need arbitrary objects unpickled (see ``load_model``).

    Returns
    -------
    dict
        ``n_grid``, ``n_candidates``, ``n_kept``, ``n_filtered``; ``reader`` and
        ``read_ms_per_tile`` (see ``READER_ATTRS``); ``seconds`` (reading and inference),
        ``tiles_per_s`` (kept tiles per second of that) and ``seconds_total``.

    Raises
    ------
    ModelError
        If the model cannot be loaded, or ``tiles.px`` differs from the model's (naming
        both values).
    LayerError
        If a layer is not in the model.
    SlideError
        If the slide cannot be opened or read, or has no usable MPP.
    ConfigError
        If a tiling or tissue option is invalid.

    Examples
    --------
    >>> qc = extract_slide("s1.svs", "results/features/demo/s1.h5", model="resources/demo/model",
    ...                    tiles=TileOptions(px=224, um=112))  # doctest: +SKIP
    >>> qc["n_kept"], round(qc["tiles_per_s"])  # doctest: +SKIP
    (812, 240)
    """
    t_start = time.perf_counter()
    opened = _open(slide_path, model, tiles, features, run, mpp, slide_name, trust_model_code)
    with opened as (wsi, extractor), _writer(out_path, extractor) as writer:
        done = _run_batches(wsi, extractor, run, writer)
        qc = _tile_counts(wsi, done.kept)
        reading = _reading(wsi)
        writer.close(_attrs(wsi, extractor, {**qc, **reading}, slide_path=slide_path))
    qc.update({k: reading[k] for k in ("reader", "read_ms_per_tile")})
    qc["seconds"] = done.seconds
    qc["tiles_per_s"] = done.kept / done.seconds if done.seconds > 0 else 0.0
    qc["seconds_total"] = time.perf_counter() - t_start
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in qc.items()}
    log.info(f"{wsi.name}: wrote {out_path} ({done.kept} tiles); qc {shown}")
    return qc


@contextlib.contextmanager
def _open(slide_path, model, tiles, features, run, mpp, slide_name, trust_model_code):
    """Step 1: the slide (tiled, tissue found) and the model, as ``(wsi, Features)``.

    Cheap checks first (params.json, then opening the slide and its MPP), so a bad model
    path or slide fails in milliseconds, before the network loads.
    """
    if not isinstance(model, LoadedModel):
        check_model_path(model, tile_px=tiles.px, allow_mismatch=tiles.allow_model_mismatch)
    with WSI.from_options(slide_path, tiles, mpp=mpp, name=slide_name) as wsi:
        log.info(f"{wsi!r}")
        if isinstance(model, LoadedModel):
            loaded = model.to(run.device) if run.device is not None else model
        else:
            loaded = load_model(model, device=run.device, trust_model_code=trust_model_code)
        check_tile_px(loaded, tiles.px, allow_mismatch=tiles.allow_model_mismatch)
        extractor = Features(
            loaded,
            features.layers,
            pooling=features.pooling,
            include_preds=features.include_preds,
            batch_size=run.batch_size,
            precision=features.precision,
        )
        extractor.probe(wsi.tile_px)
        log.info(f"{extractor!r}, {extractor.num_features} features per tile")
        yield wsi, extractor


def _writer(out_path, extractor: Features) -> SlideH5Writer:
    """The slide's file, open under its temporary name for the batches to come."""
    n_classes = extractor.num_classes if extractor.include_preds else None
    return SlideH5Writer(out_path, n_features=extractor.num_features, n_classes=n_classes)


def _run_batches(wsi: WSI, extractor: Features, run: RunOptions, writer) -> _Extracted:
    """Step 2: every kept tile through the model into the file, with progress in the log."""
    loaded = extractor.model
    candidates = wsi.candidates
    rank = np.full(wsi.grid_shape, -1, dtype=np.int64)
    rank[candidates[:, 0], candidates[:, 1]] = np.arange(len(candidates))
    progress = Progress(len(candidates), label=wsi.name, unit="tiles", every=run.progress_every)
    on_cpu = loaded.device.startswith("cpu")
    overlap = not on_cpu if run.overlap is None else bool(run.overlap)
    num_workers = runtime.available_cores() if run.num_workers is None else run.num_workers
    processes = run.reader_processes
    if processes is None:
        # threads stop scaling near 8 (Python's GIL); processes go on with the cores
        processes = not on_cpu and num_workers > PROCESS_READERS_ABOVE
    batches = wsi.iter_batches(
        extractor.batch_size,
        num_workers=num_workers,
        prefetch=1 if overlap else 0,
        processes=bool(processes),
    )
    done = _Extracted()
    t_loop = time.perf_counter()
    # closing: a failure stops the readers now, not when the traceback dies
    with (
        loaded.cpu_threads(num_workers if overlap else 0),
        runtime.keep_freed_memory(on_cpu),
        contextlib.closing(
            extractor.iter_features(batches, prefetch_depth=2 if overlap else 0)
        ) as results,
    ):
        for batch, feats, preds in results:
            ranks = rank[batch.grid[:, 0], batch.grid[:, 1]]
            _check_order(ranks, done)
            writer.append(features=feats, coords=batch.coords, grid=batch.grid, predictions=preds)
            done.kept += len(feats)
            # candidates are read in order, so the last tile's rank counts those scanned
            progress.set(int(ranks[-1]) + 1, note=f"{done.kept} kept")
    done.seconds = time.perf_counter() - t_loop
    progress.close(done=len(candidates))
    return done


def _tile_counts(wsi: WSI, kept: int) -> dict:
    """The tiling's counts (``QC_ATTRS``), from the reader or, if it has none, the grid."""
    n_candidates = len(wsi.candidates)
    return dict(wsi.qc or {}) or {
        "n_grid": int(np.prod(wsi.grid_shape)),
        "n_candidates": n_candidates,
        "n_kept": kept,
        "n_filtered": n_candidates - kept,
    }


def _check_order(ranks: np.ndarray, done: _Extracted) -> None:
    """Rows go into the file as they come, so they must come in the order of
    ``WSI.candidates`` (``ranks``: each tile's place in it), which the readers keep;
    anything else is a bug, never a file."""
    if len(ranks) and (ranks[0] <= done.last or (np.diff(ranks) <= 0).any()):
        raise HistoatlasError(
            "tiles reached the writer out of grid order (row by row); the slide file would "
            "not match WSI.candidates: report this as a bug"
        )
    if len(ranks):
        done.last = int(ranks[-1])


def _reading(wsi: WSI) -> dict:
    """Who read the tiles and what it cost (``READER_ATTRS``), also said in the log."""
    choice, stats = wsi.reader_choice, wsi.read_stats or {}
    ms = 1e3 * stats.get("read_cpu_s", 0.0) / max(1, len(wsi.candidates))
    log.info(
        f"{wsi.name}: {choice.describe()}; {ms:.3f} ms of one core per tile (read, resize, "
        f"filters); {stats.get('n_fallback', 0)} regions left to OpenSlide"
    )
    return {
        "reader": choice.kind,
        "reader_reason": choice.reason,
        "reader_option": choice.option,
        "read_level": int(choice.level),
        "reader_levels": choice.level_kinds(),
        "read_ms_per_tile": ms,
        "reader_fallbacks": int(stats.get("n_fallback", 0)),
    }


def _attrs(wsi: WSI, extractor: Features, qc: dict, *, slide_path) -> dict:
    """Step 3: the per-slide file's attributes (its rows are in grid order, row by row)."""
    loaded = extractor.model
    return {
        "slide": wsi.name,
        "slide_path": os.fspath(slide_path),
        "mpp": float(wsi.mpp),
        "level0_width": int(wsi.dimensions[0]),
        "level0_height": int(wsi.dimensions[1]),
        "tile_px": int(wsi.tile_px),
        "tile_um": float(wsi.tile_um),
        "patch_size_level0": int(wsi.patch_size_level0),
        "stride_div": int(wsi.stride_div),
        "grid_shape": tuple(int(v) for v in wsi.grid_shape),
        "layers": list(extractor.layers),
        "layer_slices": {k: list(v) for k, v in extractor.layer_slices.items()},
        "pooling": extractor.pooling or "none",
        "model": os.fspath(loaded.path),
        "model_sha256": loaded.sha256(),
        "class_names": loaded.class_names,
        "histoatlas_version": histoatlas.__version__,
        "precision": extractor.precision,
        # how the tiles became the network's input (params.json; a preset's resize/crop)
        "input_px": int(
            loaded.params.network_px if loaded.params.transforms_input else wsi.tile_px
        ),
        "interpolation": loaded.params.interpolation,
        "view_fraction": float(loaded.params.view_fraction),
        **{k: int(qc[k]) for k in QC_ATTRS},  # tile counts, for the cohort's qc table
        **{k: qc[k] for k in READER_ATTRS},
    }
