"""Features: hooks, pooling, postconv, predictions, batching and prefetching."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from histoatlas.analysis.features import Features, resolve_batch_size
from histoatlas.backends import load_model
from histoatlas.backends.base import LoadedModel
from histoatlas.backends.params import ModelParams
from histoatlas.backends.torch.architectures import demo_cnn
from histoatlas.backends.torch.model import TorchModel
from histoatlas.errors import ConfigError, LayerError
from histoatlas.prefetch import prefetch

TILE = 32


def wrap(net, tile_px=TILE, **params) -> LoadedModel:
    """A LoadedModel around an in-memory network (as load_model would return)."""
    return TorchModel(
        model=net.eval(),
        backend="torch",
        params=ModelParams(tile_px=tile_px, **params),
        path="memory",
        device="cpu",
        kind="directory",
        weights_path="memory",
    )


def hooked(net, module, x, *, pre=False):
    """What a hand-written hook sees on ``module`` for input ``x``."""
    seen = {}
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: seen.update(v=args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.update(v=out))
    with torch.inference_mode():
        out = net(x)
    handle.remove()
    return seen["v"], out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return demo_cnn(num_classes=3, width=8).eval()


@pytest.fixture(scope="module")
def model(net):
    return wrap(net, class_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def tiles():
    return np.random.default_rng(1).integers(0, 256, (5, TILE, TILE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def x(model, tiles):
    return model.to_tensor(tiles)


@pytest.mark.parametrize(
    "pooling, reduce",
    [
        ("avg", lambda t: t.mean(dim=(2, 3))),
        ("max", lambda t: t.amax(dim=(2, 3))),
        (None, lambda t: t.flatten(1)),
    ],
)
def test_named_layer_equals_manual_hook(net, model, tiles, x, pooling, reduce):
    raw, _ = hooked(net, net.block2, x)
    assert raw.ndim == 4
    feats = Features(model, "block2", pooling=pooling, include_preds=False)(tiles)
    assert feats.dtype == np.float32 and feats.shape == (len(tiles), reduce(raw).shape[1])
    np.testing.assert_allclose(feats, reduce(raw).numpy(), rtol=1e-5, atol=1e-6)
    if pooling is None:
        assert feats.shape[1] == 16 * 8 * 8  # 2*width channels at TILE/4


def test_pooling_none_string_and_invalid(model):
    assert Features(model, "block4", pooling="none").pooling is None
    with pytest.raises(ConfigError, match="pooling 'mean'"):
        Features(model, pooling="mean")


def test_layer_order_and_slices(net, model, tiles, x):
    f = Features(model, ["block3", "postconv", "block1"], include_preds=False)
    feats = f(tiles)
    assert f.layer_slices == {"block3": (0, 32), "postconv": (32, 64), "block1": (64, 72)}
    assert f.num_features == feats.shape[1] == 72
    for layer, (start, stop) in f.layer_slices.items():
        alone = Features(model, [layer], include_preds=False)(tiles)
        np.testing.assert_allclose(feats[:, start:stop], alone, rtol=1e-6)
    block1, _ = hooked(net, net.block1, x)
    np.testing.assert_allclose(feats[:, 64:], block1.mean(dim=(2, 3)).numpy(), rtol=1e-5)


def test_postconv_is_input_of_fc_on_demo_cnn(net, model, tiles, x):
    fc_in, logits = hooked(net, net.fc, x, pre=True)
    feats, preds = Features(model)(tiles)
    np.testing.assert_allclose(feats, fc_in.numpy(), rtol=1e-5, atol=1e-6)
    # and it is the pooled block4 output, 4 * width wide
    with torch.inference_mode():
        pooled = net.flatten(net.pool(net.block4(net.block3(net.block2(net.block1(x))))))
    np.testing.assert_allclose(feats, pooled.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preds, logits.softmax(1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(preds.sum(1), 1.0, rtol=1e-5)


def test_postconv_on_torchvision_resnet(tiles):
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    model = wrap(resnet)
    fc_in, _ = hooked(resnet, resnet.fc, model.to_tensor(tiles), pre=True)
    feats, preds = Features(model)(tiles)
    assert feats.shape == (len(tiles), 512) and preds.shape == (len(tiles), 4)
    np.testing.assert_allclose(feats, fc_in.numpy(), rtol=1e-4, atol=1e-5)


def test_postconv_on_timm_resnet_uses_get_classifier(tiles):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    model = wrap(net, output="sigmoid")
    x = model.to_tensor(tiles)
    feats, preds = Features(model)(tiles)
    with torch.inference_mode():
        pre_logits = net.forward_head(net.forward_features(x), pre_logits=True)
        logits = net(x)
    np.testing.assert_allclose(feats, pre_logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds, logits.sigmoid().numpy(), rtol=1e-5, atol=1e-6)


def test_timm_vit_postconv_and_token_pooling(tiles):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=TILE, num_classes=3
    ).eval()
    model = wrap(vit, output="none")
    x = model.to_tensor(tiles)
    tokens, logits = hooked(vit, vit.blocks[11], x)
    assert tokens.shape == (len(tiles), 1 + (TILE // 16) ** 2, 192)
    with torch.inference_mode():
        pre_logits = vit.forward_head(vit.forward_features(x), pre_logits=True)
    patches = tokens[:, 1:]  # pooling skips the class token, as timm's global_pool does
    f = Features(model, ["postconv", "blocks.11"], pooling="max")
    feats, preds = f(tiles)
    assert f.layer_slices == {"postconv": (0, 192), "blocks.11": (192, 384)}
    np.testing.assert_allclose(feats[:, :192], pre_logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats[:, 192:], patches.amax(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds, logits.numpy(), rtol=1e-4, atol=1e-5)  # output: none
    avg = Features(model, ["blocks.11"], pooling="avg", include_preds=False)(tiles)
    np.testing.assert_allclose(avg, patches.mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(avg, tokens.mean(dim=1).numpy(), atol=1e-3)
    # recipes per layer: the class token and the patch mean of the same block
    both = Features(model, ["blocks.11:cls", "blocks.11:patch_mean"], include_preds=False)(tiles)
    np.testing.assert_allclose(both[:, :192], tokens[:, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both[:, 192:], avg, rtol=1e-5, atol=1e-6)


def test_unknown_layer_lists_valid_names(model):
    with pytest.raises(LayerError) as err:
        Features(model, ["block5"])
    message = str(err.value)
    assert message.startswith("layer 'block5' not in model; available: postconv, output, ")
    for name in ("block1", "block4", "pool", "fc", "block1.0"):
        assert name in message
    assert "did you mean 'block1'" in message or "did you mean 'block4'" in message


def test_unknown_layer_message_truncates_huge_models():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=TILE)
    with pytest.raises(LayerError) as err:
        Features(wrap(vit), ["blocks.99"])
    message = str(err.value)
    n_modules = len([n for n, _ in vit.named_modules() if n])
    assert f"({n_modules + 2 - 40} more; LoadedModel.layer_names())" in message
    # shallow names come first, so the overview shows the top-level modules
    assert "patch_embed, " in message and "blocks, " in message and "head" in message


def test_postconv_needs_a_classifier():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    with pytest.raises(
        LayerError,
        match=r"'postconv'.*no nn.Linear layer and its last convolution is not 1x1.*"
        r"its last layers: 0, 1; all: LoadedModel.layer_names\(\)",
    ):
        Features(wrap(net))
    feats = Features(wrap(net), ["output"], include_preds=False)(np.zeros((2, 8, 8, 3), np.uint8))
    assert feats.shape == (2, 4)  # (B, 4, 1, 1) output avg-pooled


def test_postconv_of_a_convolutional_classifier_is_its_input():
    # SqueezeNet's head: a 1x1 convolution to the classes, then global pooling
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 2, 1),
        torch.nn.AdaptiveAvgPool2d(1),
    )
    tiles = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    feats = Features(wrap(net), ["postconv", "1"], include_preds=False)(tiles)
    assert feats.shape == (2, 12)  # the ReLU's 6 channels, avg-pooled, twice
    np.testing.assert_array_equal(feats[:, :6], feats[:, 6:])


def test_unused_layer_is_reported():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(3, 2)
            self.unused = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x.mean(dim=(2, 3)))

    with pytest.raises(LayerError, match="'unused' did not run"):
        Features(wrap(Net()), ["unused"])(np.zeros((1, 4, 4, 3), np.uint8))


def test_predictions_and_include_preds_false(model, tiles):
    feats = Features(model, include_preds=False)(tiles)
    assert isinstance(feats, np.ndarray) and feats.shape == (5, 32)
    feats2, preds = Features(model, include_preds=True)(tiles)
    np.testing.assert_array_equal(feats, feats2)
    assert preds.dtype == np.float32 and preds.shape == (5, 3)


def test_batches_are_split_and_inputs_agree(model, tiles, x):
    whole = Features(model, batch_size=32)(tiles)
    split = Features(model, batch_size=2)(tiles)
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split[1], whole[1], rtol=1e-5, atol=1e-7)
    from_torch_uint8 = Features(model)(torch.from_numpy(tiles))
    from_preprocessed = Features(model)(x)
    np.testing.assert_allclose(from_torch_uint8[0], whole[0], rtol=1e-6)
    np.testing.assert_allclose(from_preprocessed[0], whole[0], rtol=1e-6)


def test_empty_batch_gives_zero_rows(model):
    feats, preds = Features(model, ["block1", "postconv"])(np.zeros((0, TILE, TILE, 3), np.uint8))
    assert feats.shape == (0, 8 + 32) and preds.shape == (0, 3)
    assert feats.dtype == preds.dtype == np.float32


def test_sizes_known_before_any_call(model):
    f = Features(model, ["block2", "output"])
    assert f.num_features == 16 + 3 and f.num_classes == 3
    assert f.layer_slices == {"block2": (0, 16), "output": (16, 19)}


def test_batch_size_defaults(model):
    assert Features(model).batch_size == 32  # CPU
    assert resolve_batch_size(None, "cuda:0") == 128
    assert resolve_batch_size(None, "mps") == 64
    assert Features(model, batch_size=3).batch_size == 3
    with pytest.raises(ConfigError, match="batch_size must be at least 1, got 0"):
        resolve_batch_size(0, "cpu")


def test_layer_list_checks(model):
    with pytest.raises(ConfigError, match="layers is empty"):
        Features(model, [])
    with pytest.raises(ConfigError, match=r"repeat \['fc'\]"):
        Features(model, ["fc", "postconv", "fc"])


def test_hooks_are_removed_after_each_pass(net, model, tiles):
    f = Features(model, ["block1", "postconv"])
    f(tiles)
    modules = [net.block1, net.fc]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_model_path_is_loaded(tmp_path, net, tiles):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    torch.save(net.state_dict(), model_dir / "weights.pt")
    ModelParams(
        tile_px=TILE, class_names=("a", "b", "c"), architecture_kwargs={"width": 8}
    ).to_json(model_dir / "params.json")
    f = Features(model_dir, device="cpu")
    assert f.model.kind == "directory" and f.model.device == "cpu"
    expected = Features(wrap(net, class_names=("a", "b", "c")))(tiles)
    np.testing.assert_allclose(f(tiles)[0], expected[0], rtol=1e-6)
    assert isinstance(load_model(model_dir), LoadedModel)


def test_prefetch_keeps_order_and_reads_ahead():
    produced = []

    def source():
        for k in range(6):
            produced.append(k)
            yield k

    seen = []
    for item in prefetch(source(), depth=2):
        seen.append(item)
    assert seen == list(range(6)) == produced
    assert list(prefetch(iter(range(3)), depth=0)) == [0, 1, 2]


def test_prefetch_raises_source_errors():
    def source():
        yield 1
        raise ValueError("tile (3, 4) unreadable")

    it = prefetch(source())
    assert next(it) == 1
    with pytest.raises(ValueError, match=r"tile \(3, 4\) unreadable"):
        next(it)


def test_prefetch_closes_source_when_consumer_stops():
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.wait(5), "the source generator was not closed"
