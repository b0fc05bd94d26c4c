"""Keras models (TensorFlow backend) through loading, Features, extraction and saliency.

One module, so TensorFlow is imported once. The centre piece is a pair of networks with
the same weights: the torch demo CNN and its Keras twin (weights copied across, channel
order minded); every path must give the same numbers for both. The real legacy model
(IBM's Keras 2.1 mitosis detector in ``shared/testdata``) checks the tf-keras path.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from histoatlas.analysis.features import Features
from histoatlas.backends import load_model
from histoatlas.backends.base import file_sha256
from histoatlas.backends.keras.architectures import copy_torch_weights, demo_cnn_keras
from histoatlas.backends.keras.model import (
    KerasModel,
    directory_sha256,
    import_tensorflow,
    resolve_device,
)
from histoatlas.backends.loading import model_backend
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.errors import ConfigError, LayerError, ModelError
from histoatlas.io.wsi import WSI
from histoatlas.saliency import METHODS, SaliencyMap
from tests.extracting import extract
from tests.scripts import run_script

TILE = 64
CLASSES = ("a", "b", "c")
MEAN, STD = (0.7, 0.5, 0.6), (0.15, 0.2, 0.1)
LAYERS = ["block1", "block2.1", "block3", "postconv", "output"]
TISSUE = ((128, 128, 640, 512), (768, 384, 1024, 768))  # on a 1024 x 768 slide
ROOT = Path(__file__).resolve().parents[1]

# tf-keras recommends its own format over .h5; the legacy files are the point here
pytestmark = [
    pytest.mark.slow,  # TensorFlow and Keras models (seconds to minutes)
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]


@pytest.fixture(scope="module")
def tf():
    return import_tensorflow()


@pytest.fixture(scope="module")
def keras(tf):
    import keras

    return keras


@pytest.fixture(scope="module")
def tf_keras(tf):
    import tf_keras

    return tf_keras


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tf):
    """The torch demo CNN and its Keras twin, each saved as a model directory."""
    root = tmp_path_factory.mktemp("twins")
    torch.manual_seed(0)
    net = demo_cnn(num_classes=3, width=8).eval()
    params = ModelParams(
        tile_px=TILE,
        tile_um=32,
        mean=MEAN,
        std=STD,
        class_names=CLASSES,
        architecture_kwargs={"num_classes": 3, "width": 8},
    )
    (root / "torch").mkdir()
    torch.save(net.state_dict(), root / "torch" / "weights.pt")
    params.to_json(root / "torch" / "params.json")
    knet = demo_cnn_keras(3, 8, tile_px=TILE)
    copied = copy_torch_weights(knet, net)
    (root / "keras").mkdir()
    knet.save(root / "keras" / "model.keras")
    keras_params = dataclasses.replace(params, backend="tensorflow", weights="model.keras")
    keras_params.to_json(root / "keras" / "params.json")
    return SimpleNamespace(
        net=net, knet=knet, copied=copied, torch=root / "torch", keras=root / "keras"
    )


@pytest.fixture(scope="module")
def tiles():
    """Tiles with structure (smooth blobs plus noise), so every layer carries signal."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:TILE, :TILE] / TILE
    out = []
    for _ in range(10):
        cx, cy, r = rng.uniform(0.2, 0.8, 3)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < (r / 2) ** 2)[..., None]
        colour = rng.uniform(60, 240, (2, 3))
        img = np.where(blob, colour[0], colour[1]) + rng.normal(0, 20, (TILE, TILE, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def mitosis(tmp_path_factory, testdata):
    """The IBM mitosis model as a model directory (params.json + a link to the .hdf5)."""
    src = testdata / "models" / "ibm_max_mitosis"
    root = tmp_path_factory.mktemp("mitosis")
    (root / "deep_histopath_model.hdf5").symlink_to(src / "deep_histopath_model.hdf5")
    # preprocessing (x / 255 - 0.5) * 2 is mean 0.5, std 0.5; one logit: sigmoid
    params = {
        "backend": "tensorflow",
        "weights": "deep_histopath_model.hdf5",
        "tile_px": 64,
        "tile_um": 16,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "class_names": ["mitosis"],
        "output": "sigmoid",
    }
    (root / "params.json").write_text(json.dumps(params))
    from PIL import Image

    images = [np.asarray(Image.open(src / f).convert("RGB")) for f in ("true.png", "false.png")]
    return SimpleNamespace(dir=root, file=src / "deep_histopath_model.hdf5", tiles=np.stack(images))


# -- the twins: same weights, same numbers ---------------------------------------------


def test_weights_copied_into_every_conv_and_dense(twins):
    assert twins.copied == ["block1.0", "block2.0", "block3.0", "block4.0", "fc"]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_parity_of_activations_and_predictions(twins, tiles, pooling):
    ft = Features(twins.torch, LAYERS, pooling=pooling, device="cpu")
    fk = Features(twins.keras, LAYERS, pooling=pooling, device="cpu")
    a, pa = ft(tiles)
    b, pb = fk(tiles)
    assert fk.layer_slices == ft.layer_slices
    assert fk.layer_slices["block3"] == (8 + 16, 8 + 16 + 32)  # block1 8, block2.1 16 channels
    assert a.shape == b.shape == (len(tiles), 8 + 16 + 32 + 32 + 3)
    assert np.abs(a).max() > 0.1  # not vacuous
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pb, pa, atol=1e-5)
    np.testing.assert_allclose(pb.sum(1), 1, atol=1e-5)  # softmax applied once
    # the Keras path agrees with Keras itself, too
    x = (tiles / 255.0 - MEAN) / STD
    np.testing.assert_allclose(
        b[:, -3:], twins.knet(x.astype(np.float32)).numpy(), atol=1e-5, rtol=1e-5
    )


def test_parity_without_pooling_in_each_frameworks_order(twins, tiles):
    a = Features(twins.torch, ["block3"], pooling=None, include_preds=False)(tiles)
    b = Features(twins.keras, ["block3"], pooling=None, include_preds=False)(tiles)
    assert a.shape == b.shape == (len(tiles), 32 * 8 * 8)
    # torch flattens (C, H, W), Keras (H, W, C)
    a_hwc = a.reshape(-1, 32, 8, 8).transpose(0, 2, 3, 1).reshape(len(tiles), -1)
    np.testing.assert_allclose(b, a_hwc, atol=1e-4, rtol=1e-4)


def test_features_on_a_slide_match_torch(twins, synthetic_slide):
    slide = synthetic_slide("k1", size=(1024, 768), tissue=TISSUE, n_levels=2)
    with WSI(slide.path, TILE, 32) as wsi:
        gt, pt = Features(twins.torch, ["postconv"])(wsi)
        gk, pk = Features(twins.keras, ["postconv"])(wsi)
        assert gk.shape == (*wsi.grid_shape, 32) and pk.shape == (*wsi.grid_shape, 3)
    assert np.isnan(gk).any() and np.isfinite(gk).any()
    np.testing.assert_array_equal(np.isnan(gk), np.isnan(gt))
    np.testing.assert_allclose(gk, gt, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(pk, pt, atol=1e-5, equal_nan=True)


def test_extracted_slide_files_have_the_torch_layout(twins, synthetic_slide, tmp_path):
    slide = synthetic_slide("k2", size=(1024, 768), tissue=TISSUE, n_levels=2)
    kwargs = dict(layers=["block3", "postconv"], tile_px=TILE, tile_um=32, num_workers=2)
    extract(slide.path, tmp_path / "t.h5", model=twins.torch, **kwargs)
    extract(slide.path, tmp_path / "k.h5", model=twins.keras, **kwargs)
    with h5py.File(tmp_path / "t.h5") as t, h5py.File(tmp_path / "k.h5") as k:
        assert sorted(k) == sorted(t) == ["coords", "features", "grid", "predictions"]
        for name in t:
            assert (k[name].shape, k[name].dtype) == (t[name].shape, t[name].dtype), name
            assert dict(k[name].attrs).keys() == dict(t[name].attrs).keys(), name
        assert k["features"].shape[0] > 10
        np.testing.assert_array_equal(k["coords"][:], t["coords"][:])
        np.testing.assert_array_equal(k["grid"][:], t["grid"][:])
        np.testing.assert_allclose(k["features"][:], t["features"][:], atol=1e-4)
        np.testing.assert_allclose(k["predictions"][:], t["predictions"][:], atol=1e-5)
        assert k.attrs.keys() == t.attrs.keys()
        different = {a for a in t.attrs if not np.array_equal(k.attrs[a], t.attrs[a])}
        assert different == {"model", "model_sha256"}
        assert k.attrs["model_sha256"] == file_sha256(twins.keras / "model.keras")


def test_unknown_layer_lists_the_keras_layers(twins):
    with pytest.raises(LayerError) as err:
        Features(twins.keras, ["block9"])
    message = str(err.value)
    assert message.startswith("layer 'block9' not in model; available: postconv, output, ")
    for name in ("block1", "block4.1", "pool", "fc"):
        assert name in message
    assert "did you mean" in message


def test_loaded_keras_model(twins, keras):
    model = load_model(twins.keras, device="cpu")
    assert isinstance(model, KerasModel)
    assert (model.backend, model.kind, model.device) == ("tensorflow", "keras", "cpu")
    assert model.keras_version == keras.__version__
    assert model.class_names == list(CLASSES) and model.params_path == twins.keras / "params.json"
    assert model.layer_names()[:4] == ["input", "block1.0", "block1.1", "block1"]
    assert model.sha256() == file_sha256(twins.keras / "model.keras")
    x = model.to_tensor(np.full((2, TILE, TILE, 3), 255, np.uint8)).numpy()
    np.testing.assert_allclose(x[0, 0, 0], (1 - np.array(MEAN)) / STD, rtol=1e-6)
    assert model_backend(twins.keras) == "tensorflow" and model_backend(twins.torch) == "torch"


def test_bare_files_get_tile_size_and_output_from_the_network(tmp_path, keras, tf_keras):
    k = keras.layers
    softmaxed = keras.Sequential(
        [keras.Input((48, 48, 3)), k.GlobalAveragePooling2D(), k.Dense(4, activation="softmax")]
    )
    softmaxed.save(tmp_path / "soft.keras")
    model = load_model(tmp_path / "soft.keras")
    assert model.params_path is None
    assert (model.params.tile_px, model.params.output, model.params.backend) == (
        48,
        "none",
        "tensorflow",
    )
    t = tf_keras.layers
    one_logit = tf_keras.Sequential(
        [tf_keras.Input((40, 40, 3)), t.GlobalAveragePooling2D(), t.Dense(1)]
    )
    one_logit.save(tmp_path / "logit.h5")
    model = load_model(tmp_path / "logit.h5")
    assert (model.params.tile_px, model.params.output, model.kind) == (40, "sigmoid", "h5")


def test_params_json_that_activates_twice_is_warned(tmp_path, keras):
    k = keras.layers
    net = keras.Sequential([keras.Input((8, 8, 3)), k.Flatten(), k.Dense(2, activation="softmax")])
    net.save(tmp_path / "m.keras")
    ModelParams(backend="tensorflow", weights="m.keras", tile_px=8).to_json(
        tmp_path / "params.json"
    )
    with pytest.warns(UserWarning, match='ends in softmax already.*set "output": "none"'):
        load_model(tmp_path)


# -- legacy files through tf-keras -------------------------------------------------------


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, tf_keras):
    """A small functional tf-keras model saved as .h5 and as a SavedModel."""
    root = tmp_path_factory.mktemp("legacy")
    t = tf_keras.layers
    tf_keras.utils.set_random_seed(3)
    inputs = tf_keras.Input((32, 32, 3))
    x = t.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = t.MaxPooling2D(name="pool")(x)
    x = t.Conv2D(5, 3, activation="relu", name="conv2")(x)
    x = t.GlobalAveragePooling2D(name="gap")(x)
    x = t.Dense(7, activation="relu", name="hidden")(x)
    outputs = t.Dense(2, name="logits")(x)
    net = tf_keras.Model(inputs, outputs)
    net.save(root / "net.h5")
    net.save(root / "saved", save_format="tf")
    return SimpleNamespace(net=net, h5=root / "net.h5", saved=root / "saved")


@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_legacy_models_load_with_every_layer(legacy, tf_keras, tiles, kind):
    path = legacy.h5 if kind == "h5" else legacy.saved
    model = load_model(path)
    assert (model.kind, model.keras_version) == (kind, tf_keras.__version__)
    assert model.layer_names()[1:] == ["conv", "pool", "conv2", "gap", "hidden", "logits"]
    small = tiles[:4, :32, :32]
    feats, preds = Features(model, ["conv2", "postconv", "output"], pooling="max")(small)
    x = model.preprocess(small)
    net = legacy.net
    probe = tf_keras.Model(
        net.inputs, [net.get_layer("conv2").output, net.get_layer("hidden").output, net.output]
    )
    conv2, hidden, logits = (v.numpy() for v in probe(x))
    np.testing.assert_allclose(feats[:, :5], conv2.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[:, 5:12], hidden, rtol=1e-5, atol=1e-6)  # postconv
    np.testing.assert_allclose(feats[:, 12:], logits, rtol=1e-5, atol=1e-6)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(preds, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    if kind == "savedmodel":
        assert model.sha256() == directory_sha256(legacy.saved)
        assert model_backend(legacy.saved) == "tensorflow"


def test_savedmodel_with_params_json_inside(legacy, tmp_path):
    import shutil

    folder = tmp_path / "saved"
    shutil.copytree(legacy.saved, folder)
    ModelParams(backend="tensorflow", tile_px=32, class_names=("x", "y")).to_json(
        folder / "params.json"
    )
    model = load_model(folder)
    assert (model.kind, model.class_names, model.weights_path) == ("savedmodel", ["x", "y"], folder)


def test_keras3_h5_files_are_read_by_keras3(twins, keras, tmp_path, tiles):
    twins.knet.save(tmp_path / "twin.h5")
    # a params.json beside the file; without "backend", whose default is torch
    beside = {"tile_px": TILE, "tile_um": 32, "mean": MEAN, "std": STD, "class_names": CLASSES}
    (tmp_path / "params.json").write_text(json.dumps(beside))
    model = load_model(tmp_path / "twin.h5")
    assert (model.kind, model.keras_version) == ("h5", keras.__version__)
    assert (model.params.backend, model.params_path) == ("tensorflow", tmp_path / "params.json")
    np.testing.assert_allclose(
        Features(model, ["block4"], include_preds=False)(tiles),
        Features(twins.keras, ["block4"], include_preds=False)(tiles),
        atol=1e-6,
    )


def test_lambda_layers_need_trust(tmp_path, keras, tf_keras):
    legacy = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 3)),
            tf_keras.layers.Lambda(lambda v: v * 2),
            tf_keras.layers.Flatten(),
        ]
    )
    legacy.save(tmp_path / "lambda.h5")
    with pytest.raises(ModelError, match=r"lambda\.h5 holds Lambda layer.*trust_model_code"):
        load_model(tmp_path / "lambda.h5")
    assert load_model(tmp_path / "lambda.h5", trust_model_code=True).kind == "h5"
    modern = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Lambda(lambda v: v * 2)])
    modern.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match=r"lambda\.keras holds a Lambda layer.*trust_model_code"):
        load_model(tmp_path / "lambda.keras")
    assert load_model(tmp_path / "lambda.keras", trust_model_code=True).kind == "keras"


