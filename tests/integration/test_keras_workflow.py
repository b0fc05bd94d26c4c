"""Keras models through the workflow's rules.

- The tiny cohort with a Keras 3 ``.keras`` model: the torch demo CNN of the tiny cohort
  with its weights copied across (``copy_torch_weights``), so both runs must write the same
  datasets and attributes, and the same numbers to within float error; then its saliency
  maps through the ``saliency_maps`` rule.
- The whole workflow with a real legacy Keras 2 ``.h5`` model (IBM's mitosis detector in
  ../shared/testdata, read with tf-keras), all six saliency methods with the shipped config's
  options included.
"""

from __future__ import annotations

import dataclasses
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TESTDATA
from tests.integration.cohort import check_saliency_maps, job_counts, snakemake, write_cohort

SLIDES = ["s1", "s2"]
TARGETS = [f"results/features/tiny/{s}.h5" for s in SLIDES]
SIX_METHODS = {
    "vanilla",
    "integrated_gradients",
    "guided_integrated_gradients",
    "blur_integrated_gradients",
    "xrai",
    "gradcam",
}
MITOSIS = TESTDATA / "models" / "ibm_max_mitosis" / "deep_histopath_model.hdf5"

pytestmark = pytest.mark.slow


def to_keras_model_dir(directory) -> None:
    """Replace the cohort's torch model directory by its Keras twin (model.keras)."""
    import torch

    from histoatlas.backends.keras.architectures import copy_torch_weights, demo_cnn_keras
    from histoatlas.backends.params import ModelParams
    from histoatlas.backends.torch.architectures import demo_cnn

    model = directory / "model"
    params = ModelParams.from_json(model / "params.json")
    net = demo_cnn(**params.architecture_kwargs)
    net.load_state_dict(torch.load(model / "weights.pt", weights_only=True))
    knet = demo_cnn_keras(**params.architecture_kwargs, tile_px=params.tile_px)
    copy_torch_weights(knet, net)
    shutil.rmtree(model)
    model.mkdir()
    knet.save(model / "model.keras")
    dataclasses.replace(params, backend="tensorflow", weights="model.keras").to_json(
        model / "params.json"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same cohort extracted with the torch model and with its Keras twin."""
    root = tmp_path_factory.mktemp("keras-workflow")
    torch_dir, keras_dir = root / "torch", root / "keras"
    write_cohort(torch_dir, SLIDES)
    write_cohort(keras_dir, SLIDES)
    to_keras_model_dir(keras_dir)
    keras_proc = snakemake(keras_dir, *TARGETS)
    snakemake(torch_dir, *TARGETS)
    return torch_dir, keras_dir, keras_proc


def test_keras_run_extracts_only_the_slides(runs):
    _, keras_dir, proc = runs
    assert job_counts(proc.stdout + proc.stderr) == {"extract_activations": len(SLIDES)}
    log = (keras_dir / "logs/extract_activations/tiny/s1.log").read_text()
    assert "tiles/s" in log and "layers=['block3', 'postconv']" in log
    assert "Traceback" not in log


def test_per_slide_files_equal_the_torch_run(runs):
    torch_dir, keras_dir, _ = runs
    for target in TARGETS:
        with h5py.File(torch_dir / target) as t, h5py.File(keras_dir / target) as k:
            assert sorted(k) == sorted(t) == ["coords", "features", "grid", "predictions"]
            for name in t:
                assert k[name].shape == t[name].shape and k[name].dtype == t[name].dtype
                assert dict(k[name].attrs).keys() == dict(t[name].attrs).keys()
                for attr in t[name].attrs:
                    assert np.array_equal(k[name].attrs[attr], t[name].attrs[attr]), attr
            assert k["features"].shape[0] > 20
            assert k["features"].shape[1] == 32 + 32  # block3 (4*8 ch) + postconv (32)
            np.testing.assert_array_equal(k["coords"][:], t["coords"][:])
            np.testing.assert_array_equal(k["grid"][:], t["grid"][:])
            np.testing.assert_allclose(k["features"][:], t["features"][:], atol=1e-4)
            np.testing.assert_allclose(k["predictions"][:], t["predictions"][:], atol=1e-5)
            assert k.attrs.keys() == t.attrs.keys()
            differ = {a for a in t.attrs if not np.array_equal(k.attrs[a], t.attrs[a])}
            assert differ == {"model_sha256"}  # same path ("model"), other weights file


def test_demo_backend_tensorflow_builds_a_keras_demo_model(tmp_path):
    """A dry run of the demo with demo.backend tensorflow plans model.keras, in Keras's env."""
    from tests.integration.cohort import ROOT

    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    proc = snakemake(tmp_path, "-n", "-p", "--config", "demo={backend: tensorflow}")
    out = proc.stdout + proc.stderr
    assert "resources/demo/model/model.keras" in out
    assert "resources/demo/model/weights.pt" not in out
    assert job_counts(out)["train_demo_model"] == 1


def test_keras3_model_through_the_saliency_rule(runs):
    _, keras_dir, _ = runs
    proc = snakemake(keras_dir, "results/tiny/saliency/overview.png")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["saliency_maps"] == 1 and "extract_activations" not in counts
    maps = check_saliency_maps(keras_dir, "tiny", SIX_METHODS, px=64)
    assert maps["name"].nunique() == 2  # top_k_per_class 1, two classes
    log = (keras_dir / "logs/saliency_maps/tiny.log").read_text()
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def mitosis_run(tmp_path_factory):
    """The whole workflow on two tiny slides with the real legacy Keras 2 mitosis model."""
    if not MITOSIS.is_file():
        pytest.skip(f"the mitosis model is not at {MITOSIS} (shared/testdata)")
    directory = tmp_path_factory.mktemp("mitosis") / "cohort"
    write_cohort(directory, SLIDES)
    model = directory / "model"
    shutil.rmtree(model)
    model.mkdir()
    shutil.copy(MITOSIS, model / MITOSIS.name)
    # as the README gives it: 64 px tiles of 16 um, (x / 255 - 0.5) / 0.5, one logit
    (model / "params.json").write_text(
        '{"backend": "tensorflow", "weights": "deep_histopath_model.hdf5", "tile_px": 64, '
        '"tile_um": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], '
        '"class_names": ["mitosis"], "output": "sigmoid"}'
    )
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["tiles"]["um"] = 16
    config["features"] = {"name": "tiny", "layers": ["postconv"]}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(directory)
    return directory, proc


def test_legacy_keras_model_through_every_rule(mitosis_run):
    directory, proc = mitosis_run
    counts = job_counts(proc.stdout + proc.stderr)
    for rule in ("extract_activations", "merge_dataset", "fit_umap", "plot_umap"):
        assert counts[rule] >= 1, rule
    assert counts["render_mosaic"] == counts["saliency_maps"] == 1
    for slide in SLIDES:
        with h5py.File(directory / f"results/features/tiny/{slide}.h5") as f:
            n = len(f["coords"])
            assert n > 20 and f["predictions"].shape == (n, 1)
            assert f["features"].shape[1] > 1 and np.isfinite(f["features"][()]).all()
            probs = f["predictions"][()]
            assert ((probs >= 0) & (probs <= 1)).all() and probs.std() > 0
            assert f.attrs["class_names"] == '["mitosis"]'
    tiles = pd.read_parquet(directory / "results/tiny/dataset/tiles.parquet")
    assert set(tiles["pred_label"]) == {"mitosis"} and "pred_mitosis" in tiles
    for label in ("subtype", "slide", "cluster", "prediction", "uncertainty"):
        assert (directory / f"results/tiny/plots/umap_{label}.png").is_file()


def test_all_six_methods_on_the_legacy_keras_model(mitosis_run):
    directory, _ = mitosis_run
    # a trained network: Grad-CAM finds positive evidence too
    maps = check_saliency_maps(directory, "tiny", SIX_METHODS, px=64, gradcam_structure=True)
    assert maps["name"].nunique() == 1  # one class: one tile
