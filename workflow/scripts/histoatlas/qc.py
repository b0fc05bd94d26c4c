"""Per-slide QC table of a cohort: which slides were extracted, how many tiles, and why not.

``results/{cohort}/qc/slides.csv`` has one row per slide of the sheet, in sheet order:

======================  ==========================================================
``slide``               the slide id
``status``              ``ok`` (its ``{slide}.h5`` exists), ``failed`` (its extraction
                        log exists but the file does not) or ``not run``
``n_grid``              tiles of the full grid
``n_candidates``        grid tiles on tissue (Otsu mask)
``n_kept``              candidates that passed the grayspace/whitespace filters (rows of the h5)
``n_filtered``          candidates the filters dropped
``error``               for a failed slide: the last line of its log (the exception)
``h5``, ``log``         the per-slide file and the extraction log
======================  ==========================================================

The table is built from the files alone (the h5 attributes written by
:func:`histoatlas.extract.extract_slide`, the logs), never from a job's return value, so
it can be written after a run in which some slides failed: the workflow writes it from
Snakemake's ``onsuccess``/``onerror`` handlers, whatever the run's outcome.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histoatlas.atomic import atomic_output
from histoatlas.errors import HistoatlasError

H5_PATTERN = "results/features/{featureset}/{slide}.h5"
LOG_PATTERN = "logs/extract_activations/{featureset}/{slide}.log"
QC_PATH = "results/{cohort}/qc/slides.csv"
COLUMNS = (
    "slide",
    "status",
    "n_grid",
    "n_candidates",
    "n_kept",
    "n_filtered",
    "error",
    "h5",
    "log",
)
COUNTS = ("n_grid", "n_candidates", "n_kept", "n_filtered")
# The last line of a Python traceback: "package.module.SomeError: message".
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))"
    r"(?::\s*(?P<message>.*))?$"
)
# extract_slide's last line on success.
_SUCCESS_LINE = re.compile(r": wrote .* \(\d+ tiles\); qc ")


def slide_qc(
    slides: Sequence[str],
    *,
    featureset: str,
    h5_pattern: str = H5_PATTERN,
    log_pattern: str = LOG_PATTERN,
) -> pd.DataFrame:
    """The QC table of ``slides``, from their per-slide files and extraction logs.

    Parameters
    ----------
    slides : sequence of str
        Slide ids, in the order of the table.
    featureset : str
        The featureset (``features.name``) whose files to look at.
    h5_pattern, log_pattern : str
        Where a slide's file and log are, with ``{featureset}`` and ``{slide}`` fields;
        relative paths are relative to the working directory.

    Returns
    -------
    DataFrame
        The columns of :data:`COLUMNS`; counts as nullable integers (missing where the
        slide has no file, or a file written before histoatlas stored them).
    """
    rows = []
    for slide in slides:
        h5 = h5_pattern.format(featureset=featureset, slide=slide)
        log = log_pattern.format(featureset=featureset, slide=slide)
        row = {"slide": slide, "status": "not run", "error": "", "h5": h5, "log": log}
        if Path(h5).exists():
            row.update(_from_h5(h5))
        elif Path(log).exists():
            row.update(_from_log(log))
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
    h5_pattern: str = H5_PATTERN,
    log_pattern: str = LOG_PATTERN,
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
    h5_pattern, log_pattern : str
        As for :func:`slide_qc`.

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
    table = slide_qc(slides, featureset=featureset, h5_pattern=h5_pattern, log_pattern=log_pattern)
    path = Path(out if out is not None else QC_PATH.format(cohort=cohort))
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


def log_reason(path: str | os.PathLike) -> str:
    """Why a job failed, from its log: the exception line of the traceback at its end.

    Parameters
    ----------
    path : str or PathLike
        The job's log.

    Returns
    -------
    str
        ``"SlideError: slide 's2': ..."`` (module prefix dropped) when the log ends with
        a Python exception; otherwise a note that the job stopped without one (killed,
        out of memory) with the log's last line; ``""`` for an empty log.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"cannot read log {path}: {e}"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the job stopped before writing anything to its log (killed, or failed to start)"
    for line in reversed(lines[-50:]):
        if line.startswith(" "):
            continue  # inside a traceback: code lines
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match['name']}: {match['message']}" if match["message"] else match["name"]
    return (
        "no error in the log: the job was killed or ran out of memory; its last line: "
        + lines[-1][:300]
    )


def _from_h5(h5: str) -> dict:
    from histoatlas.slide_h5 import read_slide_attrs

    try:
        attrs = read_slide_attrs(h5)
    except HistoatlasError as e:
        return {"status": "failed", "error": str(e)}
    row = {"status": "ok", **{k: attrs.get(k) for k in COUNTS}}
    if row["n_kept"] is None:  # a file written before the counts were stored
        row["n_kept"] = attrs["n_tiles"]
    return row


def _from_log(log: str) -> dict:
    try:
        lines = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError as e:
        return {"status": "failed", "error": f"cannot read log {log}: {e}"}
    if lines and _SUCCESS_LINE.search(lines[-1]):
        return {}  # a finished job whose file was removed since: not run (again)
    return {"status": "failed", "error": log_reason(log)}