def test_unreadable_keras_file_names_both_keras_versions(twins, tmp_path, keras):
    """A .keras file another Keras wrote and this one cannot read: name file and versions."""
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(twins.keras / "model.keras") as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "metadata.json":
                data = json.dumps({"keras_version": "3.8.0"}).encode()
            elif item == "config.json":  # what an older Keras may have written
                config = json.loads(data)
                config["config"]["layers"][-1]["config"]["kernel_size"] = 3
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelError) as err:
        load_model(old)
    message = str(err.value)
    assert f"cannot load .keras model {old}: written by Keras 3.8.0, installed Keras " in message
    assert keras.__version__ in message and "keras==3.8.0" in message


def test_files_that_are_not_whole_models(tmp_path, twins):
    twins.knet.save_weights(tmp_path / "only.weights.h5")
    (tmp_path / "only.weights.h5").rename(tmp_path / "only.h5")
    with pytest.raises(ModelError, match=r"only\.h5 holds weights only"):
        load_model(tmp_path / "only.h5")
    folder = tmp_path / "dir"
    folder.mkdir()
    ModelParams(backend="tensorflow", weights="gone.keras").to_json(folder / "params.json")
    with pytest.raises(ModelError, match="'gone.keras' .*is not there"):
        load_model(folder)


def test_subclassed_models_give_their_output_only(keras, tiles):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(self.pool(x))

    net = Net()
    net(np.zeros((1, TILE, TILE, 3), np.float32))
    model = KerasModel(net, "tensorflow", ModelParams(), Path("net"), "cpu", "bare", Path("net"))
    feats = Features(model, ["output"], include_preds=False)(tiles[:2])
    np.testing.assert_allclose(feats, net(model.preprocess(tiles[:2])).numpy(), atol=1e-6)
    with pytest.raises(LayerError, match="subclassed Keras model.*final output only"):
        Features(model, ["postconv"])


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_nested_model_is_one_layer(flavour, keras, tf_keras, tiles):
    """A base network nested in the model (transfer learning) gives its output by its name."""
    module = keras if flavour == "keras" else tf_keras
    k = module.layers
    base_in = module.Input((TILE, TILE, 3))
    base = module.Model(base_in, k.Conv2D(5, 3, name="inner")(base_in), name="base")
    net = module.Sequential([module.Input((TILE, TILE, 3)), base, k.Flatten(), k.Dense(2)])
    model = KerasModel(net, "tensorflow", ModelParams(), Path("n"), "cpu", "bare", Path("n"))
    feats = Features(model, ["base"], include_preds=False)(tiles[:3])
    expected = base(model.preprocess(tiles[:3])).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(LayerError, match=r"'inner' not in model.*nested models \(base\)"):
        Features(model, ["inner"])


