"""What every rule script does around its work: the job's log file, and its status file.

Inside :func:`job_logging`, every :mod:`logging` record of histoatlas (at INFO and above),
every warning and whatever a library prints to ``stderr`` goes to the job's log; an
exception is written there with its traceback before it leaves the job. Rules that declare
a ``status`` log (``extract_activations``) also get a small JSON file saying how the job
ended, which the qc table reads instead of parsing log text: written ``{"status": "ok"}``
or ``{"status": "failed", "error": "<Type>: <message>"}``, and removed when the job starts,
so a job killed before it could write one (SIGKILL, out of memory) leaves none. Both also
record the job's ``seconds`` and peak resident memory ``max_rss_mb`` (the process and its
children), what a per-job ``benchmark:`` file would give, without one more file per slide
for Snakemake to track (``benchmarks/README.md``, "dag").
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMAT = "%(message)s"


@contextlib.contextmanager
def job_logging(smk: Any) -> Iterator[logging.Logger]:
    """Send a rule script's logging, warnings and ``stderr`` to the job's log file.

    Parameters
    ----------
    smk : snakemake.script.Snakemake
        The script's ``snakemake`` object: ``log[0]`` (or ``log.log``) is the log file;
        ``log.status``, when the rule declares it, the status file.

    Yields
    ------
    logging.Logger
        The ``histoatlas`` logger (whose records now reach the file).

    Examples
    --------
    >>> def main(smk):  # doctest: +SKIP
    ...     with job_logging(smk):
    ...         extract_slide(...)
    """
    log_path = Path(_named(smk.log, "log", default=smk.log[0]))
    status_path = _named(smk.log, "status", default=None)
    if status_path is not None:
        Path(status_path).unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "w", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT))
        root = logging.getLogger()
        before = root.level, sys.stderr
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        sys.stderr = stream  # what libraries print (TensorFlow, numba) lands in the log too
        try:
            yield logging.getLogger("histoatlas")
        except BaseException as error:
            logging.getLogger("histoatlas").exception(f"{type(error).__name__}: {error}")
            error_text = f"{type(error).__name__}: {error}"
            _write_status(status_path, "failed", started, error_text)
            raise
        else:
            _write_status(status_path, "ok", started)
        finally:
            sys.stderr = before[1]
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(before[0])


def chosen(params: Any, *names: str) -> dict:
    """``{name: params.name}`` for the names: a rule's params as a function's keywords."""
    return {name: getattr(params, name) for name in names}


def read_status(path: str | Path) -> dict | None:
    """A job's status file (:func:`job_logging`), or None when there is none."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_status(path, status: str, started: float, error: str = "") -> None:
    if path is None:
        return
    # ru_maxrss is in KiB on Linux; children: reader processes of a GPU extraction
    peak = max(
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    record = {
        "status": status,
        **({"error": error} if error else {}),
        "seconds": round(time.monotonic() - started, 3),
        "max_rss_mb": round(peak / 1024, 1),
    }
    Path(path).write_text(json.dumps(record) + "\n")


def _named(files: Any, name: str, *, default):
    """A named entry of a Snakemake file list (``log.status``), or ``default``."""
    try:
        return getattr(files, name)
    except AttributeError:
        return default
