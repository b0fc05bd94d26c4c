"""The whole workflow with a foundation model given as two keys of params.json.

The model directory holds ``{"architecture": "uni2-h", "weights": "pytorch_model.bin"}``
and a UNI2-h checkpoint in the layout its authors publish (timm names, LayerScale gammas,
8 register tokens, SwiGLU-packed MLPs), written by the reference build of
``tests/encoder_cases.py``. A full-size UNI2-h (1.1 billion parameters, 4.4 GB, seconds per
tile on 2 cores) is too heavy for a test, so the checkpoint has 1 of the 24 blocks, and in
every process of the run (through a ``sitecustomize`` on ``PYTHONPATH``, as
``tests/cluster/jobprobe.py`` records jobs) the preset's depth is the one thing patched:
24 becomes 1. Everything else (the two-key params.json, the tiling 256 px at 20x that the
featureset takes, the resize to 224, the CLS embedding as ``postconv``, the Grad-CAM layer)
is the preset's own. The full-size file's key names and shapes are checked against the
unpatched preset on the meta device in ``tests/test_encoders_layouts.py``.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from histoatlas.atlas.encode import read_data_script
from tests.encoder_cases import save_published, timm_reference
from tests.integration.cohort import ROOT, job_counts, snakemake, tissue_slide, write_cohort

SLIDES = ["s1", "s2"]
DEPTH = 1

_PATCH = '''\
"""Written by tests/integration/test_encoder_workflow.py: UNI2-h with {depth} block(s)."""
import dataclasses
import sys

sys.path.insert(0, {scripts!r})
from histoatlas.backends.torch.encoders import presets as _presets

_p = _presets.PRESETS["uni2-h"]
_presets.PRESETS["uni2-h"] = dataclasses.replace(_p, kwargs={{**_p.kwargs, "depth": {depth}}})
'''


def patched_env(folder) -> dict:
    """The environment of a run in which the uni2-h preset has ``DEPTH`` blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = str(ROOT / "workflow" / "scripts")
    (folder / "sitecustomize.py").write_text(_PATCH.format(depth=DEPTH, scripts=scripts))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def tissue_point(seed: int) -> tuple[int, int]:
    """A level-0 point in the middle of the tissue of ``tissue_slide(seed)``."""
    ys, xs = np.nonzero(tissue_slide(seed).astype(int).sum(-1) < 600)
    return int(np.median(xs)), int(np.median(ys))


@pytest.fixture(scope="module")
def uni2h_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("uni2h")
    directory = base / "cohort"
    write_cohort(directory, SLIDES)
    model = directory / "uni2-h"
    model.mkdir()
    ref = timm_reference("uni2-h", DEPTH)
    save_published(ref.published(), model / "pytorch_model.bin")
    (model / "params.json").write_text('{"architecture": "uni2-h", "weights": "pytorch_model.bin"}')
    config = yaml.safe_load((directory / "config.yaml").read_text())
    x, y = tissue_point(0)
    # postconv (the preset's CLS embedding) and a layer selector inside the ViT
    config.update(model="uni2-h", tiles={}, features={"layers": ["postconv", "blocks.0:cls"]})
    config["umap"]["n_neighbors"] = 5
    config["saliency"].update(
        methods=["vanilla", "integrated_gradients", "gradcam"],
        x_steps=4,
        batch_size=4,
        tiles=[{"slide": "s1", "x": x, "y": y, "class": 0}],  # an embedding dimension
    )
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake(directory, env=patched_env(base / "patch"))
    return directory, proc, ref


@pytest.mark.slow
def test_two_key_uni2h_directory_runs_the_whole_workflow(uni2h_run):
    directory, proc, ref = uni2h_run
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["extract_activations"] == len(SLIDES)
    cohort_rules = ("merge_dataset", "fit_umap", "render_mosaic", "select_saliency_tiles")
    for rule in (*cohort_rules, "saliency_maps", "build_atlas"):
        assert counts[rule] == 1, rule
    # an encoder has no predictions: no prediction/uncertainty plots, no pred_ columns
    plots = sorted(p.name for p in (directory / "results/tiny/plots").iterdir())
    assert plots == ["umap_cluster.png", "umap_slide.png", "umap_subtype.png"]
    tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    assert not [c for c in tiles.columns if c.startswith("pred_")] and len(tiles) >= 4
    # the atlas colours by what an encoder run has: no prediction or uncertainty labels
    _, meta, _ = read_data_script(directory / "results/tiny/atlas/data/meta.js")
    assert [label["name"] for label in meta["labels"]] == ["subtype", "slide", "cluster"]
    assert meta["n_total"] == len(tiles) and not meta["has_probability"]


@pytest.mark.slow
def test_featureset_takes_the_presets_tiling_and_embedding(uni2h_run):
    from histoatlas.backends import load_model
    from histoatlas.io.wsi import WSI

    directory, _, ref = uni2h_run
    # the preset's tiling, and a hash for the layers (not the default [postconv])
    (folder,) = (directory / "results/features").glob("uni2-h-256px-20x-??????")
    for slide in SLIDES:
        with h5py.File(folder / f"{slide}.h5") as f:
            assert "predictions" not in f
            assert f["features"].shape[1] == 2 * 1536
            assert (f.attrs["tile_px"], f.attrs["input_px"], f.attrs["tile_um"]) == (256, 224, 128)
            assert json.loads(f.attrs["layers"]) == ["postconv", "blocks.0:cls"]
            feats, coords = f["features"][:], f["coords"][:]
    # postconv of the last slide is the reference's CLS embedding of its tiles (224 px views)
    params = {"architecture": "uni2-h", "architecture_kwargs": {"depth": DEPTH}}
    check = directory / "check"
    check.mkdir()
    (check / "params.json").write_text(json.dumps(params))
    (check / "pytorch_model.bin").symlink_to(directory / "uni2-h" / "pytorch_model.bin")
    model = load_model(check, device="cpu")
    with WSI(directory / f"slides/{SLIDES[-1]}.tiff", 256, "20x") as wsi:
        x = model.to_tensor(np.stack([wsi.read_tile(*xy) for xy in coords]))
    store = {}
    ref.module.blocks[0].register_forward_hook(lambda m, i, o: store.update(block=o))
    with torch.inference_mode():
        np.testing.assert_allclose(feats[:, :1536], ref.embed(x).numpy(), rtol=1e-4, atol=1e-4)
    block_cls = store["block"][:, 0].numpy()  # blocks.0:cls, before the final norm
    np.testing.assert_allclose(feats[:, 1536:], block_cls, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_saliency_of_an_embedding_dimension(uni2h_run):
    directory, _, _ = uni2h_run
    maps = pd.read_csv(directory / "results/tiny/saliency/maps.csv")
    assert list(maps["method"]) == ["vanilla", "integrated_gradients", "gradcam"]
    assert not maps["constant"].any()
    for row in maps.itertuples():
        mask = np.load(directory / row.npy)
        assert mask.shape == (224, 224) and np.isfinite(mask).all() and mask.std() > 0
    log = (directory / "logs/saliency_maps/tiny.log").read_text()
    assert "warning" not in log.lower()
