"""Grad-CAM on encoders: the default layer gives a real map; the last block's output may not."""

from __future__ import annotations

import pytest
import torch

from histoatlas.backends.torch.encoders import (
    build_encoder,
    gradcam_target,
    layer_layout,
    to_grid,
    tokens_to_grid,
)
from histoatlas.errors import ModelError


def test_tokens_to_grid_drops_prefix_tokens_row_major():
    t = torch.randn(2, 5 + 3 * 4, 7)  # 5 prefix tokens, a 3 x 4 grid
    grid = tokens_to_grid(t, num_prefix_tokens=5, grid_size=(3, 4))
    assert grid.shape == (2, 7, 3, 4)
    assert torch.equal(grid[1, :, 2, 1], t[1, 5 + 2 * 4 + 1])
    assert tokens_to_grid(torch.randn(2, 21, 7), num_prefix_tokens=5).shape == (2, 7, 4, 4)
    with pytest.raises(ModelError, match="12 patch tokens .* do not fill a 3 x 3 grid"):
        tokens_to_grid(t, num_prefix_tokens=5, grid_size=(3, 3))


@pytest.mark.parametrize(
    ("name", "layer", "layout"),
    [
        ("uni2-h", "backbone.blocks.0.norm1", "tokens"),
        ("conch-v1", "backbone.trunk.blocks.0.norm1", "tokens"),
        ("ctranspath", "backbone.layers.3", "nhwc"),
        ("resnet50_trunc", "backbone.layer3", "nchw"),
    ],
)
def test_default_target_per_family(name, layer, layout):
    kwargs = {} if name in ("ctranspath", "resnet50_trunc") else {"depth": 1}
    model, _ = build_encoder({"architecture": name, "architecture_kwargs": kwargs},
                             device="meta")  # fmt: skip
    target = gradcam_target(model)
    assert (target.layer, target.layout) == (layer, layout)
    assert target.num_prefix_tokens == (9 if name == "uni2-h" else 1 if layout == "tokens" else 0)
    assert layer_layout(model, layer) == target  # any layer's layout, from its ancestors


def test_no_default_target_for_other_networks():
    from histoatlas.backends.torch.architectures import demo_cnn

    with pytest.raises(ModelError, match="no default Grad-CAM layer"):
        gradcam_target(demo_cnn())


def grad_cam(model, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Plain Grad-CAM on ``layer`` for a random linear read-out of the embedding."""
    target = gradcam_target(model)._replace(layer=layer)
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.update(act=o))
    try:
        out = model(x)
        act = store["act"]
        act.retain_grad()
        (
            out @ torch.randn(out.shape[1], generator=torch.Generator().manual_seed(0))
        ).sum().backward()
    finally:
        handle.remove()
    acts, grads = to_grid(act, target), to_grid(act.grad, target)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts).sum(1))


def test_last_block_output_gives_a_constant_map_for_cls_embeddings():
    torch.manual_seed(0)
    model, _ = build_encoder({"architecture": "uni", "architecture_kwargs": {"depth": 2}})
    x = torch.randn(1, 3, 224, 224)
    default = grad_cam(model, gradcam_target(model).layer, x)
    last_output = grad_cam(model, "backbone.blocks.1", x)
    assert default.std() > 0  # blocks.1.norm1: a map
    assert last_output.abs().max() == 0  # blocks.1 output: patch-token gradients are 0


def test_patch_mean_embeddings_reach_the_last_block_output():
    torch.manual_seed(0)
    model, _ = build_encoder({"architecture": "virchow2", "architecture_kwargs": {"depth": 2}})
    x = torch.randn(1, 3, 224, 224)
    assert grad_cam(model, "backbone.blocks.1", x).std() > 0
    assert grad_cam(model, gradcam_target(model).layer, x).std() > 0


def test_swin_stage_output_becomes_a_map():
    model, _ = build_encoder("ctranspath")
    target = gradcam_target(model)
    store = {}
    dict(model.named_modules())[target.layer].register_forward_hook(
        lambda m, i, o: store.update(act=o)
    )
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
    grid = to_grid(store["act"], target)
    assert grid.shape == (1, 768, 7, 7)
    # Swin's stages are channels-last: the map is a permutation, never a reshape
    assert torch.equal(grid, store["act"].permute(0, 3, 1, 2))
