"""Write outputs under a temporary name and rename them when complete.

A job killed at any moment must never leave a file that Snakemake or a reader would
take as finished: the final name only appears through an atomic ``os.replace``. A job
killed by SIGKILL cannot remove its temporary file; the next successful write of the
same output removes such leftovers (see :func:`remove_stale_partials`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


def partial_path(path: str | os.PathLike) -> Path:
    """Return the temporary name used while ``path`` is being written.

    The name keeps the directory (so the final rename is atomic) and the suffix
    (so libraries that dispatch on it, such as pandas or PIL, still work).
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>\d+)(?P<suffix>.*)$")


def is_partial(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary name of :func:`partial_path` (never a finished file).

    Readers that list a folder (``*.h5``) use it to skip files still being written, or
    left behind by a killed job.
    """
    return _PARTIAL.match(Path(path).name) is not None


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` whose writing process no longer runs.

    A job killed by SIGKILL leaves its ``.{stem}.partial-{pid}{suffix}`` behind. The
    process id is checked on this machine only: a partial whose writer is alive (here,
    or with the same id) stays. Snakemake never runs two jobs for one output at a time,
    so a partial of a dead process is garbage.

    Parameters
    ----------
    path : str or PathLike
        The final output path whose leftovers to remove.

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.partial-*"):
        match = _PARTIAL.match(candidate.name)
        if not match or match["stem"] != path.stem or match["suffix"] != path.suffix:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(OSError):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    """Remove a file, or a folder with what it holds (a directory output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``path`` only if the block succeeds.

    Parameters
    ----------
    path : str or PathLike
        Final output path. Its parent directory is created if missing.

    Yields
    ------
    Path
        Where to write: a file or a folder. Removed if the block raises. After the
        rename, temporary files of the same output left by killed jobs are removed
        (:func:`remove_stale_partials`).

    Examples
    --------
    >>> with atomic_output("out.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            _remove(tmp)
        raise
    with contextlib.suppress(OSError):
        remove_stale_partials(path)
