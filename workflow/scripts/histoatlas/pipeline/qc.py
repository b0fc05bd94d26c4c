"""Per-slide QC table of a cohort: which slides were extracted, how many tiles, and why not.

``results/{cohort}/qc/slides.csv`` has one row per slide of the sheet, in sheet order:

======================  ==========================================================
``slide``               the slide id
``status``              ``ok`` (its ``{slide}.h5`` exists), ``failed`` (its extraction
                        ran but the file does not exist) or ``not run``
``n_grid``              tiles of the full grid
``n_candidates``        grid tiles on tissue (Otsu mask)
``n_kept``              candidates that passed the grayspace/whitespace filters (rows of the h5)
``n_filtered``          candidates the filters dropped
``error``               for a failed slide: the exception its job raised, or a note that the
                        job was killed or ran out of memory
``seconds``,            the extraction job's wall time and peak resident memory (MB), from
``max_rss_mb``          its status file (empty for a job that recorded none)
``h5``, ``log``         the per-slide file and the extraction log
======================  ==========================================================

The table is built from files alone, never from a job's return value, so it can be written
after a run in which some slides failed (the workflow writes it from Snakemake's
``onsuccess``/``onerror`` handlers): the h5 attributes written by
:func:`histoatlas.analysis.extract.extract_slide`, and the job's status file
(:func:`histoatlas.pipeline.jobs.job_logging`). The paths are those of
:mod:`histoatlas.pipeline.paths`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histoatlas.atomic import atomic_output
from histoatlas.errors import HistoatlasError
from histoatlas.io.slide_h5 import read_slide_attrs
from histoatlas.pipeline.jobs import read_status
from histoatlas.pipeline.paths import EXTRACT_LOG, EXTRACT_STATUS, QC_TABLE, SLIDE_H5

COLUMNS = (
    "slide",
    "status",
    "n_grid",
    "n_candidates",
    "n_kept",
    "n_filtered",
    "error",
    "seconds",
    "max_rss_mb",
    "h5",
    "log",
)
COUNTS = ("n_grid", "n_candidates", "n_kept", "n_filtered")


def slide_qc(slides: Sequence[str], *, featureset: str) -> pd.DataFrame:
    """The QC table of ``slides``, from their per-slide files and extraction status files.

    Parameters
    ----------
    slides : sequence of str
        Slide ids, in the order of the table.
    featureset : str
        The featureset (``features.name``) whose files to look at.

    Returns
    -------
    DataFrame
        The columns of :data:`COLUMNS`; counts as nullable integers (missing where the
        slide has no file, or a file written before histoatlas stored them).
    """
    rows = []
    for slide in slides:
        names = {"featureset": featureset, "slide": slide}
        h5, log = SLIDE_H5.format(**names), EXTRACT_LOG.format(**names)
        row = {"slide": slide, "status": "not run", "error": "", "h5": h5, "log": log}
        status = read_status(EXTRACT_STATUS.format(**names)) or {}
        row.update({k: status.get(k) for k in ("seconds", "max_rss_mb")})
        if Path(h5).exists():
            row.update(_from_h5(h5))
        else:
            row.update(_from_status(status, log))
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in COUNTS:
        table[column] = pd.array(table[column], dtype="Int64")
    table["error"] = table["error"].fillna("").astype(str)
    return table


def write_qc_summary(
    sheet: pd.DataFrame | Sequence[str],
    *,
    featureset: str,
    cohort: str,
    out: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Write a cohort's per-slide QC table (``results/{cohort}/qc/slides.csv``).

    Parameters
    ----------
    sheet : DataFrame or sequence of str
        The slide sheet (its ``slide`` column is used) or the slide ids.
    featureset : str
        ``features.name`` of the run.
    cohort : str
        The cohort; names the default output path.
    out : str or PathLike, optional
        Output CSV; default ``results/{cohort}/qc/slides.csv``.

    Returns
    -------
    (DataFrame, Path)
        The table (see :func:`slide_qc`) and where it was written (atomically).

    Examples
    --------
    >>> table, path = write_qc_summary(sheet, featureset="demo", cohort="demo")  # doctest: +SKIP
    >>> table["status"].value_counts().to_dict()  # doctest: +SKIP
    {'ok': 4, 'failed': 1}
    """
    slides = list(sheet["slide"]) if isinstance(sheet, pd.DataFrame) else list(sheet)
    table = slide_qc(slides, featureset=featureset)
    path = Path(out if out is not None else QC_TABLE.format(cohort=cohort))
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False)
    return table, path


def summary_line(table: pd.DataFrame, path: str | os.PathLike, *, show: int = 5) -> str:
    """One line (plus one per failed slide, at most ``show``) to print after a run.

    Examples
    --------
    >>> print(summary_line(table, "results/demo/qc/slides.csv"))  # doctest: +SKIP
    slide qc: 4 ok, 1 failed, 0 not run; see results/demo/qc/slides.csv
      failed: demo-3: SlideError: slide 'demo-3': OpenSlide cannot open ...
    """
    counts = table["status"].value_counts()
    head = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "not run"))
    lines = [f"slide qc: {head}; see {path}"]
    failed = table[table["status"] == "failed"]
    for slide, error in zip(failed["slide"][:show], failed["error"][:show], strict=True):
        lines.append(f"  failed: {slide}: {error}")
    if len(failed) > show:
        lines.append(f"  ... and {len(failed) - show} more failed slides")
    return "\n".join(lines)


def _from_h5(h5: str) -> dict:
    try:
        attrs = read_slide_attrs(h5)
    except HistoatlasError as e:
        return {"status": "failed", "error": str(e)}
    row = {"status": "ok", **{k: attrs.get(k) for k in COUNTS}}
    if row["n_kept"] is None:  # a file written before the counts were stored
        row["n_kept"] = attrs["n_tiles"]
    return row


def _from_status(status: dict, log: str) -> dict:
    """Why a slide has no file: its job's status, or (none written) that it was killed."""
    if status:
        if status.get("status") == "ok":
            return {}  # a finished job whose file was removed since: not run (again)
        return {"status": "failed", "error": str(status.get("error", ""))}
    if not Path(log).exists():
        return {}
    return {"status": "failed", "error": _killed_note(log)}


def _killed_note(log: str) -> str:
    """A job that started (its log exists) but recorded no outcome: killed or out of memory."""
    try:
        lines = [ln.rstrip() for ln in Path(log).read_text(errors="replace").splitlines()]
    except OSError as e:
        return f"cannot read log {log}: {e}"
    last = next((ln for ln in reversed(lines) if ln.strip()), "")
    note = "no outcome recorded: the job was killed or ran out of memory"
    return f"{note}; its log's last line: {last[:300]}" if last else note
