"""The tiny cohort once with a Keras model: per-slide files as the torch run writes them.

The Keras model is the torch demo CNN of the tiny cohort with its weights copied across
(``copy_torch_weights``), so both runs must write the same datasets and attributes, and
the same numbers to within float error.
"""

from __future__ import annotations

import dataclasses
import shutil

import h5py
import numpy as np
import pytest

from tests.integration.cohort import job_counts, snakemake, write_cohort

SLIDES = ["s1", "s2"]
TARGETS = [f"results/features/tiny/{s}.h5" for s in SLIDES]

pytestmark = pytest.mark.slow


def to_keras_model_dir(directory) -> None:
    """Replace the cohort's torch model directory by its Keras twin (model.keras)."""
    import torch

    from histoatlas.models.architectures import demo_cnn
    from histoatlas.models.keras_architectures import copy_torch_weights, demo_cnn_keras
    from histoatlas.models.params import ModelParams

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
