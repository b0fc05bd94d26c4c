"""Loading models: directories, TorchScript, pickled modules, errors and preprocessing."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from histoatlas.analysis.features import Features
from histoatlas.backends import LoadedModel, get_preprocess_fn, load_model
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import build_architecture, demo_cnn
from histoatlas.backends.torch.loading import is_torchscript
from histoatlas.backends.torch.model import resolve_device
from histoatlas.errors import ConfigError, LayerError, ModelError

TILE = 32
MEAN, STD = (0.7, 0.5, 0.6), (0.2, 0.25, 0.3)


def manual_preprocess(tiles: np.ndarray) -> torch.Tensor:
    x = (tiles.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


@pytest.fixture
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, TILE, TILE, 3), dtype=np.uint8)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return demo_cnn(num_classes=3, width=8).eval()


def write_model_dir(path, net, **params):
    path.mkdir(parents=True, exist_ok=True)
    defaults = dict(
        tile_px=TILE,
        tile_um=16,
        mean=MEAN,
        std=STD,
        class_names=("a", "b", "c"),
        architecture_kwargs={"width": 8},
    )
    ModelParams(**{**defaults, **params}).to_json(path / "params.json")
    torch.save(net.state_dict(), path / "weights.pt")
    return path


def test_model_directory_round_trip(tmp_path, net, tiles):
    model_dir = write_model_dir(tmp_path / "model", net)
    loaded = load_model(model_dir, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert (loaded.backend, loaded.kind, loaded.device) == ("torch", "directory", "cpu")
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.params.tile_px == TILE and loaded.params_path == model_dir / "params.json"
    assert not loaded.model.training
    with torch.inference_mode():
        expected = net(manual_preprocess(tiles))
        got = loaded.model(loaded.to_tensor(tiles))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert loaded.sha256() == hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest()
    assert "block1.0" in loaded.layer_names() and "fc" in loaded.layer_names()
    assert "" not in loaded.layer_names()


def test_preprocess_matches_formula(tmp_path, net, tiles):
    model_dir = write_model_dir(tmp_path / "model", net)
    expected = manual_preprocess(tiles).permute(0, 2, 3, 1).numpy()
    preprocess = get_preprocess_fn(model_dir)
    out = preprocess(tiles)
    assert out.dtype == np.float32 and out.shape == tiles.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    loaded = load_model(model_dir, device="cpu")
    np.testing.assert_allclose(loaded.preprocess(tiles), expected, rtol=1e-6, atol=1e-6)
    # the torch fast path normalises on the device to the same values, channels first
    fast = loaded.to_tensor(tiles).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)
    # a single tile, a leading batch shape, and a torch uint8 tensor work too
    assert preprocess(tiles[0]).shape == (TILE, TILE, 3)
    assert tuple(loaded.to_tensor(torch.from_numpy(tiles[0])).shape) == (1, 3, TILE, TILE)


def test_to_tensor_rejects_float_numpy(tmp_path, net, tiles):
    loaded = load_model(write_model_dir(tmp_path / "m", net), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        loaded.to_tensor(tiles.astype(np.float32))
    preprocessed = manual_preprocess(tiles)
    assert loaded.to_tensor(preprocessed) is preprocessed or torch.equal(
        loaded.to_tensor(preprocessed), preprocessed
    )


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix"])
def test_wrapped_state_dicts_load(tmp_path, net, tiles, wrap):
    model_dir = write_model_dir(tmp_path / "model", net)
    state = net.state_dict()
    if wrap == "module_prefix":  # nn.DataParallel checkpoints
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {wrap: state, "epoch": 7}
    torch.save(obj, model_dir / "weights.pt")
    loaded = load_model(model_dir, device="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.model(loaded.to_tensor(tiles)), net(manual_preprocess(tiles))
        )


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path, net):
    model_dir = write_model_dir(tmp_path / "model", net)
    state = dict(net.state_dict())
    del state["fc.bias"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, model_dir / "weights.pt")
    with pytest.raises(ModelError) as err:
        load_model(model_dir)
    message = str(err.value)
    assert "1 missing key(s): fc.bias" in message
    assert "1 unexpected key(s): head.extra" in message
    assert "demo_cnn" in message and str(model_dir / "weights.pt") in message


def test_shape_mismatch_is_a_model_error(tmp_path, net):
    # params says 2 classes, the weights have 3
    model_dir = write_model_dir(tmp_path / "model", net, class_names=("a", "b"))
    with pytest.raises(ModelError, match=r"size mismatch for fc\.weight.*num_classes"):
        load_model(model_dir)


def test_class_names_set_num_classes(tmp_path):
    torch.manual_seed(1)
    model_dir = write_model_dir(tmp_path / "m", demo_cnn(num_classes=5, width=8))
    ModelParams(tile_px=TILE, class_names=tuple("vwxyz"), architecture_kwargs={"width": 8}).to_json(
        model_dir / "params.json"
    )
    assert load_model(model_dir).model.fc.out_features == 5


def test_missing_paths_are_model_errors(tmp_path, net):
    with pytest.raises(ModelError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no params.json"):
        load_model(empty)
    model_dir = write_model_dir(tmp_path / "model", net, weights="best.pt")
    with pytest.raises(ModelError, match="'best.pt'.*not found"):
        load_model(model_dir)


def test_bad_architecture_is_a_model_error(tmp_path, net):
    model_dir = write_model_dir(tmp_path / "m", net, architecture="no_such_net")
    with pytest.raises(ModelError, match="'no_such_net' is neither"):
        load_model(model_dir)
    with pytest.raises(ModelError, match="unknown source 'keras'"):
        build_architecture("keras:resnet")
    with pytest.raises(ModelError, match=r"demo_cnn.*depth"):
        build_architecture("demo_cnn", {"depth": 3})


def test_architecture_lookup_order():
    tv = build_architecture("torchvision:resnet18", {"num_classes": 4})
    assert type(tv).__module__.startswith("torchvision") and tv.fc.out_features == 4
    assert type(build_architecture("resnet18")).__module__.startswith("torchvision")
    # resnet10t is only in timm
    timm_net = build_architecture("resnet10t", {"num_classes": 2})
    assert (
        type(timm_net).__module__.startswith("timm") and timm_net.get_classifier().out_features == 2
    )
    assert type(build_architecture("demo_cnn")).__name__ == "Sequential"


def test_torchscript_file_gives_final_output_only(tmp_path, net, tiles):
    ts_path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, TILE, TILE)), ts_path)
    assert is_torchscript(ts_path)
    loaded = load_model(ts_path, device="cpu")
    assert loaded.kind == "torchscript" and loaded.params_path is None
    assert loaded.params == ModelParams() and loaded.layer_names() == []
    with pytest.raises(LayerError, match="TorchScript.*final output only.*model directory"):
        Features(loaded)  # postconv by default
    with pytest.raises(LayerError, match="'block2'.*TorchScript"):
        Features(loaded, ["block2"])
    feats, preds = Features(loaded, ["output"])(tiles)
    with torch.inference_mode():
        # no params.json beside the file: ImageNet normalisation
        x = (tiles / 255.0 - np.array(ModelParams().mean)) / np.array(ModelParams().std)
        logits = net(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(feats, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6)


def test_torchscript_uses_params_json_beside_it(tmp_path, net):
    folder = write_model_dir(tmp_path / "ts", net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, TILE, TILE)), folder / "net.ts")
    loaded = load_model(folder / "net.ts")
    assert loaded.kind == "torchscript"
    assert loaded.params.mean == MEAN and loaded.class_names == ["a", "b", "c"]
    assert loaded.sha256() == hashlib.sha256((folder / "net.ts").read_bytes()).hexdigest()


def test_pickled_module_refused_unless_trusted(tmp_path, net, tiles):
    path = tmp_path / "whole_model.pt"
    torch.save(net, path)
    with pytest.raises(ModelError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "arbitrary code" in message
    assert "torch.nn.modules.container.Sequential" in message
    assert "trust_model_code=True" in message
    loaded = load_model(path, trust_model_code=True, device="cpu")
    assert loaded.kind == "pickled" and "fc" in loaded.layer_names()
    feats, _ = Features(loaded, ["postconv"])(tiles)
    assert feats.shape == (len(tiles), 32)


def test_pickled_weights_in_directory_refused(tmp_path, net):
    model_dir = write_model_dir(tmp_path / "m", net)
    torch.save(net, model_dir / "weights.pt")  # a whole module where a state dict belongs
    with pytest.raises(ModelError, match="arbitrary code"):
        load_model(model_dir)
    assert load_model(model_dir, trust_model_code=True).kind == "directory"


def test_bare_state_dict_file_needs_a_directory(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelError, match="no network.*params.json naming its architecture"):
        load_model(tmp_path / "weights.pt")


def test_corrupt_weights_are_a_model_error(tmp_path, net):
    model_dir = write_model_dir(tmp_path / "m", net)
    (model_dir / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        ModelError, match=r"cannot read weights file .*weights\.pt safely .*corrupt"
    ):
        load_model(model_dir)
    with pytest.raises(ModelError, match="cannot read weights file .*invalid load key"):
        load_model(model_dir, trust_model_code=True)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("keras_file", r"model\.keras is not a valid \.keras file"),
        ("h5_file", r"model\.h5 is not a readable HDF5 file"),
        ("tf_directory", r"weights\.pt: not a Keras model file"),
    ],
)
def test_broken_keras_models_are_model_errors(tmp_path, net, kind, message):
    # the Keras loader (tests/test_keras.py) is chosen by the path; these fail before
    # TensorFlow is imported
    if kind == "tf_directory":
        path = write_model_dir(tmp_path / "tf", net, backend="tensorflow")
    else:
        path = tmp_path / ("model.keras" if kind == "keras_file" else "model.h5")
        path.write_bytes(b"")
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_device_resolution():
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device(None) == (expected or "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_lazy_top_level_exports(tmp_path, net):
    import histoatlas

    model_dir = write_model_dir(tmp_path / "m", net)
    assert histoatlas.load_model(model_dir).kind == "directory"
    assert histoatlas.get_preprocess_fn(model_dir).mean.tolist() == pytest.approx(MEAN)
