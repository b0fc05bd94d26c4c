"""Slide sheet checks: every malformed sheet names its line and column."""

from __future__ import annotations

import string

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histoatlas.errors import SheetError
from histoatlas.io.sheet import (
    check_cohort_sheet,
    check_sheet,
    label_columns,
    plot_labels,
    read_sheet,
)


def write(tmp_path, text):
    path = tmp_path / "slides.csv"
    path.write_text(text)
    return path


def test_read_sheet_keeps_order_labels_and_mpp(tmp_path):
    path = write(tmp_path, "slide,path,mpp,subtype\nb,b.svs,0.25,x\na, a.svs ,,y\n")
    sheet = read_sheet(path)
    assert sheet["slide"].tolist() == ["b", "a"]
    assert sheet["path"].tolist() == ["b.svs", "a.svs"]
    assert sheet["mpp"].iloc[0] == 0.25 and pd.isna(sheet["mpp"].iloc[1])
    assert label_columns(sheet) == ["subtype"]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(SheetError, match=r"nope\.csv does not exist"):
        read_sheet(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("id,path\na,a.svs\n", r"missing column\(s\) \['slide'\]"),
        ("slide,file\na,a.svs\n", r"missing column\(s\) \['path'\]"),
        ("slide,path\n", "has no rows"),
        ("slide,path\na,a.svs\n,b.svs\n", r"line 3: column `slide` is empty"),
        ("slide,path\na,a.svs\na,b.svs\n", r"slide id 'a' is not unique \(lines 2, 3\)"),
        ("slide,path\n../evil,a.svs\n", r"line 2: slide id '\.\./evil' is not allowed"),
        ("slide,path\n..,a.svs\n", r"slide id '\.\.' is not allowed"),
        ("slide,path\na b,a.svs\n", r"slide id 'a b' is not allowed"),
        ("slide,path\na,\n", r"line 2: column `path` is empty for slide 'a'"),
        ("slide,path,mpp\na,a.svs,0\n", r"line 2: `mpp` of slide 'a' is '0'"),
        ("slide,path,mpp\na,a.svs,250\n", r"`mpp` of slide 'a' is '250'"),
        ("slide,path,mpp\na,a.svs,fast\n", r"`mpp` of slide 'a' is 'fast'"),
    ],
)
def test_malformed_sheets_name_the_culprit(tmp_path, text, pattern):
    with pytest.raises(SheetError, match=pattern):
        read_sheet(write(tmp_path, text))


def test_missing_label_column_lists_the_sheets_labels(tmp_path):
    sheet = read_sheet(write(tmp_path, "slide,path,subtype\na,a.svs,x\n"))
    assert plot_labels(sheet, ["subtype", "slide", "cluster"], source="s.csv") == ["subtype"]
    with pytest.raises(SheetError, match=r"\['grade'\] named in config.*\['subtype'\]"):
        plot_labels(sheet, ["grade"], source="s.csv")


def test_labels_default_to_the_sheet_s_own_columns(tmp_path):
    two_columns = read_sheet(write(tmp_path, "slide,path\na,a.svs\n"))
    assert plot_labels(two_columns, None, source="s.csv") == []  # built-ins only: fine
    sheet = read_sheet(write(tmp_path, "slide,path,mpp,grade,site name,cluster\na,a.svs,,2,x,1\n"))
    # mpp is no label, built-in names are drawn anyway, and a column that cannot name a
    # plot file is left out (not an error)
    assert plot_labels(sheet, None, source="s.csv") == ["grade"]
    with pytest.raises(SheetError, match=r"\['site name'\] \(plots.labels\) cannot name"):
        plot_labels(sheet, ["site name"], source="s.csv")


def test_every_problem_of_a_sheet_in_one_message(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"")
    sheet = read_sheet(write(tmp_path, "slide,path,subtype\na,a.svs,x\nb,b.svs,y\n"))
    labels = check_cohort_sheet(sheet, None, source="s.csv", check_files=False)
    assert labels == ["subtype"]
    with pytest.raises(SheetError) as info:
        check_cohort_sheet(sheet, ["grade"], source="s.csv", root=tmp_path)
    lines = str(info.value).splitlines()
    assert lines[0] == "2 problems:"
    assert "label column(s) ['grade']" in lines[1]
    assert "1 slide file(s) not found (line 3: slide 'b': b.svs)" in lines[2]
    # one problem alone is its own message
    with pytest.raises(SheetError, match=r"^s.csv: label column\(s\) \['grade'\]"):
        check_cohort_sheet(sheet, ["grade"], source="s.csv", check_files=False)


_ID_CHARS = string.ascii_letters + string.digits + "._-"


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.text(alphabet=_ID_CHARS + " /\\:*", min_size=0, max_size=8), max_size=6),
)
def test_property_accepted_ids_are_safe_file_names(ids):
    """Whatever the sheet holds, an accepted id is a unique, plain file name."""
    sheet = pd.DataFrame({"slide": ids, "path": ["x.svs"] * len(ids)})
    try:
        checked = check_sheet(sheet)
    except SheetError as e:
        assert "slide sheet" in str(e)
        bad = (
            not ids
            or len(set(ids)) < len(ids)
            or any(i.strip() == "" or set(i.strip()) - set(_ID_CHARS) for i in ids)
            or any(set(i.strip()) == {"."} for i in ids)
        )
        assert bad, f"valid ids {ids!r} were refused: {e}"
        return
    accepted = checked["slide"].tolist()
    assert len(set(accepted)) == len(accepted) == len(ids)
    for slide in accepted:
        assert slide not in (".", "..") and "/" not in slide and set(slide) <= set(_ID_CHARS)