def test_device_names(tf):
    assert resolve_device("cpu") == resolve_device("/device:CPU:0") == "cpu"
    n_gpus = len(tf.config.list_physical_devices("GPU"))
    assert resolve_device(None) == ("cuda" if n_gpus else "cpu")
    with pytest.raises(ConfigError, match="'gpu:7' requested, but TensorFlow sees"):
        resolve_device("gpu:7")
    with pytest.raises(ConfigError, match="'tpu' is not a device name"):
        resolve_device("tpu")


# -- saliency -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explainers(twins):
    torch_model, keras_model = load_model(twins.torch), load_model(twins.keras)
    return SimpleNamespace(
        torch=SaliencyMap(torch_model, "b"), keras=SaliencyMap(keras_model, "b"), model=keras_model
    )


def test_all_six_methods_on_a_keras_model(explainers, tiles):
    img = explainers.model.preprocess(tiles[0])
    params = {
        "xrai": {"steps": 10, "fast": True},
        "blur_integrated_gradients": {"steps": 10},
        "gradcam": {"layer": "block3"},  # block4's map is all negative in this random net
    }
    masks = explainers.keras.all(img, params=params)
    assert list(masks) == list(METHODS)
    for method, mask in masks.items():
        assert mask.shape == (TILE, TILE) and mask.dtype == np.float32, method
        assert np.isfinite(mask).all() and np.abs(mask).max() > 0, method


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("vanilla", {}),
        ("integrated_gradients", {"x_steps": 10}),
        ("guided_integrated_gradients", {"x_steps": 10}),
        ("gradcam", {"layer": "block3"}),
    ],
)
def test_saliency_parity_with_torch(explainers, tiles, method, kwargs):
    img = explainers.model.preprocess(tiles[3])
    a = explainers.torch.compute(method, img, **kwargs)
    b = explainers.keras.compute(method, img, **kwargs)
    scale = np.abs(a).max()
    assert scale > 0
    np.testing.assert_allclose(b, a, atol=1e-3 * scale)


