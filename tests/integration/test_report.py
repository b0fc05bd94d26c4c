"""After a finished run: `snakemake --report`, what each job imported, and another cohort.

The shared run of the whole workflow on the tiny cohort (tests/integration/conftest.py), then:

- ``snakemake --report report.html`` gives one self-contained HTML file with every UMAP
  plot, the mosaic and the saliency overview, each captioned, and the methods paragraph
  (workflow/report/*.rst; the captions are also rendered here for other configs);
- each job imported only what the conda env of its rule (envs/*.yaml) provides, and that
  env is the smallest that does (recorded inside each job by tests/cluster/jobprobe.py);
- ``snakemake --configfile other.yaml`` runs a second cohort beside the first: results
  under ``results/other/``, shared slides not extracted again, the first cohort untouched.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.integration.cohort import (
    ROOT,
    SNAKEFILE,
    TINY_LABELS,
    copy_run,
    job_counts,
    tissue_slide,
)
from tests.test_envs import ENV_NAMES, RULE_ENV, pip_requirements, rule_envs

pytestmark = pytest.mark.slow

LABELS = TINY_LABELS
SIX_METHODS = (
    "vanilla, integrated_gradients, guided_integrated_gradients, "
    "blur_integrated_gradients, xrai, gradcam"
)
REPORT_DIR = ROOT / "workflow" / "report"
# Imported when installed, never needed: not in an env's requirements, and no harm without.
OPPORTUNISTIC = {
    "setuptools": "its .pth hook (_distutils_hack) runs in every Python process",
    "pyarrow": "pandas imports it when it is installed (torch rules read no parquet)",
    "cloudpickle": "pyarrow imports it when it is installed",
    "opt-einsum": "torch imports it when it is installed",
}


def snakemake(directory: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(directory)]
    cmd += ["--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=directory)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def finished(tiny_run):
    """The shared tiny run (tests/integration/conftest.py) and its report."""
    directory = tiny_run.dir
    snakemake(directory, "--report", "report.html")
    html = (directory / "report.html").read_text()
    scripts = dict(re.findall(r'<script id="([\w-]+)">\s*var \w+ = (.*?);\s*</script>', html, re.S))
    return SimpleNamespace(
        dir=directory,
        html=html,
        description=json.loads(scripts["workflow-desc"]),
        results=json.loads(scripts["results"]),
        categories=json.loads(scripts["categories"]),
        probes=tiny_run.probes,
    )


def test_report_holds_every_figure_with_its_caption(finished):
    plots = {f"results/tiny/plots/umap_{label}.png": label for label in LABELS}
    mosaic, overview = "results/tiny/mosaic/mosaic.png", "results/tiny/saliency/overview.png"
    assert set(finished.results) == set(plots) | {mosaic, overview}
    by_category = {
        category: sorted(f for files in subcategories.values() for f in files)
        for category, subcategories in finished.categories.items()
    }
    assert by_category == {
        "UMAP": sorted(plots),
        "Mosaic map": [mosaic],
        "Saliency": [overview],
    }
    for path, label in plots.items():
        entry = finished.results[path]
        assert entry["labels"] == {"label": label}
        assert f"coloured\nby <strong>{label}</strong>" in entry["caption"]
        assert "n_neighbors=10" in entry["caption"] and "200 tiles per slide" in entry["caption"]
    caption = finished.results[mosaic]["caption"]
    assert "cut into\n12 columns" in caption and "nearest to the cell's centre" in caption
    caption = finished.results[overview]["caption"]
    assert f"({SIX_METHODS})" in " ".join(caption.split())
    assert "the 1 tile(s) with the highest\npredicted probability of each class" in caption
    for entry in finished.results.values():
        assert "cohort <strong>tiny</strong>" in entry["caption"]
        assert "{{" not in entry["caption"] and "system-message" not in entry["caption"]


def test_report_is_one_self_contained_file(finished):
    # every figure is embedded, byte for byte; nothing is loaded from elsewhere
    for path, entry in finished.results.items():
        header, data = entry["data_uri"].split(",", 1)
        assert header.startswith("data:image/png")
        assert base64.b64decode(data) == (finished.dir / path).read_bytes()
    assert "<script src=" not in finished.html and "<link " not in finished.html
    assert not list(finished.dir.glob("report/")), "report written as a folder"


def test_report_opens_with_the_methods_paragraph(finished):
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", finished.description))
    for part in [
        "histoatlas analysed cohort tiny (slide sheet slides.csv) with the model model.",
        "tiles of 64 px covering 32 µm (stride: tile / 1)",
        "an Otsu threshold on the saturation of a thumbnail",
        "at least 0.5 of it was tissue",
        "more than 0.6 of their pixels below saturation 0.05 (grayspace) were dropped",
        "layer(s) block3, postconv (avg pooling of convolutional maps)",
        "together with its predictions",
        "featureset tiny",
        "UMAP (n_neighbors=10, min_dist=0.1, cosine metric, seed 0) was fitted on at most 200",
        "cut into 12 columns and each cell shows the tile nearest to its centre",
        f"{SIX_METHODS} (PAIR's saliency package; 25 integration steps)",
        "the 1 most confidently predicted tile(s) of each class",
    ]:
        assert part in text, f"{part!r} not in the methods paragraph:\n{text}"


def render(template: str, config: dict, **wildcards) -> str:
    """A caption as `snakemake --report` renders it (Jinja, then docutils, warnings fatal)."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    rst = Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        (REPORT_DIR / template).read_text()
    )
    smk = SimpleNamespace(config=config, wildcards=SimpleNamespace(**wildcards))
    html = publish_parts(
        rst.render(snakemake=smk),
        writer="html",
        settings_overrides={"halt_level": 2, "report_level": 2},
    )["body"]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def full_config(*, model_predicts: bool = True, **changes) -> dict:
    """The shipped config.yaml with the schema's defaults filled in, then changed; the
    tiling resolved (the demo model's) and the run's info added, as common.smk does."""
    from snakemake.utils import validate

    from histoatlas.pipeline.config import model_tiling, run_info

    with open(ROOT / "config.yaml") as fh:
        config = yaml.safe_load(fh)
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    config["tiles"] = model_tiling(config["tiles"], 224, 112, model="demo", source="demo")
    config["run_info"] = run_info(config, model_predicts=model_predicts)
    return config


