"""A small progress reporter for job logs: done / total, rate and ETA, now and then.

Cluster logs are files, not terminals, so there are no carriage-return bars (tqdm's
redraws fill a log with noise): one plain line at most every ``every`` seconds, and a
final line when the work ends. Lines go to a :mod:`logging` logger at INFO, as every other
line of histoatlas does; a rule script's log file receives them
(:func:`histoatlas.pipeline.jobs.job_logging`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Progress:
    """Report progress of ``total`` units of work to a logger.

    Parameters
    ----------
    total : int
        Units of work expected.
    logger : logging.Logger, optional
        Where lines go (at INFO); default this module's logger.
    label : str
        Prefix of every line (e.g. the slide).
    unit : str
        Name of one unit in the lines.
    every : float
        Least seconds between two progress lines.
    clock : callable
        Seconds as a float; ``time.monotonic`` (replaceable in tests).
    write : callable, optional
        Called with each line instead of the logger.

    Examples
    --------
    >>> lines = []
    >>> p = Progress(10, label="s1", every=0, write=lines.append)
    >>> p.update(4)
    >>> p.close()
    >>> lines[-1].startswith("s1: done, 4/10 tiles")
    True
    """

    def __init__(
        self,
        total: int,
        *,
        logger: logging.Logger | None = None,
        label: str = "",
        unit: str = "tiles",
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], object] | None = None,
    ) -> None:
        self.total = int(total)
        self.write = write or (logger or logging.getLogger(__name__)).info
        self.label = label
        self.unit = unit
        self.every = float(every)
        self.clock = clock
        self.done = 0
        self.note = ""
        self.start = clock()
        self._last = self.start

    def update(self, n: int = 1, *, note: str | None = None) -> None:
        """Count ``n`` more units done; write a line if ``every`` seconds have passed."""
        self.set(self.done + n, note=note)

    def set(self, done: int, *, note: str | None = None) -> None:
        """Set the units done so far; write a line if ``every`` seconds have passed."""
        self.done = int(done)
        if note is not None:
            self.note = note
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self._write(self._line(now))

    def close(self, *, done: int | None = None, note: str | None = None) -> None:
        """Write the final line: units done, elapsed time and mean rate."""
        if done is not None:
            self.done = int(done)
        if note is not None:
            self.note = note
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        extra = f", {self.note}" if self.note else ""
        self._write(
            f"{self._prefix()}done, {self.done}/{self.total} {self.unit} in "
            f"{format_seconds(elapsed)} ({rate:.1f} {self.unit}/s){extra}"
        )

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = format_seconds(left / rate) if rate > 0 else "?"
        extra = f", {self.note}" if self.note else ""
        return (
            f"{self._prefix()}{self.done}/{self.total} {self.unit} ({pct:.0f}%){extra}, "
            f"{rate:.1f} {self.unit}/s, ETA {eta}"
        )

    def _prefix(self) -> str:
        return f"{self.label}: " if self.label else ""

    def _write(self, line: str) -> None:
        self.write(line)


def format_seconds(seconds: float) -> str:
    """``'42s'``, ``'3m07s'`` or ``'2h05m'``.

    Examples
    --------
    >>> format_seconds(187.4)
    '3m07s'
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
