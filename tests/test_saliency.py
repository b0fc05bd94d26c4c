"""Saliency maps: values against saliency.core and attribution theory, plots, the writer."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import saliency.core as sc
import torch

from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.errors import ConfigError, EmptyDatasetError, LayerError, ModelError
from histoatlas.runtime import patch_guided_ig_quantile
from histoatlas.saliency import (
    METHODS,
    SaliencyMap,
    comparison,
    inferno,
    overlay,
    overview,
    write_saliency_maps,
)

nn = torch.nn


# -- small models --------------------------------------------------------------------------


def smooth_net(seed: int = 0):
    """Conv -> softplus -> mean -> linear: smooth, so IG's Riemann sum converges fast."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


class TopLeftNet(nn.Module):
    """Sees only the top-left quadrant of its input (the rest is multiplied by zero)."""

    def __init__(self, size: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        mask = torch.zeros(1, 1, size, size)
        mask[..., : size // 2, : size // 2] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():  # positive class weights: Grad-CAM's channel weights are > 0
            self.fc.weight.abs_()
        self.eval()

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x * self.mask))).flatten(1))


def reference_fn(net, class_idx: int, layer=None):
    """A call_model_function written independently of histoatlas's backend."""

    def fn(x_batch, call_model_args=None, expected_keys=None):
        x = torch.tensor(np.asarray(x_batch, np.float32)).permute(0, 3, 1, 2)
        x.requires_grad_(True)
        feats = {}
        handle = None
        if sc.CONVOLUTION_LAYER_VALUES in expected_keys:
            handle = layer.register_forward_hook(lambda m, i, o: feats.update(a=o))
        out = net(x)[:, class_idx].sum()
        if handle is not None:
            handle.remove()
            (grad,) = torch.autograd.grad(out, feats["a"])
            return {
                sc.CONVOLUTION_LAYER_VALUES: feats["a"].detach().permute(0, 2, 3, 1).numpy(),
                sc.CONVOLUTION_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy(),
            }
        (grad,) = torch.autograd.grad(out, x)
        return {sc.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    return fn


def image(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return demo_cnn(num_classes=3, width=4).eval()


# -- attribution theory ----------------------------------------------------------------------


def test_integrated_gradients_complete():
    net, img = smooth_net(), image(16)
    mask = SaliencyMap(net, 2).integrated_gradients(img, x_steps=200, batch_size=50)
    with torch.no_grad():
        fx = net(torch.tensor(img).permute(2, 0, 1)[None])[0, 2].item()
        f0 = net(torch.zeros(1, 3, 16, 16))[0, 2].item()
    assert mask.shape == (16, 16) and mask.dtype == np.float32
    assert abs(f0 - fx) > 1e-3  # the test would be vacuous otherwise
    assert mask.sum() == pytest.approx(fx - f0, rel=0.03)


def test_integrated_gradients_baseline_argument():
    net, img = smooth_net(), image(16)
    base = np.full_like(img, 0.5)
    mask = SaliencyMap(net, 0).integrated_gradients(img, x_steps=200, baseline=0.5)
    with torch.no_grad():
        fx = net(torch.tensor(img).permute(2, 0, 1)[None])[0, 0].item()
        fb = net(torch.tensor(base).permute(2, 0, 1)[None])[0, 0].item()
    assert mask.sum() == pytest.approx(fx - fb, rel=0.03)


@pytest.mark.parametrize("method", ["vanilla", "integrated_gradients", "gradcam"])
def test_attribution_stays_in_the_quadrant_the_model_sees(method):
    net, img = TopLeftNet(), image(32, seed=1)
    mask = np.abs(SaliencyMap(net, 1).compute(method, img))
    assert mask.shape == (32, 32)
    assert mask.sum() > 0
    assert mask[:16, :16].sum() / mask.sum() > 0.9


def test_gradcam_default_layer_is_last_spatial_feature_map(cnn):
    assert SaliencyMap(TopLeftNet(), 0).backend.resolve_layer(None, image(32)) == "relu"
    assert SaliencyMap(cnn, 0).backend.resolve_layer(None, image(32)) == "block4"


# -- each method equals a direct saliency.core call ------------------------------------------


def _direct(method, net, img, class_idx):
    fn = reference_fn(net, class_idx, layer=net.block4)
    zeros = np.zeros_like(img)
    if method == "vanilla":
        return sc.GradientSaliency().GetMask(img, fn, None).sum(-1)
    if method == "integrated_gradients":
        return (
            sc.IntegratedGradients()
            .GetMask(img, fn, None, zeros, x_steps=25, batch_size=20)
            .sum(-1)
        )
    if method == "guided_integrated_gradients":
        return (
            sc.GuidedIG()
            .GetMask(img, fn, None, zeros, x_steps=25, fraction=0.5, max_dist=1.0)
            .sum(-1)
        )
    if method == "blur_integrated_gradients":
        return sc.BlurIG().GetMask(img, fn, None, batch_size=20).sum(-1)
    if method == "xrai":
        return sc.XRAI().GetMask(img, fn, None, batch_size=20)
    if method == "gradcam":  # at the layer's resolution, then upsampled as saliency.core does
        from skimage.transform import resize

        cam = sc.GradCam().GetMask(img, fn, None, should_resize=False, three_dims=False)
        return resize(cam, img.shape[:2])
    raise AssertionError(method)


@pytest.mark.parametrize("method", METHODS)
def test_method_matches_saliency_core(cnn, method):
    img = image(32, seed=2)
    ours = SaliencyMap(cnn, 1).compute(method, img)
    theirs = _direct(method, cnn, img, 1)
    assert ours.shape == (32, 32) and ours.dtype == np.float32
    assert np.isfinite(ours).all() and np.abs(ours).max() > 0
    if method == "gradcam":  # saliency.core's own resize also divides by the maximum
        fn = reference_fn(cnn, 1, layer=cnn.block4)
        scaled = sc.GradCam().GetMask(img, fn, None, should_resize=True, three_dims=False)
        np.testing.assert_allclose(ours / ours.max(), scaled / scaled.max(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())


def test_all_returns_every_method_in_order(cnn):
    img = image(32, seed=3)
    sm = SaliencyMap(cnn, 0)
    params = {"integrated_gradients": {"x_steps": 5}, "xrai": {"steps": 5, "fast": True}}
    masks = sm.all(img, params=params)
    assert list(masks) == list(METHODS)
    assert all(m.shape == (32, 32) for m in masks.values())
    np.testing.assert_allclose(
        masks["integrated_gradients"], sm.integrated_gradients(img, x_steps=5), rtol=1e-6
    )
    subset = sm.all(img, methods=["gradcam", "vanilla"])
    assert list(subset) == ["gradcam", "vanilla"]


def test_unknown_method_or_option_is_a_config_error(cnn):
    sm = SaliencyMap(cnn, 0)
    with pytest.raises(ConfigError, match="'occlusion'.*vanilla"):
        sm.compute("occlusion", image(32))
    with pytest.raises(ConfigError, match="'steps'.*x_steps"):
        sm.all(
            image(32),
            methods=["integrated_gradients"],
            params={"integrated_gradients": {"steps": 3}},
        )


# -- SmoothGrad and Guided IG ----------------------------------------------------------------


def test_smoothgrad_equals_get_smoothed_mask(cnn):
    img = image(32, seed=4)
    state = np.random.get_state()  # noqa: NPY002
    ours = SaliencyMap(cnn, 2).vanilla(img, smooth={"nsamples": 5, "seed": 3})
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002  (left alone)
    np.random.seed(3)  # noqa: NPY002
    theirs = sc.GradientSaliency().GetSmoothedMask(
        img, reference_fn(cnn, 2), None, stdev_spread=0.15, nsamples=5, magnitude=False
    )
    np.random.set_state(state)  # noqa: NPY002
    np.testing.assert_allclose(ours, theirs.sum(-1), rtol=1e-4, atol=1e-8)
    assert not np.allclose(ours, SaliencyMap(cnn, 2).vanilla(img))
    squared = SaliencyMap(cnn, 2).vanilla(img, smooth={"nsamples": 3, "magnitude": True})
    assert (squared >= 0).all() and squared.max() > 0


@pytest.mark.parametrize("method", ["integrated_gradients", "gradcam", "xrai"])
def test_smooth_averages_maps_of_noisy_copies(cnn, method):
    """Also for Grad-CAM and XRAI, whose masks GetSmoothedMask cannot sum (not input-shaped)."""
    kwargs = {"steps": 5, "fast": True} if method == "xrai" else {}
    img = image(32, seed=5)
    sm = SaliencyMap(cnn, 0)
    mask = sm.compute(method, img, smooth={"nsamples": 2, "seed": 7}, **kwargs)
    rng = np.random.RandomState(7)  # the stream GetSmoothedMask draws after np.random.seed(7)
    stdev = 0.15 * (img.max() - img.min())
    noisy = [img + rng.normal(0, stdev, img.shape) for _ in range(2)]
    expected = np.mean([sm.compute(method, x.astype(np.float32), **kwargs) for x in noisy], 0)
    assert mask.shape == (32, 32)
    np.testing.assert_allclose(mask, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_smooth_unknown_option(cnn):
    with pytest.raises(ConfigError, match="'samples'"):
        SaliencyMap(cnn, 0).vanilla(image(32), smooth={"samples": 3})


def test_guided_ig_survives_numpy_without_quantile_interpolation(cnn, monkeypatch):
    """NumPy 2.4 removed quantile(interpolation=); saliency 0.2.1's Guided IG passes it."""
    from saliency.core import guided_ig

    real_quantile = np.quantile

    def strict_quantile(a, q, *args, **kwargs):
        if "interpolation" in kwargs:
            raise TypeError("quantile() got an unexpected keyword argument 'interpolation'")
        return real_quantile(a, q, *args, **kwargs)

    monkeypatch.setattr(np, "quantile", strict_quantile)
    img = image(32, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        mask = SaliencyMap(cnn, 1).guided_integrated_gradients(img, x_steps=10)
    assert mask.shape == (32, 32) and np.isfinite(mask).all() and np.abs(mask).max() > 0
    # the simulated NumPy does break the unpatched module
    monkeypatch.setattr(guided_ig, "np", np)
    with pytest.raises(TypeError, match="interpolation"):
        sc.GuidedIG().GetMask(img, reference_fn(cnn, 1), None, x_steps=2)
    monkeypatch.undo()
    patch_guided_ig_quantile()
    assert guided_ig.np.quantile(np.arange(5.0), 0.5, interpolation="lower") == 2.0


# -- errors --------------------------------------------------------------------------------


def test_class_index_out_of_range(cnn):
    with pytest.raises(ModelError, match=r"class_idx 3 .*3 output class"):
        SaliencyMap(cnn, 3).vanilla(image(32))
    with pytest.raises(ModelError, match="class_idx -1"):
        SaliencyMap(cnn, -1).integrated_gradients(image(32), x_steps=2)
    with pytest.raises(ModelError, match="integer or a class name"):
        SaliencyMap(cnn, 1.5)


def test_gradcam_layer_errors(cnn):
    img = image(32)
    block3 = SaliencyMap(cnn, 0).gradcam(img, layer="block3")
    assert block3.shape == (32, 32)
    assert not np.allclose(block3, SaliencyMap(cnn, 0).gradcam(img))
    with pytest.raises(LayerError, match=r"'conv9' not in model; available: block1, block1\.0"):
        SaliencyMap(cnn, 0).gradcam(img, layer="conv9")
    with pytest.raises(LayerError, match=r"feature map.*'flatten' returns \(1, 16\)"):
        SaliencyMap(cnn, 0).gradcam(img, layer="flatten")


def test_frozen_weights_still_give_gradcam():
    net = TopLeftNet().requires_grad_(False)
    img = image(32, seed=8)
    cam = SaliencyMap(net, 1).gradcam(img)
    np.testing.assert_allclose(cam, SaliencyMap(TopLeftNet(), 1).gradcam(img), rtol=1e-5)
    assert cam.max() > 0


def test_torchscript_gives_gradients_but_not_gradcam(cnn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cnn, torch.zeros(1, 3, 32, 32))
    img = image(32, seed=7)
    np.testing.assert_allclose(
        SaliencyMap(traced, 0).vanilla(img), SaliencyMap(cnn, 0).vanilla(img), rtol=1e-4
    )
    with pytest.raises(ModelError, match="TorchScript"):
        SaliencyMap(traced, 0).gradcam(img)


def test_input_must_be_preprocessed(cnn):
    with pytest.raises(ValueError, match="preprocessed"):
        SaliencyMap(cnn, 0).vanilla(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ModelError, match="torch.nn.Module"):
        SaliencyMap(lambda x: x, 0)
    other = SimpleNamespace(backend="caffe", model=object(), path="m.caffemodel")
    with pytest.raises(ModelError, match="cannot use a SimpleNamespace as a model"):
        SaliencyMap(other, 0)


# -- a loaded model directory ----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(1)
    net = demo_cnn(num_classes=2, width=4)
    torch.save(net.state_dict(), folder / "weights.pt")
    params = {
        "architecture": "demo_cnn",
        "architecture_kwargs": {"num_classes": 2, "width": 4},
        "tile_px": 32,
        "tile_um": 32,
        "class_names": ["tumor", "stroma"],
    }
    (folder / "params.json").write_text(json.dumps(params))
    return folder


def test_loaded_model_class_names_and_range(model_dir):
    from histoatlas import load_model

    model = load_model(model_dir, device="cpu")
    img = model.preprocess(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    by_name = SaliencyMap(model, "stroma")
    assert by_name.class_idx == 1
    np.testing.assert_allclose(by_name.vanilla(img), SaliencyMap(model.model, 1).vanilla(img))
    with pytest.raises(ModelError, match=r"class_idx 2 .*2 output class"):
        SaliencyMap(model, 2)  # known from class_names before any forward pass
    with pytest.raises(ModelError, match="'normal' not among.*tumor, stroma"):
        SaliencyMap(model, "normal")


# -- plots ---------------------------------------------------------------------------------


def test_inferno_normalises_magnitude():
    from matplotlib import colormaps

    mask = np.zeros((8, 12))
    mask[2, 3] = -5.0
    mask[4, 4] = 1.0
    heat = inferno(mask, percentile=100)
    cmap = colormaps["inferno"]
    assert heat.shape == (8, 12, 3) and heat.dtype == np.uint8
    assert tuple(heat[2, 3]) == tuple(cmap(1.0, bytes=True)[:3])  # |-5| is the maximum
    assert tuple(heat[4, 4]) == tuple(cmap(0.2, bytes=True)[:3])
    assert tuple(heat[0, 0]) == tuple(cmap(0.0, bytes=True)[:3])
    np.testing.assert_array_equal(inferno(-mask), inferno(mask))
    assert (inferno(np.zeros((4, 4))) == cmap(0.0, bytes=True)[:3]).all()


def test_overlay_blends():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (16, 20, 3), np.uint8)
    mask = rng.normal(size=(16, 20))
    assert overlay(tile, mask).shape == (16, 20, 3) and overlay(tile, mask).dtype == np.uint8
    np.testing.assert_array_equal(overlay(tile, mask, alpha=0.0), tile)
    np.testing.assert_array_equal(overlay(tile, mask, alpha=1.0), inferno(mask))
    half = overlay(tile, mask, alpha=0.5).astype(int)
    assert np.abs(half - (tile.astype(int) + inferno(mask)) / 2).max() <= 1
    with pytest.raises(ValueError, match="differ in size"):
        overlay(tile, mask[:8])


def test_comparison_and_overview_layout(tmp_path):
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (24, 24, 3), np.uint8)
    masks = {m: rng.normal(size=(24, 24)) for m in ("vanilla", "xrai", "gradcam")}
    fig = comparison(tile, masks, title="t")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (1, 4)
    rows = [(tile, masks)] * 3
    fig = overview(rows, labels=["a", "b", "c"])
    assert len(fig.axes) == 3 * 4
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (3, 4)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["tile", "vanilla", "xrai", "gradcam"]
    fig.savefig(tmp_path / "o.png", dpi=50)
    from PIL import Image

    width, height = Image.open(tmp_path / "o.png").size
    assert (width, height) == (4 * 2 * 50, 3 * 2 * 50)


# -- the workflow's writer -----------------------------------------------------------------


def _tiles_csv(slide, rows):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "slide": "s1",
                "tile": k,
                "x": x,
                "y": y,
                "class_idx": c,
                "class_name": ["tumor", "stroma"][c],
                "probability": 0.9,
                "path": str(slide.path),
                "mpp": float("nan"),
                "tile_px": 32,
                "tile_um": 64.0,
                "name": f"s1_{x}_{y}_{['tumor', 'stroma'][c]}",
            }
            for k, (x, y, c) in enumerate(rows)
        ]
    )


def test_write_saliency_maps(tmp_path, synthetic_slide, model_dir):
    import pandas as pd
    from PIL import Image

    from histoatlas import WSI, load_model

    slide = synthetic_slide()
    model = load_model(model_dir, device="cpu")
    tiles = _tiles_csv(slide, [(256, 256, 0), (1280, 896, 1)])
    maps_dir = tmp_path / "saliency" / "maps"
    (maps_dir / "stale").mkdir(parents=True)
    methods = ["vanilla", "gradcam"]
    table = write_saliency_maps(
        tiles,
        model,
        maps_dir=maps_dir,
        manifest=tmp_path / "saliency" / "maps.csv",
        overview_png=tmp_path / "saliency" / "overview.png",
        methods=methods,
    )
    assert sorted(p.name for p in maps_dir.iterdir()) == sorted(tiles["name"])
    assert sorted(p.name for p in (maps_dir / "s1_256_256_tumor").iterdir()) == [
        "gradcam.npy",
        "gradcam.png",
        "gradcam_overlay.png",
        "vanilla.npy",
        "vanilla.png",
        "vanilla_overlay.png",
    ]
    assert not list(tmp_path.glob("saliency/.*partial*"))
    manifest = pd.read_csv(tmp_path / "saliency" / "maps.csv")
    assert len(manifest) == len(table) == 4
    assert list(manifest["method"]) == methods * 2
    for col in ("npy", "png", "overlay"):
        assert all(pd.Series(manifest[col]).map(lambda p: __import__("os").path.exists(p)))

    tile = WSI(slide.path, 32, 64.0).read_tile(1280, 896)
    expected = SaliencyMap(model, 1).vanilla(model.preprocess(tile))
    got = np.load(maps_dir / "s1_1280_896_stroma" / "vanilla.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert Image.open(maps_dir / "s1_1280_896_stroma" / "vanilla_overlay.png").size == (32, 32)
    width, height = Image.open(tmp_path / "saliency" / "overview.png").size
    assert (width, height) == (3 * 200, 2 * 200)  # 2 rows x (tile + 2 methods), 2 in @ 100 dpi


def test_write_saliency_maps_atomic_on_failure(tmp_path, model_dir):
    import pandas as pd

    from histoatlas import load_model

    model = load_model(model_dir, device="cpu")
    tiles = pd.DataFrame(
        {
            "name": ["a", "b"],
            "slide": ["s", "s"],
            "x": [0, 32],
            "y": [0, 0],
            "class_idx": [0, 0],
            "class_name": ["tumor", "tumor"],
            "probability": [0.5, 0.5],
        }
    )
    calls = []

    def read_tile(row):
        calls.append(row.name)
        if row.name == "b":
            raise OSError("disk gone")
        return np.full((32, 32, 3), 128, np.uint8)

    out = tmp_path / "maps"
    with pytest.raises(OSError, match="disk gone"):
        write_saliency_maps(
            tiles,
            model,
            maps_dir=out,
            manifest=tmp_path / "maps.csv",
            overview_png=tmp_path / "o.png",
            methods=["vanilla"],
            read_tile=read_tile,
        )
    assert calls == ["a", "b"]
    assert list(tmp_path.iterdir()) == []  # no maps dir, no partial dir, no manifest


def test_write_saliency_maps_checks_inputs(tmp_path, model_dir):
    import pandas as pd

    from histoatlas import load_model

    model = load_model(model_dir, device="cpu")
    tiles = _tiles_csv(type("S", (), {"path": "x.tiff"}), [(0, 0, 0)])
    kwargs = dict(
        maps_dir=tmp_path / "m", manifest=tmp_path / "m.csv", overview_png=tmp_path / "o.png"
    )
    with pytest.raises(EmptyDatasetError):
        write_saliency_maps(tiles.iloc[:0], model, **kwargs)
    wrong = tiles.assign(class_name="normal")
    with pytest.raises(ModelError, match="'normal' as index 0.*'tumor'.*another model"):
        write_saliency_maps(wrong, model, **kwargs)
    with pytest.raises(ConfigError, match="'lime'"):
        write_saliency_maps(tiles, model, methods=["lime"], **kwargs)
    twice = pd.concat([tiles, tiles], ignore_index=True)
    with pytest.raises(ConfigError, match=r"\['s1_0_0_tumor'\] more than once"):
        write_saliency_maps(twice, model, **kwargs)
    assert not (tmp_path / "m").exists()


def test_saliency_maps_script(tmp_path, synthetic_slide, model_dir):
    """The rule's entry script, called as Snakemake would call it."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "saliency_maps.py"
    spec = importlib.util.spec_from_file_location("saliency_maps", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _tiles_csv(synthetic_slide(), [(256, 256, 1)]).to_csv(tmp_path / "tiles.csv", index=False)
    out = tmp_path / "saliency"
    smk = SimpleNamespace(
        input=SimpleNamespace(tiles=str(tmp_path / "tiles.csv"), model=[]),
        output=SimpleNamespace(
            maps=str(out / "maps"),
            manifest=str(out / "maps.csv"),
            overview=str(out / "overview.png"),
        ),
        params=SimpleNamespace(
            model=str(model_dir),
            trust_model_code=False,
            methods=["integrated_gradients"],
            method_params={"integrated_gradients": {"x_steps": 4}},
            smooth=False,
        ),
        log=[str(tmp_path / "saliency_maps.log")],
    )
    script.main(smk)
    manifest = pd.read_csv(out / "maps.csv")
    assert manifest[["name", "method"]].values.tolist() == [
        ["s1_256_256_stroma", "integrated_gradients"]
    ]
    assert Path(manifest.npy[0]).is_file() and (out / "overview.png").is_file()
    assert (
        "s1_256_256_stroma: integrated_gradients in" in (tmp_path / "saliency_maps.log").read_text()
    )