def test_captions_render_for_every_kind_of_config():
    shipped = render("workflow.rst", full_config())
    assert "covering 112 µm" in shipped and "(whitespace)" not in shipped
    assert "up to 1000000 tiles drawn, coloured by the labels of the UMAP plots" in shipped
    atlas = render("workflow.rst", full_config(atlas={"labels": ["slide"], "tile_px": 96}))
    assert "coloured by slide, linked to the mosaic map at 96 px per tile" in atlas
    assert "vanilla, integrated_gradients, guided_integrated_gradients" in shipped
    assert "the 2 most confidently predicted tile(s) of each class" in shipped

    points = [{"slide": "a", "x": 0, "y": 0}, {"slide": "b", "x": 10, "y": 10}]
    other = full_config(
        tiles={"um": "20x", "whitespace_fraction": 0.9, "otsu": False},
        umap={"pca_dim": 50},
        saliency={"smooth": True, "tiles": points},
    )
    text = render("workflow.rst", other)
    assert "at 20x magnification" in text and "keeping every grid tile" in text
    assert "or more than 0.9 brighter than 230 (whitespace) were dropped" in text
    assert "after PCA to 50 dimensions" in text
    assert "each with SmoothGrad" in text and "2 tile(s) chosen in the config" in text
    text = render("saliency.rst", other, cohort="c")
    assert "the 2 point(s) listed in the config" in text and "each with SmoothGrad" in text

    projected = full_config(
        umap={"reference": "old/umap.joblib"}, features={"include_preds": False}
    )
    text = render("workflow.rst", projected)
    assert "projected onto the existing map old/umap.joblib." in text
    assert "Saliency" not in text and "predictions" not in text
    encoder = full_config(model_predicts=False, saliency={"tiles": points})
    text = render("workflow.rst", encoder)
    assert "predictions" not in text and "2 tile(s) chosen in the config" in text
    assert "explain one embedding dimension (the model is an encoder) of 2 tile(s)" in text
    assert "coloured by subtype" in render("umap.rst", projected, cohort="c", label="subtype")
    columns = projected["mosaic"]["num_tiles_x"]
    assert f"cut into {columns} columns" in render("mosaic.rst", projected, cohort="c")


