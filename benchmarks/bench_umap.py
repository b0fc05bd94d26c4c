"""UMAP at 10^4..10^6 tiles: fit on a per-slide sample, transform the rest in chunks.

The workflow's settings (``fit_umap``: n_neighbors 50, min_dist 0.1, cosine, seeded,
hence single-threaded; 50,000-row transform chunks), on seeded synthetic 512-d
activations (a mixture of 12 Gaussian clusters; 1,000 tiles per slide, a per-slide cap
that makes the fitting sample at most ``--fit`` tiles), with and without PCA to 50
dimensions. Each size runs in its own process, so its peak memory (``ru_maxrss`` from
``wait4``) is its own; numba's first compilation is timed apart from the fit. Where the
transform would exceed ``--budget`` seconds, it stops after the chunks that fit and
extrapolates linearly (the transform is per row), saying so.

    python benchmarks/bench_umap.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from common import OUT, header, load, machine

CHUNK = 50_000


def activations(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` rows of 512-d non-negative activations from 12 clusters (post-ReLU-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, (12, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        label = rng.integers(0, 12, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = np.maximum(centres[label] + 0.5 * noise, 0)
    return out


def one(n: int, pca: int | None, fit_max: int, budget: float) -> dict:
    """Run one size in this process; return its timings."""
    from histoatlas.analysis.umap_fit import fit_umap, import_umap, sample_per_group

    t = time.perf_counter()
    import_umap()
    result = {"n": n, "pca": pca, "import_s": time.perf_counter() - t}
    features = activations(n)
    slides = np.arange(n) // 1000
    per_slide = max(1, fit_max // max(1, len(np.unique(slides))))
    # numba compiles UMAP's functions on first use in each process: time it apart
    t = time.perf_counter()
    fit_umap(activations(2000, seed=1), n_neighbors=50, random_state=0)
    result["compile_s"] = time.perf_counter() - t

    fit_rows = sample_per_group(slides, per_slide, seed=0)
    t = time.perf_counter()
    fitted, _ = fit_umap(features[fit_rows], pca_dim=pca, random_state=0, n_neighbors=50)
    result["fit_s"] = time.perf_counter() - t
    result["n_fit"] = len(fit_rows)

    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    t = time.perf_counter()
    done = 0
    for start in range(0, len(rest), CHUNK):
        fitted.transform(features[rest[start : start + CHUNK]], chunk_size=CHUNK)
        done = min(len(rest), start + CHUNK)
        if time.perf_counter() - t > budget and done < len(rest):
            break
    elapsed = time.perf_counter() - t
    result["transform_rows"] = done
    result["transform_measured_s"] = elapsed
    result["transform_s"] = elapsed * len(rest) / max(1, done)
    result["extrapolated"] = done < len(rest)
    result["total_s"] = result["fit_s"] + result["transform_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--pca", default="none,50", help="none and/or a PCA dimension")
    parser.add_argument("--fit", type=int, default=20_000, help="most tiles in the fit sample")
    parser.add_argument("--budget", type=float, default=600, help="transform seconds per size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-pca", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        pca = None if args.one_pca == "none" else int(args.one_pca)
        print(json.dumps(one(args.one, pca, args.fit, args.budget)), flush=True)
        return

    header("umap")
    figures = {"machine": machine()}
    for pca in args.pca.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--one", str(n), "--one-pca", pca]
            cmd += ["--fit", str(args.fit), "--budget", str(args.budget)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                print(f"umap n={n} pca={pca}: failed ({proc.returncode})", flush=True)
                continue
            r = json.loads(out.strip().splitlines()[-1])
            r["peak_rss_mib"] = usage.ru_maxrss / 1024
            note = (
                f" (extrapolated from {r['transform_rows']} rows in "
                f"{r['transform_measured_s']:.0f} s)"
                if r["extrapolated"]
                else ""
            )
            print(
                f"umap_{n}_pca{pca}: fit {r['fit_s']:.1f} s on {r['n_fit']} tiles, transform "
                f"{r['transform_s']:.1f} s for {n - r['n_fit']} tiles{note}, total "
                f"{r['total_s']:.1f} s; peak memory {r['peak_rss_mib']:.0f} MiB; import "
                f"{r['import_s']:.1f} s, numba compile {r['compile_s']:.1f} s  [load {load()}]",
                flush=True,
            )
            figures[f"umap_{n}_pca{pca}"] = r
    (OUT / "umap.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
