"""Process-wide settings, all in one place: threads, the allocator, environment defaults,
guarded imports and the one third-party patch.

Everything here changes state that the whole process shares. What can be scoped is a
context manager that restores the state on exit (:func:`torch_threads`,
:func:`keep_freed_memory`); what cannot be undone (an imported framework's configuration, a
blocked submodule, a patched module attribute) is done once, idempotently, and says so.

Measured traps behind each (DESIGN.md, "Known traps"):

- glibc's malloc unmaps every large freed block, so each CPU forward pass page-faults its
  activations back (ResNet-50 x1.6-2.4 slower): :func:`keep_freed_memory`.
- torch's intra-op threads take every core; readers beside them oversubscribe the CPU:
  :func:`torch_threads`, :func:`threads_beside_readers`.
- TensorFlow 2.21 imported before Triton segfaults, reserves all GPU memory and starts its
  own full thread pool: :func:`import_tensorflow`.
- ``import umap`` also imports TensorFlow (and crashed the interpreter here), and numba
  compiles UMAP's functions in every process: :func:`import_umap`.
- saliency 0.2.1's Guided IG calls ``np.quantile(interpolation=)``, gone in NumPy 2.4:
  :func:`patch_guided_ig_quantile`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_TF_CONFIGURED = False

# -- cores and threads -------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def threads_beside_readers(num_readers: int | None, *, current: int) -> int:
    """Intra-op threads for a model on the CPU beside ``num_readers`` reading threads.

    Readers get up to half the cores; the model the rest, and never more than it has now
    (measured on 16 cores, demo CNN at 224 px: 335 tiles/s with 16 torch threads and 4
    readers, 649 with 12). ``num_readers=None`` assumes :class:`~histoatlas.WSI`'s default
    of 4.
    """
    cores = available_cores()
    readers = min(4, cores) if num_readers is None else num_readers
    return min(current, max(1, cores - min(readers, cores // 2)))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Set torch's intra-op thread count (only ever lowered) and restore it on exit.

    Yields
    ------
    int
        The thread count in effect.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(before, max(1, int(threads))))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# -- the allocator ------------------------------------------------------------------------

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


# -- Snakemake's own process ---------------------------------------------------------------

# Allocations between young collections (CPython: 700), and the collections of one generation
# between two of the next (10, 10).
DAG_GC_THRESHOLDS = (20_000, 20, 20)


def collect_garbage_less() -> None:
    """Make Python's cyclic garbage collector cheaper in Snakemake's process, for good.

    Building the DAG of a large cohort allocates millions of small objects, and each full
    collection walks every object alive: the modules the Snakefile imported (pandas, numpy,
    the sheet) and the jobs so far. Measured on a 10,000-slide sheet (``benchmarks/README.md``,
    "dag"): the collector took ~20 % of a dry run. This moves what is alive now (loaded once,
    kept to the end anyway) out of the collector's sight (``gc.freeze``) and collects young
    objects every 20,000 allocations instead of 700. Called once, at the end of the
    Snakefile's setup; it cannot be undone, as Snakemake builds the DAG after the Snakefile
    has run. Cyclic garbage is still collected, only less often.
    """
    import gc

    gc.freeze()
    gc.set_threshold(*DAG_GC_THRESHOLDS)


# -- TensorFlow ----------------------------------------------------------------------------


def import_tensorflow():
    """Import TensorFlow once, configured for running beside torch; returns the module.

    On the first call (none of it can be undone, so it is done once): ``TF_CPP_MIN_LOG_LEVEL``
    defaults to 2 (warnings and errors only), ``KERAS_BACKEND`` to ``tensorflow``; where
    Triton is installed, its library is loaded before TensorFlow's (a later ``import
    triton``, which ``torch._dynamo``, ``torchvision.ops`` and ``timm`` do, would crash the
    process); every GPU gets memory growth (TensorFlow otherwise reserves all GPU memory at
    start); and when torch is already imported, TensorFlow's intra-op threads are set to
    ``torch.get_num_threads()`` and its inter-op threads to at most 2, so the two thread
    pools do not each claim every core.

    Returns
    -------
    module
        ``tensorflow``.
    """
    global _TF_CONFIGURED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" not in sys.modules:
        _load_triton_first()
    import tensorflow as tf

    if not _TF_CONFIGURED:
        _TF_CONFIGURED = True
        _configure_tensorflow(tf)
    return tf


def _load_triton_first() -> None:
    """Load Triton's native library before TensorFlow's (see :func:`import_tensorflow`).

    Importing ``triton`` after TensorFlow 2.21 segfaults (torch 2.14.1's triton, checked
    with ``import tensorflow; import triton``); loading ``triton._C.libtriton`` first
    (about 0.1 s) avoids it. Nothing happens where Triton is not installed.
    """
    import importlib.util

    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:  # a broken triton: torch does without it, so do we
        pass


def _configure_tensorflow(tf) -> None:
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # the GPU was initialised already
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = max(1, int(torch.get_num_threads()))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow's runtime started already
            pass


# -- umap-learn -----------------------------------------------------------------------------


def import_umap():
    """Import umap-learn without TensorFlow, with numba's on-disk cache enabled.

    ``umap/__init__`` imports its parametric (TensorFlow) variant when TensorFlow is
    installed: 10 s and TensorFlow's memory in every UMAP job, and a segfault in this
    environment. Blocking the submodule (``sys.modules["umap.parametric_umap"] = None``,
    for the life of the process) skips it. ``NUMBA_CACHE_DIR`` (when unset) points at a
    user cache: pynndescent's ``cache=True`` functions then compile once per machine even
    where site-packages is read-only (measured: first import 15 s, later ones 1.5 s).
    UMAP's own layout functions are not cacheable and still compile in each process (about
    10 s for fit, 3-6 s for transform).

    Returns
    -------
    module
        The ``umap`` package.
    """
    if "numba" not in sys.modules and not os.environ.get("NUMBA_CACHE_DIR"):
        cache = _numba_cache_dir()
        if cache is not None:
            os.environ["NUMBA_CACHE_DIR"] = str(cache)
    sys.modules.setdefault("umap.parametric_umap", None)
    import umap

    return umap


def _numba_cache_dir() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cache = Path(base) / "histoatlas" / "numba"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # numba then falls back to __pycache__ beside the sources
    return cache if os.access(cache, os.W_OK) else None


# -- saliency's Guided IG on NumPy 2.4 ------------------------------------------------------


class _NumpyQuantileCompat:
    """NumPy, except that ``quantile`` also takes the ``interpolation=`` keyword.

    saliency 0.2.1's Guided IG calls ``np.quantile(..., interpolation='lower')``:
    deprecated in NumPy 2.0 and a TypeError from 2.4, where it is ``method=``.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, *args, interpolation: str | None = None, **kwargs):
        if interpolation is not None:
            kwargs.setdefault("method", interpolation)
        return np.quantile(a, q, *args, **kwargs)


def patch_guided_ig_quantile() -> None:
    """Give ``saliency.core.guided_ig`` a NumPy whose ``quantile`` takes ``interpolation=``.

    Only that module's ``np`` name changes (for the life of the process); NumPy itself is
    untouched. Idempotent.
    """
    from saliency.core import guided_ig

    if not isinstance(guided_ig.np, _NumpyQuantileCompat):
        guided_ig.np = _NumpyQuantileCompat()