def env_closure(requirements) -> set[str]:
    """Distributions an env's pip requirements bring in (installed metadata, no extras)."""
    seen: set[str] = set()
    stack = list(requirements)
    while stack:
        req = stack.pop()
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for dep in map(Requirement, requires):
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                stack.append(dep)
    return seen


def test_each_job_imports_only_what_its_conda_env_provides(finished):
    envs = {name: env_closure(pip_requirements(name)) for name in ENV_NAMES}
    # a job runs Snakemake's preamble from Snakemake's own installation, not from the env
    preamble = env_closure([Requirement("snakemake")])
    rule_env = {r: e and Path(e).stem for r, e in rule_envs(finished.dir).items()}
    dists = metadata.packages_distributions()
    scripts = {p["script"] for p in finished.probes}
    demo_rules = {"fetch_demo_tissue", "make_demo_slides", "train_demo_model"}
    assert scripts == set(RULE_ENV) - demo_rules  # every rule but the demo's ran
    for probe in finished.probes:
        imported = {canonicalize_name(d) for m in probe["modules"] for d in dists.get(m, [])}
        needed = imported - preamble - set(OPPORTUNISTIC) - {"histoatlas"}
        env = rule_env[probe["script"]]
        missing = needed - envs[env]
        assert not missing, f"{probe['script']} imported {sorted(missing)}, not in envs/{env}.yaml"
        # and no smaller env would do
        serving = [name for name, closure in envs.items() if needed <= closure]
        assert min(serving, key=lambda name: len(envs[name])) == env, (probe["script"], serving)


def test_another_cohort_runs_beside_the_first(tiny_run, tmp_path):
    directory = copy_run(tiny_run, tmp_path / "tiny")
    first = {p: p.stat().st_mtime_ns for p in (directory / "results").rglob("*") if p.is_file()}
    from histoatlas.io.tiff import write_pyramid_tiff

    write_pyramid_tiff(directory / "slides" / "s4.tiff", tissue_slide(7), mpp=0.5)
    (directory / "other.csv").write_text(
        "slide,path,subtype\ns1,slides/s1.tiff,b\ns3,slides/s3.tiff,b\ns4,slides/s4.tiff,a\n"
    )
    (directory / "other.yaml").write_text("cohort: other\nslides: other.csv\n")
    target = "results/other/dataset/tiles.parquet"
    output = snakemake(directory, target, "--configfile", "other.yaml")
    # the Snakefile's config.yaml, then other.yaml over it: only s4 is new
    assert job_counts(output) == {"extract_activations": 1, "merge_dataset": 1}
    assert "results/features/tiny/s4.h5" in output
    tiles = pd.read_parquet(directory / target)
    assert tiles["slide"].unique().tolist() == ["s1", "s3", "s4"]
    assert tiles.groupby("slide")["subtype"].first().to_dict() == {"s1": "b", "s3": "b", "s4": "a"}
    first_tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    shared = first_tiles[first_tiles["slide"] == "s1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        tiles[tiles["slide"] == "s1"].reset_index(drop=True)[["tile", "x", "y"]],
        shared[["tile", "x", "y"]],
    )
    # the first cohort's results are untouched, and still complete for its own config
    assert {p: p.stat().st_mtime_ns for p in first} == first
    assert "Nothing to be done" in snakemake(directory, "-n")
