"""Cohort-level jobs on synthetic cohorts of real-shaped per-slide files: memory and time.

A cohort is ``--slide-tiles`` tiles per slide (default 10,000, as real slides at 20x), each
slide an h5 file as extraction writes it (768-d float32 activations from 20 clusters,
coords, grid, 3-class predictions, every attribute), written batch by batch. Then:

``--memory``: every cohort-level job in its own process (peak RSS from ``wait4``, wall
time): merge_dataset, fit_umap (a sample of ``--fit`` tiles), project_umap (the first
shard of ``--shard-slides`` slides), gather_umap, plot_umap (slide; cluster), the mosaic's
cell selection, select_saliency_tiles. Printed as a table per size and as the ratio of each
job's peak to its peak at the smallest size (flat: ~1.0).

``--time``: the UMAP stage on k cores (``--cores 1,2``): fit_umap, then the projection
shards k at a time (one process each, pinned with the fit to k cores), then gather_umap,
against the one-job path (``SlideMap.from_features`` on the dataset in memory) on the same
cohort in the same run.

    python benchmarks/bench_cohort.py --sizes 100000,1000000 --memory
    python benchmarks/bench_cohort.py --sizes 1000000 --time --cores 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import OUT, header, load, machine
from synthetic_cohort import made_up_shard, write_cohort

JOBS = ["merge", "fit", "project", "gather", "plot_slide", "plot_cluster", "mosaic", "select"]
UMAP = {"n_neighbors": 50, "min_dist": 0.1, "metric": "cosine", "random_state": 0}


# -- one job, in this process -------------------------------------------------------------


def run_job(job: str, folder: Path, args) -> dict:
    """Run one cohort job on the cohort in ``folder``; return what it reports."""
    import pandas as pd

    from histoatlas.io.sheet import read_sheet

    dataset, umap = folder / "dataset", folder / "umap"
    slides = read_sheet(folder / "slides.csv")["slide"].tolist()
    h5 = [str(folder / "features" / f"{s}.h5") for s in slides]
    shards = [slides[k : k + args.shard_slides] for k in range(0, len(slides), args.shard_slides)]
    if job == "merge":
        from histoatlas.analysis.merge import merge_dataset

        merge_dataset(
            h5,
            read_sheet(folder / "slides.csv"),
            tiles_path=dataset / "tiles.parquet",
            slides_path=dataset / "slides.parquet",
            features_path=dataset / "features.h5",
        )
    elif job == "fit":
        from histoatlas.analysis.umap_cohort import fit_cohort

        fitted = fit_cohort(
            dataset / "features.h5",
            model_path=umap / "fit.joblib",
            sample_path=umap / "sample.parquet",
            max_tiles_per_slide=max(1, args.fit // len(slides)),
            max_fit_tiles=args.fit,
            pca_dim=args.pca,
            **UMAP,
        )
        return {"n_fit": fitted.params["n_fit"]}
    elif job.startswith("project"):
        k = int(job.removeprefix("project") or 0)
        return {"tiles": _project(h5, slides, shards, k, umap)}
    elif job == "gather":
        from histoatlas.analysis.umap_cohort import gather_layout

        files = [umap / f"shard{k}.parquet" for k in range(len(shards))]
        for k in range(len(shards)):  # the memory run projects the first shard only
            if not files[k].exists():
                _project(h5, slides, shards, k, umap)
        gather_layout(
            files,
            model_path=umap / "fit.joblib",
            umap_path=umap / "umap.joblib",
            coords_path=umap / "coords.parquet",
        )
    elif job.startswith("plot_"):
        from histoatlas.analysis.map_stream import plot_label

        label = job.removeprefix("plot_")
        plot_label(
            umap / "coords.parquet",
            dataset / "tiles.parquet",
            folder / f"umap_{label}.png",
            label,
            features_path=dataset / "features.h5",
            n_clusters=8,
        )
    elif job == "mosaic":
        from histoatlas.analysis.mosaic_stream import mosaic_from_coords

        mosaic = mosaic_from_coords(
            umap / "coords.parquet", pd.read_parquet(dataset / "slides.parquet"), num_tiles_x=50
        )
        return {"cells": int(len(mosaic.manifest()))}
    elif job == "select":
        from histoatlas.saliency.select import select_tiles_to_csv

        select_tiles_to_csv(
            dataset / "tiles.parquet",
            dataset / "slides.parquet",
            {"top_k_per_class": 2},
            folder / "saliency.csv",
        )
    elif job == "one_job":
        return _one_job(dataset, args)
    return {}


def _project(h5, slides, shards, k: int, umap: Path) -> int:
    from histoatlas.analysis.umap_cohort import project_shard

    members = shards[k]
    first = slides.index(members[0])
    return project_shard(
        h5[first : first + len(members)],
        members,
        model_path=umap / "fit.joblib",
        sample_path=umap / "sample.parquet",
        out_path=umap / f"shard{k}.parquet",
    )


def _one_job(dataset: Path, args) -> dict:
    """Today's one-job path: the dataset in memory, fit and transform in one process."""
    from histoatlas.analysis.dataset import DatasetFeatures
    from histoatlas.analysis.slidemap import SlideMap

    data = DatasetFeatures.from_dataset(dataset)
    per_slide = max(1, args.fit // len(data.slides))
    SlideMap.from_features(
        data, max_tiles_per_slide=per_slide, max_fit_tiles=args.fit, pca_dim=args.pca, **UMAP
    )
    return {}


# -- measuring ----------------------------------------------------------------------------


def measure(job: str, folder: Path, args, cores: list[int] | None = None) -> dict:
    """Run one job in a child process (pinned to ``cores``); its peak RSS and wall time."""
    cmd = [sys.executable, __file__, "--job", job, "--dir", str(folder)]
    cmd += ["--fit", str(args.fit), "--shard-slides", str(args.shard_slides)]
    cmd += ["--pca", str(args.pca or 0)]
    env = dict(os.environ)
    if cores is not None:  # one thread per core the job may use
        env.update(
            {
                v: str(len(cores))
                for v in (
                    "OMP_NUM_THREADS",
                    "NUMBA_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS",
                )
            }
        )
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"job {job} failed on {folder}")
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {
        "job": job,
        "peak_mib": usage.ru_maxrss / 1024,
        "wall_s": time.perf_counter() - t,
        **report,
    }


