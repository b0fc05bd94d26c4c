"""The whole workflow on a tiny cohort, run by Snakemake from a clean directory."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from tests.integration.cohort import add_slide, job_counts, snakemake, write_cohort

SLIDES = ["s1", "s2", "s3"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    write_cohort(directory, SLIDES)
    proc = snakemake(directory)
    return directory, proc


def test_per_slide_files_and_dataset_table(tiny_run):
    directory, _ = tiny_run
    for slide in SLIDES:
        with h5py.File(directory / "results/features/tiny" / f"{slide}.h5") as f:
            n = len(f["coords"])
            assert n > 20
            assert f["features"].shape == (n, 32 + 32)  # block3 (4*8 ch) + postconv (32)
            assert f["predictions"].shape == (n, 2)
            assert f.attrs["slide"] == slide
        assert (directory / "logs/extract_activations/tiny" / f"{slide}.log").stat().st_size > 0
    tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    assert tiles["slide"].unique().tolist() == SLIDES
    assert set(tiles["subtype"]) == {"a", "b"}
    with h5py.File(directory / "results/tiny/dataset/features.h5") as f:
        assert f["features"].shape == (len(tiles), 64)
        assert not np.isnan(f["features"][()]).any()
    leftovers = [p for p in directory.rglob("*") if ".partial" in p.name]
    assert leftovers == []


def test_rerun_has_nothing_to_do(tiny_run):
    directory, _ = tiny_run
    proc = snakemake(directory, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert job_counts(proc.stdout + proc.stderr) == {}


def test_adding_a_slide_extracts_only_that_slide(tiny_run):
    directory, _ = tiny_run
    add_slide(directory, "s4", seed=7)
    proc = snakemake(directory, "-n")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["extract_activations"] == 1
    assert counts["merge_dataset"] == 1
    assert "s4.h5" in proc.stdout + proc.stderr
