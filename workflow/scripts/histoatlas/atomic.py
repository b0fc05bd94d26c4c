"""Write outputs under a temporary name and rename them when complete.

A job killed at any moment must never leave a file that Snakemake or a reader would
take as finished: the final name only appears through an atomic ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def partial_path(path: str | os.PathLike) -> Path:
    """Return the temporary name used while ``path`` is being written.

    The name keeps the directory (so the final rename is atomic) and the suffix
    (so libraries that dispatch on it, such as pandas or PIL, still work).
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


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
        Where to write. Removed if the block raises.

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
            tmp.unlink()
        raise
