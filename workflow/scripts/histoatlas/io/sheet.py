"""Read and check the slide sheet (one row per slide).

The sheet is a CSV with ``slide`` (unique id, used in file names), ``path`` (to the
WSI, relative to the working directory or absolute), an optional ``mpp`` (overrides the
file's microns per pixel) and any number of label columns. Errors name the row (as
the 1-based line of the CSV, header being line 1) and the column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from histoatlas.errors import SheetError

SLIDE_ID_PATTERN = r"^[A-Za-z0-9._-]+$"
_SLIDE_ID = re.compile(SLIDE_ID_PATTERN)
REQUIRED_COLUMNS = ("slide", "path")
MPP_RANGE = (0.0, 100.0)  # exclusive lower, inclusive upper bound, in microns per pixel


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read a slide sheet and check it.

    Parameters
    ----------
    path : str or Path
        CSV file.

    Returns
    -------
    DataFrame
        One row per slide in sheet order, ``slide`` and ``path`` as str, ``mpp`` as
        float (NaN where not given) when the column exists.

    Raises
    ------
    SheetError
        If the file is missing or unreadable, or any check of :func:`check_sheet` fails.

    Examples
    --------
    >>> sheet = read_sheet("slides.csv")  # doctest: +SKIP
    >>> list(sheet.columns)  # doctest: +SKIP
    ['slide', 'path', 'subtype']
    """
    path = Path(path)
    if not path.is_file():
        raise SheetError(f"slide sheet {path} does not exist; set `slides:` in config.yaml")
    try:
        sheet = pd.read_csv(path, dtype={"slide": str, "path": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SheetError(f"slide sheet {path} is not a readable CSV: {e}") from None
    return check_sheet(sheet, source=str(path))


def check_sheet(sheet: pd.DataFrame, *, source: str = "slide sheet") -> pd.DataFrame:
    """Check a slide sheet's columns, ids and MPP values.

    Slide ids become file names, so they must match ``[A-Za-z0-9._-]+`` and may not be
    ``.`` or ``..``: an id like ``../x`` can never write outside ``results/``.

    Parameters
    ----------
    sheet : DataFrame
        The sheet as read from CSV.
    source : str
        Name used in error messages (the file path).

    Returns
    -------
    DataFrame
        A cleaned copy (ids and paths stripped, ``mpp`` as float).

    Raises
    ------
    SheetError
        Naming the row and column of the first problem found.
    """
    sheet = sheet.copy()
    sheet.columns = [str(c).strip() for c in sheet.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise SheetError(
            f"{source}: missing column(s) {missing}; found {list(sheet.columns)}. "
            "The sheet needs `slide` (unique id) and `path` (to the slide file)."
        )
    if sheet.empty:
        raise SheetError(f"{source}: has no rows; add one row per slide")
    for column in REQUIRED_COLUMNS:
        values = sheet[column]
        sheet[column] = values.where(values.isna(), values.astype(str).str.strip())
    for row, (slide, slide_path) in enumerate(
        zip(sheet["slide"], sheet["path"], strict=True), start=2
    ):
        if pd.isna(slide) or slide == "":
            raise SheetError(
                f"{source}, line {row}: column `slide` is empty; give every slide an id"
            )
        if not _SLIDE_ID.match(slide) or set(slide) == {"."}:
            raise SheetError(
                f"{source}, line {row}: slide id {slide!r} is not allowed; ids become file "
                "names and may only use letters, digits, '.', '_' and '-' (not '.' or '..')"
            )
        if pd.isna(slide_path) or slide_path == "":
            raise SheetError(f"{source}, line {row}: column `path` is empty for slide {slide!r}")
    duplicated = sheet["slide"][sheet["slide"].duplicated(keep=False)]
    if not duplicated.empty:
        lines = [str(i + 2) for i in duplicated.index]
        raise SheetError(
            f"{source}: slide id {duplicated.iloc[0]!r} is not unique (lines {', '.join(lines)});"
            " every slide needs its own id"
        )
    if "mpp" in sheet.columns:
        sheet["mpp"] = _check_mpp(sheet, source)
    return sheet.reset_index(drop=True)


def _check_mpp(sheet: pd.DataFrame, source: str) -> pd.Series:
    mpp = pd.to_numeric(sheet["mpp"], errors="coerce")
    bad_type = mpp.isna() & sheet["mpp"].notna() & (sheet["mpp"].astype(str).str.strip() != "")
    low, high = MPP_RANGE
    out_of_range = mpp.notna() & ((mpp <= low) | (mpp > high))
    for i in sheet.index[bad_type | out_of_range]:
        raise SheetError(
            f"{source}, line {i + 2}: `mpp` of slide {sheet['slide'][i]!r} is "
            f"{str(sheet['mpp'][i]).strip()!r}; give microns per pixel as a number in "
            f"({low:g}, {high:g}] "
            "(e.g. 0.25 at 40x, 0.5 at 20x), or leave it empty to use the file's value"
        )
    return mpp.astype(float)


BUILTIN_LABELS = ("slide", "prediction", "uncertainty", "cluster")


def plot_labels(sheet: pd.DataFrame, labels: Iterable[str] | None, *, source: str) -> list[str]:
    """The sheet label columns to colour plots by: the given ones, or every one the sheet has.

    Parameters
    ----------
    sheet : DataFrame
        A checked sheet.
    labels : iterable of str, or None
        ``plots.labels``: None takes every label column of the sheet (none is fine) whose
        name can be a file name; a list names them, and each must exist (built-ins
        ``slide``, ``prediction``, ``uncertainty``, ``cluster`` need no column).
    source : str
        The sheet's path, for the message.

    Returns
    -------
    list of str
        Label columns in order, built-ins excluded.

    Raises
    ------
    SheetError
        If a named label is not a column of the sheet, or its name cannot be a file name.

    Examples
    --------
    >>> sheet = pd.DataFrame({"slide": ["a"], "path": ["a.svs"], "grade": [2]})
    >>> plot_labels(sheet, None, source="s.csv"), plot_labels(sheet, ["slide"], source="s.csv")
    (['grade'], [])
    """
    columns = label_columns(sheet)
    if labels is None:
        return [c for c in columns if _SLIDE_ID.match(c) and c not in BUILTIN_LABELS]
    labels = [label for label in labels if label not in BUILTIN_LABELS]
    missing = [label for label in labels if label not in sheet.columns]
    if missing:
        raise SheetError(
            f"{source}: label column(s) {missing} named in config (plots.labels) are not in "
            f"the sheet; its label columns are {columns} (leave plots.labels unset to plot by "
            "every one of them)"
        )
    unnamed = [label for label in labels if not _SLIDE_ID.match(label)]
    if unnamed:
        raise SheetError(
            f"{source}: label column(s) {unnamed} (plots.labels) cannot name a plot file; "
            "rename the column(s) to letters, digits, '.', '_' and '-'"
        )
    return labels


def check_cohort_sheet(
    sheet: pd.DataFrame,
    labels: Iterable[str] | None,
    *,
    source: str,
    check_files: bool = True,
    root: str | Path = ".",
) -> list[str]:
    """Check a sheet against the run: plot labels and slide files, every problem at once.

    Parameters
    ----------
    sheet : DataFrame
        A checked sheet (:func:`read_sheet`).
    labels : iterable of str, or None
        ``plots.labels`` (see :func:`plot_labels`).
    source : str
        The sheet's path, for messages.
    check_files : bool
        Also check that every slide file exists (:func:`check_slide_files`).
    root : str or Path
        Directory relative slide paths are resolved against.

    Returns
    -------
    list of str
        The label columns to plot by.

    Raises
    ------
    SheetError
        Listing every problem found (labels and missing files together), one per line.
    """
    problems, columns = [], []
    try:
        columns = plot_labels(sheet, labels, source=source)
    except SheetError as e:
        problems.append(str(e))
    if check_files:
        try:
            check_slide_files(sheet, source=source, root=root)
        except SheetError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise SheetError(problems[0])
    if problems:
        raise SheetError(f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems))
    return columns


def check_slide_files(
    sheet: pd.DataFrame, *, source: str, root: str | Path = ".", show: int = 10
) -> None:
    """Raise SheetError, listing every one, if slide files of the sheet do not exist.

    Called before any job runs, so a typo in one path stops the run at once (with the
    sheet's line) instead of after hours of extraction, and lists all such rows together.

    Parameters
    ----------
    sheet : DataFrame
        A checked sheet (:func:`check_sheet`), rows in file order.
    source : str
        Name used in the message (the sheet's path).
    root : str or Path
        Directory relative paths are resolved against (the working directory).
    show : int
        At most this many missing files are named; the rest are counted.

    Raises
    ------
    SheetError
        Naming the line, slide id and path of each missing file.
    """
    root = Path(root)
    missing = [
        f"line {i + 2}: slide {slide!r}: {path}"
        for i, (slide, path) in enumerate(zip(sheet["slide"], sheet["path"], strict=True))
        if not (root / str(path)).exists()
    ]
    if missing:
        more = f"; and {len(missing) - show} more" if len(missing) > show else ""
        raise SheetError(
            f"{source}: {len(missing)} slide file(s) not found ({'; '.join(missing[:show])}"
            f"{more}); fix `path` (absolute, or relative to the directory Snakemake runs in: "
            f"{root.resolve()}) or remove the row(s)"
        )


def label_columns(sheet: pd.DataFrame) -> list[str]:
    """Return the sheet's label columns (everything but ``slide``, ``path`` and ``mpp``)."""
    return [c for c in sheet.columns if c not in ("slide", "path", "mpp")]
