"""``snakemake -n`` (building the DAG of a whole cohort) for sheets of 1,000 and 10,000 slides.

Each size gets a directory under ``benchmarks/out/dag/`` with a sheet of empty placeholder
slide files (a dry run only checks that they exist), a model directory (params.json and
an empty weights file) and the integration tests' config; the dry run is timed twice:
with no outputs (every job planned) and again with every per-slide h5 present (only the
cohort's jobs left), as a rerun after extraction sees it.

    python benchmarks/bench_dag.py
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time

from common import OUT, ROOT, header, load, machine


def cohort(n: int):
    """Write the placeholder cohort of ``n`` slides; return its directory."""
    directory = OUT / "dag" / str(n)
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "slides").mkdir(parents=True)
    rows = []
    for i in range(n):
        (directory / "slides" / f"s{i:05d}.tiff").touch()
        rows.append(f"s{i:05d},slides/s{i:05d}.tiff,0.5,{'ab'[i % 2]}")
    (directory / "slides.csv").write_text("slide,path,mpp,subtype\n" + "\n".join(rows) + "\n")
    model = directory / "model"
    model.mkdir()
    (model / "weights.pt").touch()
    params = {"architecture": "demo_cnn", "tile_px": 64, "tile_um": 32, "class_names": ["a", "b"]}
    (model / "params.json").write_text(json.dumps(params))
    shutil.copy(ROOT / "tests" / "integration" / "config.yaml", directory / "config.yaml")
    return directory


def dry_run(directory) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(directory), "--configfile", "config.yaml", "--cores", "2", "-n"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=directory)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"dry run failed in {directory}:\n{proc.stdout[-3000:]}{proc.stderr}")
    jobs = re.search(r"^total\s+(\d+)", proc.stdout, re.MULTILINE)
    return seconds, jobs.group(1) if jobs else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    header("dag")
    figures = {"machine": machine()}
    for n in (int(s) for s in args.sizes.split(",")):
        directory = cohort(n)
        seconds, jobs = dry_run(directory)
        print(f"dag_{n}: snakemake -n {seconds:.1f} s, {jobs} jobs  [load {load()}]", flush=True)
        figures[f"dag_{n}"] = {"seconds": seconds, "jobs": jobs}
        h5 = directory / "results" / "features" / "tiny"
        h5.mkdir(parents=True)
        for i in range(n):
            (h5 / f"s{i:05d}.h5").touch()
        seconds, jobs = dry_run(directory)
        print(
            f"dag_{n}_extracted: snakemake -n {seconds:.1f} s with every slide's h5 present, "
            f"{jobs} jobs  [load {load()}]",
            flush=True,
        )
        figures[f"dag_{n}_extracted"] = {"seconds": seconds, "jobs": jobs}
    (OUT / "dag.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
