"""Failures through the workflow: bad slides, killed jobs, bad ids, empty cohorts, bad config.

Each test builds the tiny cohort (``cohort.py``) in its own directory and runs Snakemake
there with the workflow's default profile (``--keep-going``, ``--rerun-incomplete``), asking
only for the targets it needs.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest

from histoatlas.io.tiff import write_pyramid_tiff
from tests.integration.cohort import (
    SNAKEFILE,
    job_counts,
    snakemake,
    tissue_slide,
    write_cohort,
)

pytestmark = pytest.mark.slow

QC = "results/tiny/qc/slides.csv"


def read_qc(directory: Path) -> pd.DataFrame:
    return pd.read_csv(directory / QC, keep_default_na=False).set_index("slide")


def extract_log(directory: Path, slide: str) -> str:
    return (directory / "logs/extract_activations/tiny" / f"{slide}.log").read_text()


def truncate(path: Path, fraction: float = 0.8) -> None:
    """Cut a slide file short, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def zero_level0_tiles(path: Path) -> None:
    """Overwrite the JPEG data of every level-0 TIFF tile with zeros (the file still opens)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\0" * count)


def all_files(directory: Path) -> set[Path]:
    return {p.relative_to(directory) for p in directory.rglob("*") if p.is_file()}


def test_one_bad_slide_loses_nothing_else(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1", "s2", "s3"])
    truncate(directory / "slides/s2.tiff")  # OpenSlide refuses to open it
    zero_level0_tiles(directory / "slides/s3.tiff")  # opens, then pixels fail to decode

    proc = snakemake(directory, "results/tiny/dataset/tiles.parquet", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0

    # the good slide finished (--keep-going from the default profile) and is complete
    with h5py.File(directory / "results/features/tiny/s1.h5") as f:
        n = len(f["coords"])
        assert n > 20 and f["features"].shape == (n, 64)
        assert f.attrs["n_kept"] == n and f.attrs["n_candidates"] >= n
    assert not (directory / "results/features/tiny/s2.h5").exists()
    assert not (directory / "results/features/tiny/s3.h5").exists()
    assert not (directory / "results/tiny/dataset/tiles.parquet").exists()  # needs every slide

    # each failed slide's log ends with the reason, naming the slide and the file
    s2_log = extract_log(directory, "s2").strip().splitlines()[-1]
    assert s2_log.startswith("histoatlas.errors.SlideError: slide 's2': OpenSlide cannot open")
    assert "slides/s2.tiff" in s2_log and "complete whole-slide image" in s2_log
    s3_log = extract_log(directory, "s3").strip().splitlines()[-1]
    assert s3_log.startswith("histoatlas.errors.TileReadError: slide 's3': cannot read level-0")
    assert "slides/s3.tiff" in s3_log and "corrupt or truncated" in s3_log

    # the qc table is written although the run failed, and says who failed and why
    qc = read_qc(directory)
    assert qc.index.tolist() == ["s1", "s2", "s3"]
    assert qc["status"].tolist() == ["ok", "failed", "failed"]
    assert int(qc.loc["s1", "n_kept"]) == n and qc.loc["s1", "error"] == ""
    assert int(qc.loc["s1", "n_grid"]) == 16 * 16
    assert qc.loc["s2", "error"].startswith("SlideError: slide 's2': OpenSlide cannot open")
    assert qc.loc["s3", "error"].startswith("TileReadError: slide 's3'")
    assert qc.loc["s2", "n_kept"] == "" and qc.loc["s2", "log"].endswith("tiny/s2.log")
    assert "slide qc: 1 ok, 2 failed, 0 not run" in out

    # fixing the files re-extracts only them: s1's activations are kept
    for i, slide in ((1, "s2"), (2, "s3")):
        (directory / "slides" / f"{slide}.tiff").unlink()
        write_pyramid_tiff(directory / "slides" / f"{slide}.tiff", tissue_slide(i), mpp=0.5)
    dry = snakemake(directory, "-n", "results/tiny/dataset/tiles.parquet")
    assert job_counts(dry.stdout + dry.stderr) == {"extract_activations": 2, "merge_dataset": 1}
    assert "results/features/tiny/s1.h5" not in dry.stdout.split("Job stats:")[0]


def _snakemake_popen(directory: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(directory)]
    cmd += ["--configfile", "config.yaml", "--cores", "2", *args]
    return subprocess.Popen(
        cmd, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _extract_job(proc: subprocess.Popen, log: Path, timeout: float = 120) -> psutil.Process:
    """Snakemake's child process running the extract script, once its tile loop started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake ended before the extraction could be killed"
        jobs = [  # the python process itself, not a shell wrapping it
            child
            for child in psutil.Process(proc.pid).children(recursive=True)
            if _is_extract_script(_cmdline(child))
        ]
        # the Features line is written just before the tile loop starts
        if jobs and log.exists() and "features per tile" in log.read_text():
            return jobs[0]
        time.sleep(0.02)
    raise AssertionError(f"no extract_activations job with a started tile loop in {timeout} s")


