"""Slide sheet checks: every malformed sheet names its line and column."""

from __future__ import annotations

import string

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histoatlas.errors import SheetError
from histoatlas.sheet import check_label_columns, check_sheet, label_columns, read_sheet


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
    check_label_columns(sheet, ["subtype", "slide", "cluster"], source="s.csv")
    with pytest.raises(SheetError, match=r"\['grade'\] named in config.*\['subtype'\]"):
        check_label_columns(sheet, ["grade"], source="s.csv")


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