def test_integrated_gradients_completeness_on_keras(explainers, twins, tiles):
    img = explainers.model.preprocess(tiles[5])
    mask = explainers.keras.integrated_gradients(img, x_steps=200, batch_size=50)
    fx = float(twins.knet(img[None])[0, 1])
    f0 = float(twins.knet(np.zeros_like(img)[None])[0, 1])
    assert abs(fx - f0) > 1e-3
    assert mask.sum() == pytest.approx(fx - f0, rel=0.03)


def test_gradcam_layers(explainers, tiles):
    img = explainers.model.preprocess(tiles[0])
    backend = explainers.keras.backend
    assert backend.resolve_layer(None, img) == "block4"  # the torch default, too
    assert explainers.torch.backend.resolve_layer(None, img) == "block4"
    assert explainers.keras.gradcam(img, layer="block2.1").shape == (TILE, TILE)
    with pytest.raises(LayerError, match="rank-2 output; choose a convolutional layer"):
        explainers.keras.gradcam(img, layer="fc")
    with pytest.raises(LayerError, match="layer 'block7' not in model"):
        explainers.keras.gradcam(img, layer="block7")


def test_bare_keras_model_in_saliency_map(twins, tiles):
    img = ((tiles[1] / 255.0 - MEAN) / STD).astype(np.float32)
    mask = SaliencyMap(twins.knet, 2).vanilla(img)
    explainer = SaliencyMap(load_model(twins.keras), 2)
    np.testing.assert_allclose(mask, explainer.vanilla(img), rtol=1e-5, atol=1e-9)