def _is_extract_script(cmdline: list[str]) -> bool:
    return (
        len(cmdline) > 1
        and Path(cmdline[0]).name.startswith("python")
        and any(part.endswith("extract_activations.py") for part in cmdline[1:])
    )


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_sigkill_of_extraction_job_leaves_nothing_finished_and_rerun_completes(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, [])
    # one slide of 4096 tiles (8 um tiles at 0.5 um/px on 1024 x 1024 px of tissue)
    write_pyramid_tiff(directory / "slides/big.tiff", tissue_slide(0, size=2048), mpp=0.5)
    (directory / "slides.csv").write_text("slide,path,subtype\nbig,slides/big.tiff,a\n")
    # one tile per forward pass: extraction takes seconds, so the kill lands mid-way
    config = ["--config", "tiles={px: 64, um: 8}", "features={batch_size: 1}"]
    h5 = directory / "results/features/tiny/big.h5"
    log = directory / "logs/extract_activations/tiny/big.log"

    proc = _snakemake_popen(directory, str(h5.relative_to(directory)), *config)
    try:
        job = _extract_job(proc, log)
        job.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    assert "wrote" not in log.read_text()  # killed in the tile loop, not after
    # nothing that looks finished: no h5, at most a temporary file
    left = [p.name for p in h5.parent.glob("*")]
    assert [name for name in left if not name.startswith(".big.partial-")] == []
    qc = read_qc(directory)
    assert qc.loc["big", "status"] == "failed"
    assert qc.loc["big", "error"].startswith("no outcome recorded: the job was killed")

    # a rerun extracts the slide again and completes it
    rerun = snakemake(directory, str(h5.relative_to(directory)), *config[:2])
    assert "extract_activations" in job_counts(rerun.stdout + rerun.stderr)
    with h5py.File(h5) as f:
        n = len(f["coords"])
        assert n == f.attrs["n_kept"] and n > 3000
        assert f["features"].shape == (n, 64) and np.isfinite(f["features"][()]).all()
    assert sorted(p.name for p in h5.parent.iterdir()) == ["big.h5"]
    assert read_qc(directory).loc["big", "status"] == "ok"


@pytest.mark.parametrize("dry_run", [True, False])
def test_path_escaping_slide_id_is_refused_before_anything_is_written(tmp_path, dry_run):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1"])
    (directory / "slides.csv").write_text(
        "slide,path,subtype\ns1,slides/s1.tiff,a\n../evil,slides/s1.tiff,b\n"
    )
    before = all_files(tmp_path)
    proc = snakemake(directory, *(["-n"] if dry_run else []), check=False)
    assert proc.returncode != 0
    assert (
        "SheetError: slides.csv, line 3: slide id '../evil' is not allowed; ids become file "
        "names" in proc.stdout + proc.stderr
    )
    created = all_files(tmp_path) - before
    assert not [p for p in created if p.parts[:2] != ("cohort", ".snakemake")], created
    assert not (directory / "results").exists() and not (directory / "logs").exists()
    assert not list(tmp_path.rglob("*evil*"))


