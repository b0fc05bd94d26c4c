"""``snakemake -n`` of a whole cohort against Snakemake's own floor, and the SLURM plugin's cost.

Each size gets a directory under ``benchmarks/out/dag/`` with a sheet of empty placeholder
slide files (a dry run only checks that they exist), a model directory (params.json and an
empty weights file) and the integration tests' config. The floor is a minimal two-rule
Snakefile (``rule all`` over one ``touch`` job per slide, the sheet read with ``csv``) on the
same sheet. Both dry runs are repeated ``--reps`` times; the best wall and CPU time (the
process's own user + system, which a busy machine inflates less) are kept, and their ratio
printed. Every run has ``SLURM_CONF=/dev/null``: the SLURM executor plugin, which Snakemake
imports in every call, is timed apart (``snakemake --version``: as this machine is, with a
slurm.conf naming a controller nobody answers, and with the empty config).

    python benchmarks/bench_dag.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

from common import OUT, ROOT, header, load, machine

FLOOR = """\
import csv

with open(config["slides"]) as fh:
    SLIDES = [row["slide"] for row in csv.DictReader(fh)]


rule all:
    input:
        expand("floor/{slide}.h5", slide=SLIDES),


rule extract:
    input:
        "slides/{slide}.tiff",
    output:
        "floor/{slide}.h5",
    shell:
        "touch {output}"
"""


def cohort(n: int):
    """Write the placeholder cohort of ``n`` slides (once); return its directory."""
    directory = OUT / "dag" / str(n)
    if (directory / "slides.csv").exists():
        shutil.rmtree(directory / "results", ignore_errors=True)
        shutil.rmtree(directory / ".snakemake", ignore_errors=True)
        return directory
    (directory / "slides").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (directory / "slides" / f"s{i:06d}.tiff").touch()
        rows.append(f"s{i:06d},slides/s{i:06d}.tiff,0.5,{'ab'[i % 2]}")
    (directory / "slides.csv").write_text("slide,path,mpp,subtype\n" + "\n".join(rows) + "\n")
    model = directory / "model"
    model.mkdir(exist_ok=True)
    (model / "weights.pt").touch()
    params = {"architecture": "demo_cnn", "tile_px": 64, "tile_um": 32, "class_names": ["a", "b"]}
    (model / "params.json").write_text(json.dumps(params))
    shutil.copy(ROOT / "tests" / "integration" / "config.yaml", directory / "config.yaml")
    (directory / "Floorfile").write_text(FLOOR)
    return directory


def timed(cmd: list[str], cwd, env=None) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and its children, stdout) of one command."""
    env = {**os.environ, "SLURM_CONF": "/dev/null", **(env or {})}
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{out[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, out


def dry_runs(directory, reps: int) -> dict:
    """Best of ``reps`` dry runs of histoatlas and of the floor, interleaved."""
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2", "-n"]
    ours = snakemake + ["-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml"]
    floor = snakemake + ["-s", "Floorfile", "--config", "slides=slides.csv"]
    best = {"ours": [1e9, 1e9], "floor": [1e9, 1e9]}
    jobs = {}
    for _ in range(reps):
        for name, cmd in (("ours", ours), ("floor", floor)):
            shutil.rmtree(directory / ".snakemake", ignore_errors=True)
            wall, cpu, out = timed(cmd, directory)
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            found = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
            jobs[name] = int(found.group(1)) if found else None
    return {k: {"wall_s": v[0], "cpu_s": v[1], "jobs": jobs[k]} for k, v in best.items()}


def plugin_cost() -> dict:
    """``snakemake --version`` (which imports every executor plugin) three ways."""
    cmd = [sys.executable, "-m", "snakemake", "--version"]
    down = OUT / "dag" / "down-slurm.conf"
    down.parent.mkdir(parents=True, exist_ok=True)
    # a controller on this host that is not running: what a left-behind slurm.conf looks like
    down.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=6999\n")
    cases = {"empty config (SLURM_CONF=/dev/null)": {"SLURM_CONF": "/dev/null"}}
    if shutil.which("scontrol"):
        cases["controller not answering"] = {"SLURM_CONF": str(down)}
    here = os.environ.get("SLURM_CONF")
    figures = {"as this machine is": timed(cmd, ROOT, {"SLURM_CONF": here} if here else {})[0]}
    if here is None:  # timed() sets /dev/null unless told otherwise: undo that here
        env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        figures["as this machine is"] = time.perf_counter() - t
    for name, env in cases.items():
        figures[name] = timed(cmd, ROOT, env)[0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    header("dag")
    figures = {"machine": machine()}
    for name, seconds in plugin_cost().items():
        print(f"plugin: snakemake --version {seconds:.1f} s, {name}  [load {load()}]", flush=True)
        figures[f"plugin {name}"] = seconds
    for n in (int(s) for s in args.sizes.split(",")):
        directory = cohort(n)
        r = dry_runs(directory, args.reps)
        ours, floor = r["ours"], r["floor"]
        print(
            f"dag_{n}: histoatlas {ours['wall_s']:.1f} s wall, {ours['cpu_s']:.1f} s CPU "
            f"({ours['jobs']} jobs); floor {floor['wall_s']:.1f} s wall, {floor['cpu_s']:.1f} s "
            f"CPU ({floor['jobs']} jobs); ratio {ours['wall_s'] / floor['wall_s']:.2f} wall, "
            f"{ours['cpu_s'] / floor['cpu_s']:.2f} CPU  [load {load()}]",
            flush=True,
        )
        figures[f"dag_{n}"] = r
    (OUT / "dag.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