# -- the real legacy model -------------------------------------------------------------


def test_mitosis_model_predictions(mitosis):
    model = load_model(mitosis.dir)
    assert (model.kind, model.params.tile_px) == ("h5", 64)
    preds = Features(model, ["output"], include_preds=True)(mitosis.tiles)[1]
    assert preds.shape == (2, 1)
    assert preds[0, 0] == pytest.approx(0.988, abs=0.002)  # true.png: one mitosis
    assert preds[1, 0] < 2e-4  # false.png
    # no Dense layer: the classifier is the final 1x1 convolution of the pooled map
    feats = Features(model, ["postconv", "average_pooling2d_1"], include_preds=False)(mitosis.tiles)
    assert feats.shape == (2, 2 * 128)
    np.testing.assert_array_equal(feats[:, :128], feats[:, 128:])


def test_mitosis_inner_layers_match_tf_keras(mitosis, tf_keras):
    feats = Features(load_model(mitosis.dir), ["add_5", "activation_28"], include_preds=False)(
        mitosis.tiles
    )
    net = tf_keras.models.load_model(mitosis.file, compile=False)
    inner = tf_keras.Model(
        net.inputs, [net.get_layer("add_5").output, net.get_layer("activation_28").output]
    )
    x = (mitosis.tiles.astype(np.float32) / 255 - 0.5) * 2
    add5, act28 = (v.numpy() for v in inner(x, training=False))
    assert feats.shape == (2, add5.shape[-1] + act28.shape[-1])
    np.testing.assert_allclose(feats[:, : add5.shape[-1]], add5.mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(feats[:, add5.shape[-1] :], act28.mean(axis=(1, 2)), atol=1e-5)


def test_mitosis_bare_file_and_gradcam(mitosis):
    bare = load_model(mitosis.file)
    assert bare.params_path is None
    assert (bare.params.tile_px, bare.params.output) == (64, "sigmoid")
    model = load_model(mitosis.dir)
    explainer = SaliencyMap(model, "mitosis")
    img = model.preprocess(mitosis.tiles[0])
    # the last spatial feature map, not the 1x1 convolution of the pooled head (conv2d_38)
    assert explainer.backend.resolve_layer(None, img) == "activation_28"
    cam = explainer.gradcam(img)
    assert cam.shape == (64, 64) and cam.max() > 0


# -- TensorFlow stays out of torch runs; threads beside torch ------------------------------


def test_torch_runs_never_import_tensorflow(twins, synthetic_slide, tmp_path):
    slide = synthetic_slide("k3", size=(512, 512), tissue=((128, 128, 384, 384),), n_levels=1)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from histoatlas.analysis.extract import extract_slide
        from histoatlas.backends import load_model
        from histoatlas.io.tiling import TileOptions
        from histoatlas.saliency import SaliencyMap
        extract_slide({str(slide.path)!r}, {str(tmp_path / "s.h5")!r},
                      model={str(twins.torch)!r}, tiles=TileOptions(px={TILE}, um=32))
        model = load_model({str(twins.torch)!r})
        SaliencyMap(model, 0).gradcam(np.zeros(({TILE}, {TILE}, 3), np.float32))
        print(sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_keras_runs_need_no_torch(twins, synthetic_slide, tmp_path):
    """envs/tensorflow.yaml has no torch: extraction and saliency must not import it."""
    slide = synthetic_slide("k4", size=(512, 512), tissue=((128, 128, 384, 384),), n_levels=1)
    script = textwrap.dedent(
        f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    raise ImportError(name + " is not installed here")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from histoatlas.analysis.extract import extract_slide
        from histoatlas.backends import load_model
        from histoatlas.io.tiling import TileOptions
        from histoatlas.saliency import SaliencyMap
        extract_slide({str(slide.path)!r}, {str(tmp_path / "s.h5")!r},
                      model={str(twins.keras)!r}, tiles=TileOptions(px={TILE}, um=32))
        model = load_model({str(twins.keras)!r})
        masks = SaliencyMap(model, 0).all(np.zeros(({TILE}, {TILE}, 3), np.float32),
                                          methods=["vanilla", "gradcam"])
        print(sorted(masks), "torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['gradcam', 'vanilla'] False"
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["features"].shape == (16, 32)  # 4 x 4 tissue tiles, postconv


def test_tensorflow_beside_torch_threads_and_triton():
    """TF takes torch's thread budget; torch's Triton imports after TF without crashing."""
    script = textwrap.dedent(
        """
        import os, torch
        torch.set_num_threads(3)
        from histoatlas.backends.keras.model import import_tensorflow
        tf = import_tensorflow()
        t = tf.config.threading
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"], t.get_intra_op_parallelism_threads(),
              t.get_inter_op_parallelism_threads())
        import torch._dynamo, torchvision.ops, timm  # each imports triton: segfault unless
        print("alive")                                # import_tensorflow loaded it first
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "3", "2", "alive"]


@pytest.mark.gpu
def test_tensorflow_grows_gpu_memory_beside_torch(tf):
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU")
    for gpu in tf.config.list_physical_devices("GPU"):
        assert tf.config.experimental.get_memory_growth(gpu)
    with tf.device("/GPU:0"):
        tf.reduce_sum(tf.ones((256, 256))).numpy()
    info = tf.config.experimental.get_memory_info("GPU:0")
    free, total = torch.cuda.mem_get_info()
    assert info["current"] < 1 << 30 and free > total // 2  # TF did not take the GPU
    torch.ones(1 << 20, device="cuda").sum().item()


# -- the demo in Keras -------------------------------------------------------------------


def test_demo_backend_tensorflow_trains_a_keras_model(tmp_path, tf):
    """The demo rule's script with demo.backend tensorflow: a model.keras that histoatlas reads."""
    from histoatlas.demo.slides import label_path_for, write_label_map
    from histoatlas.io.tiff import write_pyramid_tiff

    rng = np.random.default_rng(0)
    image = np.full((640, 1152, 3), 250, np.uint8)  # white glass around two tissue classes
    labels = np.zeros((640, 1152), np.uint8)
    for k, colour in enumerate([(220, 120, 170), (110, 60, 160)]):
        box = (slice(64, 576), slice(64 + 512 * k, 64 + 512 * (k + 1)))
        image[box] = np.clip(colour + rng.normal(0, 12, (512, 512, 3)), 0, 255)
        labels[box] = k + 1
    slide = tmp_path / "slides" / "d1.tiff"
    slide.parent.mkdir()
    write_pyramid_tiff(slide, image, 0.5, n_levels=1)
    write_label_map(label_path_for(slide), labels, ["pink", "purple"])
    (tmp_path / "slides.csv").write_text(f"slide,path\nd1,{slide}\n")
    out = tmp_path / "model"
    smk = SimpleNamespace(
        input=SimpleNamespace(sheet=str(tmp_path / "slides.csv")),
        output=SimpleNamespace(params=str(out / "params.json"), weights=str(out / "model.keras")),
        params=SimpleNamespace(
            seed=0, epochs=3, train_seconds=60, backend="tensorflow", tile_px=32, tile_um=32
        ),
        threads=2,
        log=[str(tmp_path / "train.log")],
    )
    run_script("train_demo_model", smk)
    assert sorted(p.name for p in out.iterdir()) == ["model.keras", "params.json", "training.json"]
    params = ModelParams.from_json(out / "params.json")
    assert (params.backend, params.weights, params.class_names) == (
        "tensorflow",
        "model.keras",
        ("pink", "purple"),
    )
    training = json.loads((out / "training.json").read_text())
    assert training["backend"] == "tensorflow" and training["epochs"] == 3
    assert training["val_accuracy"] > 0.9  # two colours: easy
    log = (tmp_path / "train.log").read_text()
    assert "epoch 3: loss" in log and "accuracy: train" in log
    # histoatlas reads it back and agrees with the held-out accuracy
    model = load_model(out)
    assert (model.kind, model.layer_names()[-1]) == ("keras", "fc")
    with WSI(slide, 32, 32) as wsi:
        held = [(wsi.read_tile(x, y), c) for _, x, y, c in training["held_out"]]
    preds = Features(model, ["output"])(np.stack([t for t, _ in held]))[1]
    accuracy = float((preds.argmax(1) == np.array([c for _, c in held])).mean())
    assert accuracy == pytest.approx(training["val_accuracy"], abs=1e-9)
