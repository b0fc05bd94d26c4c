"""Encoders, piece by piece: presets, class names, recipes, checkpoint options, errors."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from histoatlas.backends.torch.checkpoints import (
    drop_ignored,
    is_safetensors,
    load_strict,
    read_weights,
    select_state_dict,
)
from histoatlas.backends.torch.classes import resolve_architecture_kwargs
from histoatlas.backends.torch.encoders import (
    PRESETS,
    build_encoder,
    embed,
    eval_transform,
    get_preset,
    list_presets,
    parse_layer_selector,
    pool_tokens,
    presets_markdown,
    resolve_spec,
)
from histoatlas.errors import ConfigError, ModelError

# -------------------------------------------------------------------------- presets


def test_list_presets_names_every_model_and_its_file():
    rows = {row["preset"]: row for row in list_presets()}
    assert list(rows) == list(PRESETS) and len(rows) == 14
    assert rows["uni2-h"]["weights_file"] == "pytorch_model.bin"
    assert rows["conch-v1.5"]["weights_file"] == "pytorch_model_vision.bin"
    assert rows["phikon-v2"]["weights_file"] == "model.safetensors"
    assert {n: rows[n]["dim"] for n in ("virchow2", "conch-v1", "ctranspath")} == {
        "virchow2": 2560,
        "conch-v1": 512,
        "ctranspath": 768,
    }
    table = presets_markdown().splitlines()
    assert len(table) == 2 + 14 and table[2].startswith("| `uni` |")


def test_preset_tiling_and_lookup():
    assert get_preset("UNI2_H").name == "uni2-h"
    assert get_preset("uni").tile_um == 128  # 256 px at 0.5 um/px, resized to 224
    assert get_preset("ctranspath").tile_um == 256  # 256 px at 10x
    assert get_preset("gigapath").center_crop and not get_preset("virchow").center_crop
    with pytest.raises(ConfigError, match="presets: uni, uni2-h"):
        get_preset("uni3")
    for preset in PRESETS.values():
        json.dumps(dict(preset.kwargs))  # params.json-able
        resolve_architecture_kwargs(preset.kwargs)


@pytest.mark.parametrize(
    ("name", "size", "trident"),
    [
        # TRIDENT's transforms, as its loaders write them
        ("uni", 256, lambda T: [T.Resize(224), T.CenterCrop(224)]),
        (
            "gigapath",
            256,
            lambda T: [T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224)],
        ),
        ("virchow", 224, lambda T: [T.Resize(224, interpolation=T.InterpolationMode.BICUBIC)]),
        (
            "conch-v1",
            512,
            lambda T: [T.Resize(448, T.InterpolationMode.BICUBIC), T.CenterCrop(448)],
        ),
    ],
)
def test_eval_transform_is_the_reference_tools(name, size, trident):
    from torchvision import transforms as T

    preset = get_preset(name)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    steps = trident(T) + [T.ToTensor(), T.Normalize(preset.mean, preset.std)]
    want = T.Compose(steps)(image)
    got = eval_transform(name)(image)
    assert got.shape == (3, preset.input_px, preset.input_px)
    assert torch.equal(got, want)


# ---------------------------------------------------------------------- class names


def test_class_names_resolve_to_classes():
    out = resolve_architecture_kwargs(
        {"mlp_layer": "SwiGLUPacked", "act_layer": "torch.nn.SiLU", "depth": 2, "x": "silu"}
    )
    assert out["mlp_layer"] is timm.layers.SwiGLUPacked and out["act_layer"] is nn.SiLU
    assert out["depth"] == 2 and out["x"] == "silu"  # only class arguments are resolved
    norm = resolve_architecture_kwargs({"norm_layer": {"name": "layernorm", "eps": 1e-12}})
    assert isinstance(norm["norm_layer"], functools.partial)
    assert norm["norm_layer"](8).eps == 1e-12


def test_unknown_class_name_lists_the_valid_ones():
    with pytest.raises(
        ModelError, match="'mlp_layer': unknown class 'swiglu_packed'.*swiglupacked"
    ):
        resolve_architecture_kwargs({"mlp_layer": "swiglu_packed"})
    with pytest.raises(ModelError, match="needs a 'name'"):
        resolve_architecture_kwargs({"norm_layer": {"eps": 1e-6}})


def test_class_names_build_what_the_issue_could_not():
    """``"mlp_layer": "swiglupacked"`` failed with "'str' object is not callable"."""
    from histoatlas.backends.torch.architectures import build_architecture

    kwargs = {"depth": 1, "num_classes": 0, "mlp_layer": "swiglupacked", "act_layer": "silu"}
    vit = build_architecture("timm:vit_small_patch16_224", kwargs)
    assert isinstance(vit.blocks[0].mlp, timm.layers.GluMlp)  # SwiGLUPacked is a partial
    assert isinstance(vit.blocks[0].mlp.act, nn.SiLU)
    model, info = build_encoder({"architecture": "timm:vit_small_patch16_224",
                                 "architecture_kwargs": kwargs})  # fmt: skip
    assert model.__class__ is vit.__class__ and not info.spec.wrap  # no preset, no recipe
    wrapped, info = build_encoder({"architecture": "timm:vit_small_patch16_224",
                                   "architecture_kwargs": kwargs, "embedding": "cls"})  # fmt: skip
    assert info.spec.wrap and isinstance(wrapped.backbone.blocks[0].mlp, timm.layers.GluMlp)


# -------------------------------------------------------------------------- recipes


def tokens() -> torch.Tensor:
    """CLS 100, four registers 1000, four patches 1..4 (D = 1); batch of 2."""
    t = torch.tensor([100.0] + [1000.0] * 4 + [1.0, 2.0, 3.0, 4.0]).reshape(1, 9, 1)
    return torch.cat([t, 2 * t])


def test_recipes_skip_prefix_tokens():
    t = tokens()
    assert embed(t, "cls", num_prefix_tokens=5).flatten().tolist() == [100.0, 200.0]
    assert embed(t, "patch_mean", num_prefix_tokens=5).flatten().tolist() == [2.5, 5.0]
    assert embed(t, "cls+patch_mean", num_prefix_tokens=5).tolist() == [[100, 2.5], [200, 5]]
    assert embed(t, "avg", num_prefix_tokens=5).flatten().tolist() == [2.5, 5.0]
    assert embed(t, "max", num_prefix_tokens=5).flatten().tolist() == [4.0, 8.0]  # not 1000
    # counting only the class token as prefix mixes the registers in: the bug avoided
    assert embed(t, "patch_mean", num_prefix_tokens=1).flatten()[0] == pytest.approx(501.25)


def test_recipes_on_maps_and_pooled_outputs():
    maps = torch.arange(2 * 3 * 4.0).reshape(1, 2, 3, 4)
    assert embed(maps, "avg").tolist() == [[5.5, 17.5]]
    assert embed(maps, "max").tolist() == [[11.0, 23.0]]
    pooled = torch.ones(2, 5)
    assert embed(pooled, "avg") is pooled
    with pytest.raises(ConfigError, match="needs tokens"):
        embed(maps, "cls")
    with pytest.raises(ConfigError, match="needs num_prefix_tokens"):
        embed(tokens(), "patch_mean")
    with pytest.raises(ConfigError, match="without a class token"):
        embed(tokens(), "cls", num_prefix_tokens=0)
    with pytest.raises(ConfigError, match="valid recipes: cls, patch_mean, cls\\+patch_mean"):
        embed(tokens(), "mean", num_prefix_tokens=1)


def test_pool_tokens_is_timms_avg():
    vit = timm.create_model("vit_small_patch16_224", depth=1, reg_tokens=4, global_pool="avg",
                            num_classes=0).eval()  # fmt: skip
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        t = vit.forward_features(x)
        pooled = pool_tokens(t, "avg", num_prefix_tokens=vit.num_prefix_tokens)
        want = vit.fc_norm(vit.forward_features(x)[:, vit.num_prefix_tokens :].mean(1))
        got = vit.fc_norm(pooled)
    torch.testing.assert_close(got, want)
    assert torch.equal(vit(x), want)  # timm's global_pool='avg' skips the 5 prefix tokens
    assert pool_tokens(t.bfloat16(), None).dtype == torch.float32
    assert pool_tokens(t, None).shape == (2, t.shape[1] * t.shape[2])


@pytest.mark.parametrize(
    ("text", "layer", "recipe"),
    [
        ("blocks.11:cls", "blocks.11", "cls"),
        ("norm:patch_mean", "norm", "patch_mean"),
        ("backbone.blocks.0: CLS_PATCH_MEAN", "backbone.blocks.0", "cls+patch_mean"),
        ("postconv", "postconv", None),
    ],
)
def test_layer_selector(text, layer, recipe):
    assert parse_layer_selector(text) == (layer, recipe)


def test_layer_selector_errors():
    with pytest.raises(ConfigError, match="names no layer"):
        parse_layer_selector(":cls")
    with pytest.raises(ConfigError, match="'blocks.1:mean': unknown recipe 'mean'; valid"):
        parse_layer_selector("blocks.1:mean")


# ---------------------------------------------------------------------- checkpoints


def small_state() -> dict:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}


def test_safetensors_are_recognised_by_content(tmp_path):
    from safetensors.torch import save_file

    state = small_state()
    disguised = tmp_path / "pytorch_model.bin"  # safetensors content under a torch name
    save_file(state, str(disguised))
    torch_file = tmp_path / "weights.pt"
    torch.save(state, torch_file)
    assert is_safetensors(disguised) and not is_safetensors(torch_file)
    obj, fmt = read_weights(disguised)
    assert fmt == "safetensors" and torch.equal(obj["a.weight"], state["a.weight"])
    assert read_weights(torch_file)[1] == "torch"
    wrong = tmp_path / "model.safetensors"
    wrong.write_bytes(torch_file.read_bytes())
    with pytest.raises(ModelError, match="named .safetensors but its content is not"):
        read_weights(wrong)


class Arbitrary:
    """A class a checkpoint should never make us unpickle."""


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": small_state(), "args": Arbitrary()}, path)
    with pytest.raises(ModelError, match="arbitrary"):
        read_weights(path)


def test_weights_key_prefix_and_module_prefix():
    state = small_state()
    dino = {"teacher": {f"module.backbone.{k}": v for k, v in state.items()},
            "student": {}, "epoch": 3}  # fmt: skip
    got, sel = select_state_dict(dino, weights_key="teacher", weights_prefix="backbone.")
    assert list(got) == ["a.weight", "a.bias"] and sel.outside_prefix == []
    with pytest.raises(ModelError, match="top-level keys: epoch, student, teacher.*'teacher'"):
        select_state_dict(dino)
    with pytest.raises(ModelError, match="weights_key 'ema' not in the file; .*teacher"):
        select_state_dict(dino, weights_key="ema")
    mixed = {"visual.a.weight": state["a.weight"], "text.b": torch.ones(1)}
    got, sel = select_state_dict(mixed, weights_prefix="visual.")
    assert list(got) == ["a.weight"] and sel.outside_prefix == ["text.b"]
    with pytest.raises(ModelError, match=r"no key starts with weights_prefix 'trunk.'.*visual\."):
        select_state_dict(mixed, weights_prefix="trunk.")
    wrapped, _ = select_state_dict({"state_dict": state, "step": 1})
    assert list(wrapped) == list(state)


def test_ignore_keys_are_globs():
    state = {"layers.0.blocks.1.attn_mask": 0, "layers.0.blocks.1.qkv.weight": 1, "fc.bias": 2}
    kept, ignored = drop_ignored(state, ["*.attn_mask", "fc.*"])
    assert list(kept) == ["layers.0.blocks.1.qkv.weight"]
    assert ignored == ["layers.0.blocks.1.attn_mask", "fc.bias"]


def test_readme_uni_example_error_names_the_fix():
    """The old README's UNI params (num_classes 0 only) against UNI's file: 48 gamma keys."""
    with torch.device("meta"):
        uni = timm.create_model("vit_large_patch16_224", init_values=1e-5, num_classes=0)
        plain = timm.create_model("vit_large_patch16_224", num_classes=0)
    with pytest.raises(ModelError) as err:
        load_strict(plain, uni.state_dict(), weights="pytorch_model.bin",
                    architecture="timm:vit_large_patch16_224")  # fmt: skip
    message = str(err.value)
    assert "48 unexpected key(s): blocks.0.ls1.gamma" in message
    assert "init_values" in message and '"architecture": "uni"' in message


def test_prefix_and_layout_hints(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", depth=1, num_classes=0)
    path = tmp_path / "w.pth"
    torch.save({f"trunk.{k}": v for k, v in vit.state_dict().items()}, path)
    spec = {"architecture": "timm:vit_small_patch16_224",
            "architecture_kwargs": {"depth": 1, "num_classes": 0}}  # fmt: skip
    with pytest.raises(ModelError, match="set weights_prefix 'trunk.'"):
        build_encoder(spec, path)
    model, info = build_encoder({**spec, "weights_prefix": "trunk.", "embedding": "cls"}, path)
    assert info.n_loaded == len(vit.state_dict()) and model.recipe == "cls"
    hf = {"embeddings.cls_token": torch.zeros(1, 1, 384),
          "encoder.layer.0.attention.attention.query.weight": torch.zeros(384, 384)}  # fmt: skip
    torch.save(hf, path)
    with pytest.raises(ModelError, match="Hugging Face.*'phikon'"):
        build_encoder(spec, path)


def test_shape_mismatch_shows_both_shapes(tmp_path):
    vit = timm.create_model("vit_small_patch16_224", depth=1, num_classes=0, img_size=448)
    path = tmp_path / "w.pth"
    torch.save(vit.state_dict(), path)
    spec = {"architecture": "timm:vit_small_patch16_224",
            "architecture_kwargs": {"depth": 1, "num_classes": 0}}  # fmt: skip
    message = r"size mismatch for pos_embed: \[1, 785, 384\] in the file, \[1, 197"
    with pytest.raises(ModelError, match=message):
        build_encoder(spec, path)


def test_overrides_extend_a_preset():
    params = {"architecture": "ctranspath", "ignore_keys": ["extra.*"], "tile_px": 224}
    spec = resolve_spec({**params, "architecture_kwargs": {"drop_path_rate": 0.0}})
    assert spec.ignore_keys[-1] == "extra.*" and "*.attn_mask" in spec.ignore_keys
    assert spec.kwargs == {"drop_path_rate": 0.0} and spec.weights_key == "model"

    class Params:  # what ModelParams will carry
        architecture = "uni"
        architecture_kwargs = {"depth": 1}
        weights_prefix = None

    spec = resolve_spec(Params())
    assert spec.kwargs["depth"] == 1 and spec.kwargs["init_values"] == 1e-5
    with pytest.raises(ConfigError, match="embedding: unknown recipe"):
        resolve_spec({"architecture": "uni", "embedding": "gap"})