def memory_table(sizes: list[int], args) -> dict:
    figures = {}
    for n in sizes:
        folder = write_cohort(n, args.slide_tiles)
        n_shards = -(-(n // args.slide_tiles) // args.shard_slides)
        for job in JOBS:
            if n > args.cluster_max and job == "plot_cluster":
                continue
            if job not in args.jobs.split(","):
                continue
            r = measure(job, folder, args)
            if job == "project" and args.shards == "all":  # each in its own process
                others = [measure(f"project{k}", folder, args) for k in range(1, n_shards)]
                r["peak_mib"] = max([r["peak_mib"]] + [o["peak_mib"] for o in others])
                r["shards"] = n_shards
            elif job == "project":  # shards are alike: the others' layouts made up
                for k in range(1, n_shards):
                    made_up_shard(folder, k, args)
                r["shards"] = f"1 of {n_shards} projected"
            figures.setdefault(job, {})[n] = r
            skip = ("job", "peak_mib", "wall_s")
            extra = "".join(f", {k} {v}" for k, v in r.items() if k not in skip)
            print(
                f"memory_{job}_{n}: peak {r['peak_mib']:.0f} MiB, {r['wall_s']:.1f} s"
                f"{extra}  [load {load()}]",
                flush=True,
            )
    print("\n# peak memory, as a multiple of the smallest size's (flat: ~1.0)")
    print("job".ljust(14) + "".join(f"{n:>12,}" for n in sizes))
    for job, by_size in figures.items():
        base = by_size[min(by_size)]["peak_mib"]
        cells = [
            f"{by_size[n]['peak_mib'] / base:>12.2f}" if n in by_size else " " * 12 for n in sizes
        ]
        print(job.ljust(14) + "".join(cells))
    return figures


def time_stage(n: int, args) -> dict:
    """The UMAP stage on k cores, and the one-job path, on one cohort."""
    folder = write_cohort(n, args.slide_tiles)
    if not (folder / "dataset" / "features.h5").exists():
        measure("merge", folder, args)
    n_shards = -(-(n // args.slide_tiles) // args.shard_slides)
    figures = {}
    for k in (int(c) for c in args.cores.split(",")):
        cores = sorted(os.sched_getaffinity(0))[:k]
        t = time.perf_counter()
        fit = measure("fit", folder, args, cores)
        t_fit = time.perf_counter() - t
        jobs = [(f"project{s}", [cores[s % k]]) for s in range(n_shards)]
        with ThreadPoolExecutor(k) as pool:  # k shard processes at a time, one core each
            list(pool.map(lambda job: measure(job[0], folder, args, job[1]), jobs))
        t_project = time.perf_counter() - t - t_fit
        measure("gather", folder, args, cores)
        total = time.perf_counter() - t
        figures[k] = {"fit_s": t_fit, "project_s": t_project, "total_s": total}
        figures[k]["n_fit"] = fit.get("n_fit")
        print(
            f"umap_stage_{n}_{k}cores: fit {t_fit:.1f} s ({fit.get('n_fit')} tiles), "
            f"{n_shards} shards {t_project:.1f} s, gather {total - t_fit - t_project:.1f} s, "
            f"total {total:.1f} s  [load {load()}]",
            flush=True,
        )
    if args.one_job:
        r = measure("one_job", folder, args, sorted(os.sched_getaffinity(0))[:2])
        figures["one_job"] = r
        print(
            f"umap_one_job_{n}: {r['wall_s']:.1f} s, peak {r['peak_mib']:.0f} MiB  [load {load()}]",
            flush=True,
        )
    ks = sorted(k for k in figures if isinstance(k, int))
    if len(ks) > 1:
        a, b = figures[ks[0]], figures[ks[-1]]
        print(
            f"# projection {ks[0]} -> {ks[-1]} cores: x{a['project_s'] / b['project_s']:.2f} "
            f"(ideal x{ks[-1] / ks[0]:.0f}); whole stage x{a['total_s'] / b['total_s']:.2f}"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--slide-tiles", type=int, default=10_000)
    parser.add_argument("--fit", type=int, default=20_000, help="tiles in the fitting sample")
    parser.add_argument("--shard-slides", type=int, default=50)
    parser.add_argument("--pca", type=int, default=50, help="0: no PCA")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--one-job", action="store_true", help="also time the one-job path")
    parser.add_argument(
        "--cluster-max", type=int, default=10**7, help="largest size for the k-means plot"
    )
    parser.add_argument("--jobs", default=",".join(JOBS), help="the jobs --memory measures")
    parser.add_argument(
        "--shards",
        choices=["all", "first"],
        default="all",
        help="project every shard, or the first (its memory is every shard's) and make up "
        "the others' layouts for the jobs after it",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pca = args.pca or None
    if args.job:
        print(json.dumps(run_job(args.job, Path(args.dir), args)), flush=True)
        return
    header("cohort")
    figures = {"machine": machine()}
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.memory:
        figures["memory"] = memory_table(sizes, args)
    if args.time:
        figures["time"] = {n: time_stage(n, args) for n in sizes}
    (OUT / "cohort.json").write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
