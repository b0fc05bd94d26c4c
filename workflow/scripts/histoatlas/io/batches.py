"""Reading a slide's kept tiles in batches: a pool of workers, each with its own handle.

Candidates are cut into chunks of consecutive tiles; threads (sharing one decoded-tile
cache) or forked processes (writing into shared memory) read, decode and filter whole
chunks through :meth:`WSI.read_chunk`, and the kept tiles come out in candidate order.
Each chunk's CPU time (of the thread that read it) and the regions a fast reader left to
OpenSlide are summed, for the log's "ms per tile".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

# Most tiles one reading task reads (and filters) at a time.
READ_CHUNK = 16


class TileBatch(NamedTuple):
    """A batch of tiles from :meth:`WSI.iter_batches`.

    Attributes
    ----------
    tiles : ndarray, shape (B, tile_px, tile_px, 3), dtype uint8
    grid : ndarray, shape (B, 2), dtype int32
        Grid index (i, j) of each tile.
    coords : ndarray, shape (B, 2), dtype int64
        Level-0 (x, y) of each tile's top-left corner.
    """

    tiles: np.ndarray
    grid: np.ndarray
    coords: np.ndarray


def iter_tile_batches(
    wsi, batch_size: int, num_workers: int, prefetch: int, processes: bool, counts: dict
) -> Iterator[TileBatch]:
    """The kept tiles of a slide in batches (see :meth:`WSI.iter_batches`).

    ``counts`` receives ``n_grid``, ``n_candidates``, ``n_kept`` and ``n_filtered`` when the
    iterator is exhausted, and ``read_cpu_s`` (CPU seconds of the reading threads, summed)
    and ``n_fallback`` (regions a fast reader left to OpenSlide).
    """
    grid = wsi.candidates
    coords = wsi.coords_of(grid)
    n = len(grid)
    # chunks small enough that one batch keeps every worker busy
    chunk = max(1, min(READ_CHUNK, -(-batch_size // max(1, num_workers))))
    # in flight: what the current batch still lacks, plus `prefetch` batches
    ahead = (prefetch + 1) * batch_size
    pending: deque = deque()  # (first row, chunk length, ticket)
    submitted = in_flight = n_kept = filled = 0
    cost = np.zeros(2)  # CPU seconds, fallback regions
    out, out_rows = _empty_batch(wsi, batch_size), np.empty(batch_size, np.int64)
    with _ChunkReader(wsi, num_workers, processes, chunk, ahead // chunk + 2) as reader:
        while True:
            while submitted < n and in_flight < ahead - filled and reader.has_room():
                stop = min(n, submitted + chunk)
                pending.append((submitted, stop - submitted, reader.submit(coords[submitted:stop])))
                in_flight += stop - submitted
                submitted = stop
            if not pending:
                break
            start, size, ticket = pending.popleft()
            tiles, keep, chunk_cost = reader.result(ticket)
            cost += chunk_cost
            in_flight -= size
            rows = start + np.flatnonzero(keep)
            n_kept += len(rows)
            pos = 0
            while pos < len(rows):  # copy into the batch under way, yield when full
                take = min(batch_size - filled, len(rows) - pos)
                out[filled : filled + take] = tiles[pos : pos + take]
                out_rows[filled : filled + take] = rows[pos : pos + take]
                filled += take
                pos += take
                if filled == batch_size:
                    yield TileBatch(out, grid[out_rows], coords[out_rows])
                    out, filled = _empty_batch(wsi, batch_size), 0
        if filled:
            rows = out_rows[:filled]
            yield TileBatch(out[:filled], grid[rows], coords[rows])
    counts.update(
        {
            "n_grid": wsi.grid_shape[0] * wsi.grid_shape[1],
            "n_candidates": n,
            "n_kept": n_kept,
            "n_filtered": n - n_kept,
            "read_cpu_s": float(cost[0]),
            "n_fallback": int(cost[1]),
        }
    )


def _empty_batch(wsi, size: int) -> np.ndarray:
    return np.empty((size, wsi.tile_px, wsi.tile_px, 3), np.uint8)


class _ChunkReader:
    """Reads chunks of tiles (:meth:`WSI.read_chunk`) in worker threads or processes.

    ``submit(coords)`` starts a chunk and returns a ticket; ``result(ticket)`` waits for
    it and returns ``(kept tiles, keep mask, (CPU seconds, fallbacks))``, tickets in
    submission order. Threads each hold a reader of :meth:`WSI.open_reader` and share its
    decoded-tile cache. Processes (forked: fast to start, nothing re-imported) each open
    their own reader and write the kept tiles into one of ``slots`` chunk-sized slots of
    memory shared with this process, so only the keep mask travels through a pipe; the
    tiles returned are a view of the slot, valid until the next ``submit`` or ``result``.
    """

    def __init__(self, wsi, num_workers: int, processes: bool, chunk: int, slots: int):
        import multiprocessing

        self.wsi = wsi
        self.num_workers = num_workers
        self.processes = processes and num_workers > 0
        if self.processes and "fork" not in multiprocessing.get_all_start_methods():
            self.processes = False  # spawned workers would re-import everything: use threads
        self.chunk, self.n_slots = chunk, slots
        self._pool: Any = None
        self._handles: list[Any] = []
        self._free: deque[int] = deque()
        self._used: int | None = None

    def __enter__(self) -> _ChunkReader:
        if self.num_workers <= 0:
            return self
        if self.processes:
            import mmap
            import multiprocessing
            import pickle

            px = self.wsi.tile_px
            self._buffer = mmap.mmap(-1, self.n_slots * self.chunk * px * px * 3)  # shared
            self._slots = np.frombuffer(self._buffer, np.uint8).reshape(
                self.n_slots, self.chunk, px, px, 3
            )
            self._free.extend(range(self.n_slots))
            self._pool = ProcessPoolExecutor(
                self.num_workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_process_reader,
                initargs=(pickle.dumps(self.wsi), self._slots),
            )
            return self

        local = threading.local()
        lock = threading.Lock()
        # One decoded-tile cache for all readers: neighbouring tiles read by different
        # threads share the slide's JPEG tiles, which would otherwise be decoded twice.
        shared: dict = {}

        def read(coords: np.ndarray):
            reader = getattr(local, "reader", None)
            if reader is None:
                reader = local.reader = self.wsi.open_reader()
                with lock:
                    reader.share_cache(shared)
                    self._handles.append(reader)
            return read_costed(self.wsi, reader, coords)

        self._read = read
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix=f"wsi-{self.wsi.name}")
        return self

    def has_room(self) -> bool:
        """Whether another chunk can be submitted (processes: a slot is free)."""
        self._release()
        return not self.processes or bool(self._free)

    def submit(self, coords: np.ndarray) -> Any:
        self._release()
        if self._pool is None:
            return coords  # read in result(), in the calling thread
        if self.processes:
            slot = self._free.popleft()
            return slot, self._pool.submit(_read_chunk_in_process, slot, coords)
        return self._pool.submit(self._read, coords)

    def result(self, ticket: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, int]]:
        self._release()
        if self._pool is None:
            return read_costed(self.wsi, None, ticket)
        if self.processes:
            slot, future = ticket
            keep, cost = future.result()
            self._used = slot
            return self._slots[slot, : int(keep.sum())], keep, cost
        return ticket.result()

    def _release(self) -> None:
        if self._used is not None:
            self._free.append(self._used)
            self._used = None

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for slide in self._handles:
            slide.close()
        # the shared slots go with their last view (an mmap cannot close under one)


# The slide and shared slots of a reading process (see _ChunkReader), set when it starts.
_PROCESS_WSI: Any = None
_PROCESS_SLOTS: np.ndarray | None = None


def _init_process_reader(pickled_wsi: bytes, slots: np.ndarray) -> None:
    import pickle

    global _PROCESS_WSI, _PROCESS_SLOTS
    _PROCESS_WSI = pickle.loads(pickled_wsi)  # opens this process's own handle
    _PROCESS_SLOTS = slots


def _read_chunk_in_process(slot: int, coords: np.ndarray) -> tuple[np.ndarray, tuple]:
    tiles, keep, cost = read_costed(_PROCESS_WSI, None, coords)
    _PROCESS_SLOTS[slot, : len(tiles)] = tiles
    return keep, cost


def read_costed(wsi, reader, coords: np.ndarray):
    """:meth:`WSI.read_chunk`, with what it cost: this thread's CPU seconds, and the regions
    the reader (None: the WSI's own) left to OpenSlide."""
    stats = getattr(wsi._reader if reader is None else reader, "stats", None)
    fallbacks = stats["fallback"] if stats is not None else 0
    start = time.thread_time()
    tiles, keep = wsi.read_chunk(reader, coords)
    seconds = time.thread_time() - start
    if stats is not None:
        fallbacks = stats["fallback"] - fallbacks
    return tiles, keep, (seconds, fallbacks)