def test_cohort_without_tissue_says_so(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["e1", "e2"])
    for slide in ("e1", "e2"):  # blank glass
        blank = np.full((512, 512, 3), 245, np.uint8)
        write_pyramid_tiff(directory / "slides" / f"{slide}.tiff", blank, mpp=0.5)

    proc = snakemake(directory, check=False)  # everything: rule all
    assert proc.returncode != 0
    for slide in ("e1", "e2"):  # N = 0 is not an error
        with h5py.File(directory / "results/features/tiny" / f"{slide}.h5") as f:
            assert f["features"].shape == (0, 64) and f.attrs["n_candidates"] == 0
    tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    assert len(tiles) == 0  # the merge works
    umap_log = (directory / "logs/fit_umap/tiny.log").read_text().strip().splitlines()[-1]
    assert umap_log.startswith("histoatlas.errors.EmptyDatasetError: UMAP: the cohort has no")
    assert "2 slides, every one without tissue" in umap_log
    assert "relax the tissue filters" in umap_log
    # nothing downstream of the map ran
    for folder in ("umap", "plots", "mosaic"):
        assert not (directory / "results/tiny" / folder).exists()
    qc = read_qc(directory)
    assert qc["status"].tolist() == ["ok", "ok"]
    assert qc["n_kept"].astype(int).tolist() == [0, 0]
    assert qc["n_grid"].astype(int).tolist() == [8 * 8, 8 * 8]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--config", "tiles={px: many}"],
            "ConfigError: config key `tiles.px`: 'many' is not of type 'integer', 'null'",
        ),
        (
            ["--config", "umap={n_neighbours: 15}"],
            "ConfigError: config key `umap`: Additional properties are not allowed "
            "('n_neighbours' was unexpected) (known keys of `umap`: n_neighbors,",
        ),
        (
            ["--config", "plots={labels: [grade]}"],
            "SheetError: slides.csv: label column(s) ['grade'] named in config (plots.labels) "
            "are not in the sheet; its label columns are ['subtype']",
        ),
        (
            ["--config", "slides=ghost.csv"],
            "SheetError: ghost.csv: 1 slide file(s) not found (line 3: slide 'ghost': "
            "slides/ghost.svs)",
        ),
        (
            ["--config", "atlas={labels: [grade]}"],
            "atlas.labels: ['grade'] are neither columns of slides.csv (['subtype']) nor "
            "built-ins (cluster, prediction, slide, uncertainty); fix atlas.labels in the config",
        ),
        (["--config", "model=nowhere"], "ModelError: model path nowhere does not exist"),
        (
            ["--config", "slides=ghost.csv", "plots={labels: [grade]}"],
            "SheetError: 2 problems:\n  ghost.csv: label column(s) ['grade'] named in config "
            "(plots.labels) are not in the sheet; its label columns are ['subtype'] (leave "
            "plots.labels unset to plot by every one of them)\n  ghost.csv: 1 slide file(s) "
            "not found (line 3: slide 'ghost': slides/ghost.svs); fix `path`",
        ),
        (
            ["--config", "tiles={px: 128}"],
            "ModelError: model model was trained on 64 px tiles (tile_px in model/params.json),"
            " but the config asks for tiles.px = 128",
        ),
    ],
    ids=[
        "type",
        "unknown-key",
        "label-column",
        "slide-file",
        "atlas-label",
        "model-path",
        "several",
        "tile-px",
    ],
)
def test_bad_config_stops_before_any_job_in_a_few_lines(tmp_path, args, message):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1"])
    (directory / "ghost.csv").write_text(
        "slide,path,subtype\ns1,slides/s1.tiff,a\nghost,slides/ghost.svs,b\n"
    )
    proc = snakemake(directory, "-n", *args, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out
    ours = [
        line
        for line in out.splitlines()
        if not line.startswith(("Using workflow specific profile", "Config file"))
    ]
    # the error (one line per problem), not a schema dump or a long traceback
    assert len(ours) - message.count("\n") <= 5, out
    assert "Building DAG" not in out


def test_override_of_tile_px_check_is_honoured(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1"])
    proc = snakemake(directory, "-n", "--config", "tiles={px: 128, allow_model_mismatch: true}")
    assert job_counts(proc.stdout + proc.stderr)["extract_activations"] == 1


def test_several_problems_with_the_model_are_listed_together(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1"])
    proc = snakemake(
        directory, "-n", "--config", "plots={labels: [grade]}", "model=nowhere", check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "SheetError: slides.csv: label column(s) ['grade']" in out
    assert "ModelError: model path nowhere does not exist" in out


def test_two_column_sheet_plots_the_built_in_labels(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1", "s2"])
    (directory / "slides.csv").write_text("slide,path\ns1,slides/s1.tiff\ns2,slides/s2.tiff\n")
    refused = snakemake(directory, "-n", check=False)  # the tiny config names `subtype`
    assert refused.returncode != 0
    assert "['subtype'] named in config" in refused.stdout + refused.stderr
    proc = snakemake(directory, "-n", "--config", "plots={labels: null}")
    out = proc.stdout + proc.stderr
    assert job_counts(out)["plot_umap"] == 4
    for label in ("slide", "cluster", "prediction", "uncertainty"):
        assert f"results/tiny/plots/umap_{label}.png" in out


def test_another_model_gets_a_featureset_of_its_own(tmp_path):
    directory = tmp_path / "cohort"
    write_cohort(directory, ["s1"])
    shutil.copytree(directory / "model", directory / "resnet_tcga")
    proc = snakemake(directory, "-n", "--config", "model=resnet_tcga", "features={name: null}")
    out = proc.stdout + proc.stderr
    # model + tiling, and a hash of the tiny config's non-default layers [block3, postconv]
    found = set(re.findall(r"results/features/([\w.-]+)/s1\.h5", out))
    assert len(found) == 1 and re.fullmatch(r"resnet_tcga-64px-32um-[0-9a-f]{6}", found.pop())
