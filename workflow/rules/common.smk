# Config and sheet validation, wildcard constraints, and every helper function.
import functools
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from histoatlas.backends.loading import check_model_path, model_backend, read_params  # noqa: E402
from histoatlas.errors import HistoatlasError, ModelError  # noqa: E402
from histoatlas.io.sheet import check_cohort_sheet, read_sheet  # noqa: E402
from histoatlas.pipeline import paths  # noqa: E402
from histoatlas.pipeline.config import (  # noqa: E402
    check_config,
    coerce_config,
    featureset_name,
    model_tiling,
    run_info,
)
from histoatlas.pipeline.qc import summary_line, write_qc_summary  # noqa: E402
from histoatlas.runtime import collect_garbage_less  # noqa: E402

import yaml  # noqa: E402
from snakemake.exceptions import WorkflowError  # noqa: E402
from snakemake.logging import logger  # noqa: E402

DEMO_SHEET = "resources/demo/slides.csv"
DEMO_MODEL = "resources/demo/model"
ID_PATTERN = "[A-Za-z0-9._-]+"

with open(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml") as fh:
    _CONFIG_SCHEMA = yaml.safe_load(fh)
config.update(coerce_config(dict(config), _CONFIG_SCHEMA))


def _same_path(a, b):
    return Path(a).resolve() == Path(b).resolve()


def demo_slide_ids():
    """The demo's slide ids, from `demo.n_slides` alone (never from the configured sheet)."""
    return [f"demo-{i}" for i in range(1, config["demo"]["n_slides"] + 1)]


def demo_slide_files(suffix=".tiff"):
    """The demo's slide files, or their class maps with suffix=".labels.png"."""
    return [f"resources/demo/slides/{s}{suffix}" for s in demo_slide_ids()]


def demo_weights():
    """Weights file of the demo model directory for demo.backend (weights.pt, model.keras)."""
    from histoatlas.demo.train import WEIGHTS

    return WEIGHTS[config["demo"]["backend"]]


def _demo_model_built():
    return all(Path(DEMO_MODEL, f).exists() for f in ("params.json", demo_weights()))


def _load_sheet():
    """The slide sheet; for a demo run not yet built, the slides the demo will write."""
    if USES_DEMO_SHEET and not Path(DEMO_SHEET).exists():
        ids = demo_slide_ids()
        return pd.DataFrame({"slide": ids, "path": demo_slide_files(), "subtype": None})
    sheet = read_sheet(config["slides"])
    validate(sheet, "../schemas/slides.schema.yaml")
    return sheet


@functools.cache
def _model_params():
    """The model's params.json (a preset's keys filled in) and its path; (None, None) for
    the demo model before it is built. Read once per parse of the Snakefile."""
    if USES_DEMO_MODEL and not _demo_model_built():
        return None, None
    return read_params(Path(config["model"]))


def _resolve_tiling():
    """tiles.px and tiles.um: the config's, else the model's (its params.json or preset)."""
    params, params_path = _model_params()
    if params is None:
        px, um, source = config["demo"]["tile_px"], config["demo"]["tile_um"], "demo.tile_px"
    else:
        px, um, source = params.tile_px, params.tile_um, params_path
    tiles = model_tiling(config["tiles"], px, um, model=config["model"], source=source)
    config["tiles"].update(tiles)


def _model_predicts():
    """False for an encoder (params.json output "embedding", as every preset): its final
    output is the embedding, so there are no predictions to plot or pick tiles by."""
    params, _ = _model_params()
    return params is None or params.predicts


def _check_model():
    """The model path and its tile size, before any job loads it (the demo's is built)."""
    tiles = config["tiles"]
    if USES_DEMO_MODEL and not _demo_model_built():
        trained, where = config["demo"]["tile_px"], "demo.tile_px"
        if trained != tiles["px"] and not tiles["allow_model_mismatch"]:
            raise ModelError(
                f"the demo model {DEMO_MODEL} will be trained on {trained} px tiles "
                f"({where}), but the config asks for tiles.px = {tiles['px']}; set both alike"
            )
        return
    check_model_path(
        config["model"], tile_px=tiles["px"], allow_mismatch=tiles["allow_model_mismatch"]
    )


def _checked_inputs():
    """Config, sheet and model checks: every problem found, in one message, before any job."""
    try:
        check_config(config, _CONFIG_SCHEMA)
        validate(config, "../schemas/config.schema.yaml")
        sheet = _load_sheet()
    except HistoatlasError as e:
        raise WorkflowError(f"{type(e).__name__}: {e}") from None
    problems, labels = [], []
    try:
        # slide files (the demo's are built by a rule): once, in the main process
        labels = check_cohort_sheet(
            sheet,
            config["plots"]["labels"],
            source=config["slides"],
            check_files=not USES_DEMO_SHEET and not workflow.remote_exec,
        )
    except HistoatlasError as e:
        problems.append(f"{type(e).__name__}: {e}")
    try:
        _resolve_tiling()
        _check_model()
    except HistoatlasError as e:
        problems.append(f"{type(e).__name__}: {e}")
    if problems:
        raise WorkflowError("\n".join(problems))
    return sheet, labels


USES_DEMO_SHEET = _same_path(config["slides"], DEMO_SHEET)
USES_DEMO_MODEL = _same_path(config["model"], DEMO_MODEL)
# The demo's rules exist for the demo cohort, or to build a missing demo model for another
# cohort that uses it; never to rewrite the demo's files from another cohort's run.
BUILDS_DEMO = USES_DEMO_SHEET or (USES_DEMO_MODEL and not _demo_model_built())
_SHEET, LABELS = _checked_inputs()
SHEET = _SHEET.set_index("slide", drop=False)
COHORT = config["cohort"]
FEATURESET = featureset_name(config, _CONFIG_SCHEMA)
# predictions: asked for, and the model has them (an encoder's output is its embedding)
# what the run computes beyond the config's keys (predictions, saliency), for the report too
config["run_info"] = run_info(config, model_predicts=_model_predicts())
config["features"]["name"] = FEATURESET  # the report and the params show the name in use
# Per-slide values the rules look up once per job: plain dicts (a pandas lookup per job, or a
# function reading params.json per job, costs seconds in the DAG of 10,000 slides).
SLIDE_PATHS = dict(zip(SHEET["slide"], SHEET["path"].astype(str), strict=True))
SLIDE_MPP = (
    {s: float(m) for s, m in zip(SHEET["slide"], SHEET["mpp"], strict=True) if pd.notna(m)}
    if "mpp" in SHEET.columns
    else {}
)
SLIDES = SHEET["slide"].tolist()
# Projection shards: umap.shard_slides consecutive slides of the sheet each. Appending
# slides to the sheet touches the last shard (or adds one) and leaves the others alone.
SHARDS = [
    SLIDES[k : k + config["umap"]["shard_slides"]]
    for k in range(0, len(SLIDES), config["umap"]["shard_slides"])
]
# features.batch_size as a resource (0: the default of the device); resources, unlike
# params, trigger no rerun, and the batch size changes no result.
BATCH_SIZE = config["features"]["batch_size"] or 0
# tiles.reader as a resource too: the readers give the same pixels, so changing it reruns
# nothing (a param would).
READER = config["tiles"]["reader"]


wildcard_constraints:
    slide=ID_PATTERN,
    cohort=ID_PATTERN,
    label=ID_PATTERN,
    shard=r"\d+",
    # Only the configured featureset can be built: its params come from this config.
    featureset=FEATURESET.replace(".", r"\."),


def slide_h5(slide):
    """Per-slide activations file of the configured featureset."""
    return paths.SLIDE_H5.format(featureset=FEATURESET, slide=slide)


def cohort_h5_files(wildcards):
    """Per-slide activation files of every slide in the sheet, in sheet order."""
    return [slide_h5(s) for s in SLIDES]


def slide_path(wildcards):
    """The slide file, marked ancient: a copied slide (new mtime) is not re-extracted."""
    return ancient(SLIDE_PATHS[wildcards.slide])


def slide_mpp(wildcards):
    """The sheet's mpp for the slide, or None to use the file's."""
    return SLIDE_MPP.get(wildcards.slide)


def _model_files():
    """Files the model consists of, so that a retrained model re-extracts."""
    model = Path(config["model"])
    if USES_DEMO_MODEL:
        return [str(model / "params.json"), str(model / demo_weights())]
    if model.is_dir():
        return sorted(str(p) for p in model.rglob("*") if p.is_file())
    return [str(model)]


def _model_env():
    """Conda env (`--sdm conda`) of the rules that run the model: envs/torch.yaml or
    envs/tensorflow.yaml, as the model's backend needs (relative to workflow/rules/)."""
    if USES_DEMO_MODEL:  # built by train_demo_model, maybe not yet
        return demo_model_env(None)
    return f"../../envs/{model_backend(config['model'])}.yaml"


def demo_model_env(wildcards):
    """Conda env of the demo model's framework (demo.backend), relative to workflow/rules/."""
    return f"../../envs/{config['demo']['backend']}.yaml"


def _model_stamp(files):
    """Name, size and mtime of each model file: a retrained model changes it."""
    stamps = []
    for name in files:
        stat = Path(name).stat()
        # braces doubled: Snakemake formats string params with the job's wildcards
        safe = name.replace("{", "{{").replace("}", "}}")
        stamps.append(f"{safe} {stat.st_size} {stat.st_mtime_ns}")
    return stamps


# Evaluated once, not per job (see benchmarks/README.md, "dag").
MODEL_FILES = _model_files()
MODEL_ENV = _model_env()
# The extraction jobs take the model's files as inputs only where a rule builds them (the
# demo's model); otherwise as a param, their names, sizes and mtimes: a retrained model
# re-extracts all the same, and a sheet of 10,000 slides spares the DAG 20,000 input edges.
MODEL_INPUTS = MODEL_FILES if USES_DEMO_MODEL else []
MODEL_STAMP = [] if USES_DEMO_MODEL else _model_stamp(MODEL_FILES)


def model_param(wildcards):
    """config `model` for a job that has the model's files as inputs: a function, as
    `snakemake --lint` takes a literal path that prefixes an input for a hard-coded one."""
    return config["model"]


# per extraction job a literal (no function call per slide) unless the files are inputs
MODEL_PARAM = model_param if MODEL_INPUTS else config["model"]


def dataset_files(cohort):
    """The merged dataset table of a cohort."""
    return {name: path.format(cohort=cohort) for name, path in paths.DATASET.items()}


def dataset_inputs(wildcards):
    """The dataset table of the job's cohort, as named inputs."""
    return dataset_files(wildcards.cohort)


def umap_map_file(wildcards):
    """The map the shards project onto: umap.reference when config names one, else the
    model fitted on this cohort's sample."""
    return config["umap"]["reference"] or paths.UMAP_FIT_MODEL.format(cohort=wildcards.cohort)


def umap_fit_sample(wildcards):
    """The fitted sample's layout (fitted tiles keep it); none with a reference map."""
    if config["umap"]["reference"]:
        return []
    return paths.UMAP_FIT_SAMPLE.format(cohort=wildcards.cohort)


def shard_slides(wildcards):
    """The slides of one projection shard, in sheet order."""
    return SHARDS[int(wildcards.shard)]


def shard_h5_files(wildcards):
    """Per-slide activation files of one projection shard."""
    return [slide_h5(s) for s in shard_slides(wildcards)]


def umap_shard_files(wildcards):
    """Every projection shard's layout, in sheet order."""
    names = [shard_name(k) for k in range(len(SHARDS))]
    return expand(paths.UMAP_SHARD, cohort=wildcards.cohort, shard=names)


def shard_name(k):
    """The {shard} wildcard of the k-th shard (zero-padded, so listings sort)."""
    return f"{k:04d}"


def builtin_labels():
    """The built-in labels this run has: slide and cluster, and prediction and
    uncertainty when the model predicts."""
    builtin = ["slide", "cluster"]
    if config["run_info"]["predictions"]:
        builtin += ["prediction", "uncertainty"]
    return builtin


def plot_labels():
    """Labels to draw UMAP plots by: the config's, then the built-ins."""
    return list(dict.fromkeys(LABELS + builtin_labels()))


def n_clusters_for_label(wildcards):
    """k of the k-means plot; None for other labels, so changing k reruns that plot only."""
    return config["plots"]["n_clusters"] if wildcards.label == "cluster" else None


def saliency_method_params():
    """Per-method options of the saliency methods, from the config's saliency section."""
    cfg = config["saliency"]
    steps, batch = cfg["x_steps"], cfg["batch_size"]
    return {
        "integrated_gradients": {"x_steps": steps, "batch_size": batch},
        "guided_integrated_gradients": {
            "x_steps": steps,
            "max_dist": cfg["max_dist"],
            "fraction": cfg["fraction"],
        },
        "blur_integrated_gradients": {"steps": steps, "batch_size": batch},
        "xrai": {"batch_size": batch},
    }


def atlas_labels():
    """Labels the atlas colours by: atlas.labels, else those of the UMAP plots."""
    labels = config["atlas"]["labels"]
    if not labels:
        return plot_labels()
    builtin = set(builtin_labels())
    unknown = [label for label in labels if label not in builtin | set(SHEET.columns)]
    if unknown and Path(config["slides"]).exists():  # (the demo's sheet may be unbuilt)
        columns = [c for c in SHEET.columns if c not in ("slide", "path", "mpp")]
        raise WorkflowError(
            f"atlas.labels: {unknown} are neither columns of {config['slides']} ({columns}) "
            f"nor built-ins ({', '.join(sorted(builtin))}); fix atlas.labels in the config"
        )
    return list(dict.fromkeys(labels))


def atlas_tile_px():
    """Pixels of a mosaic tile at full zoom in the atlas: atlas.tile_px, else tiles.px."""
    return config["atlas"]["tile_px"] or config["tiles"]["px"]


def atlas_n_clusters():
    """k of the atlas's cluster label; None without one, so changing k leaves the atlas be."""
    return config["plots"]["n_clusters"] if "cluster" in atlas_labels() else None


def atlas_saliency(wildcards):
    """The saliency manifest the atlas links from its tiles, when the run makes maps."""
    if not config["run_info"]["saliency"]:
        return {}
    return {"saliency": paths.SALIENCY_MANIFEST.format(cohort=wildcards.cohort)}


def write_qc():
    """Write results/{cohort}/qc/slides.csv; called when a run ends, succeeded or failed.

    It cannot be a rule: a rule needing every slide's file never runs when one slide
    failed under --keep-going, which is when the table matters most.
    """
    try:
        table, path = write_qc_summary(
            SHEET["slide"].tolist(), featureset=FEATURESET, cohort=COHORT
        )
    except Exception as e:  # never hide the run's own outcome behind a QC problem
        logger.warning(f"could not write the slide qc table: {type(e).__name__}: {e}")
        return
    logger.info(summary_line(table, path))


def final_targets():
    """Everything `rule all` builds for the configured cohort."""
    targets = list(dataset_files(COHORT).values())
    targets += expand(paths.UMAP_PLOT, cohort=COHORT, label=plot_labels())
    targets += [paths.MOSAIC_PNG.format(cohort=COHORT)]
    targets += [paths.ATLAS.format(cohort=COHORT)]
    # saliency explains the top tiles of each predicted class, or the tiles config lists
    if config["run_info"]["saliency"]:
        targets += [paths.SALIENCY_OVERVIEW.format(cohort=COHORT)]
    return targets


# Last: what the Snakefile loaded stays for the whole run, so the garbage collector need not
# walk it again and again while Snakemake builds the DAG (benchmarks/README.md, "dag").
collect_garbage_less()
