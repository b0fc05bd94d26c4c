"""Workflow runs shared by the integration tests (each run once per test session).

``tiny_run``: the whole workflow on the tiny cohort (three synthetic slides, a random demo
CNN, 64 px tiles), with every job's imports recorded (tests/cluster/jobprobe.py).
test_workflow and test_report read it; a test that changes files works on a copy
(``cohort.copy_run``), so the order of the tests never matters.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.cluster.jobprobe import probe_env, read_probes
from tests.integration.cohort import TINY_SLIDES, snakemake, write_cohort


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """The tiny cohort after one full run: ``dir``, ``proc`` (its output) and ``probes``."""
    base = tmp_path_factory.mktemp("tiny-run")
    directory = base / "tiny"
    write_cohort(directory, TINY_SLIDES)
    proc = snakemake(directory, env=probe_env(base / "probe"))
    return SimpleNamespace(dir=directory, proc=proc, probes=read_probes(base / "probe"))
