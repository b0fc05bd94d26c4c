"""Reference encoders as their authors build them, and their published weights layouts.

Written for the tests from the authors' code (CONCH ``open_clip_custom``, TRIDENT's
``model_zoo/conchv1_5`` and ``ctranspath``, TransPath's ``ctran.py``) and the reference
tools' loaders, independently of :mod:`histoatlas.backends.torch.encoders`: each builder returns a
module with seeded random weights, a ``forward`` that gives the embedding the way the
reference tool computes it, and the state dict the authors publish (file name, key
prefixes, wrapping keys, extra parts).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------- weights


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm statistic seeded random values of a sensible scale.

    Other buffers (Swin's attention masks) are computed, not learned: left as they are.

    timm's init leaves LayerScale at 1e-5 and zero biases, which would hide a mis-loaded
    block; here norms/LayerScale get weights in [0.5, 1.5], biases and embeddings noise,
    matrices 1/sqrt(fan_in) so activations stay O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        stats = [
            (n, b) for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))
        ]
        for name, p in list(module.named_parameters()) + stats:
            if p.is_meta:
                continue
            if p.ndim >= 2 and not name.endswith(("pos_embed", "position_embeddings")):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith(("running_var", "gamma", "lambda1")) or (
                p.ndim == 1 and name.endswith("weight")
            ):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


@dataclass
class Reference:
    """A reference encoder: its module, how it embeds, and its published state dict."""

    module: nn.Module
    embed: Callable[[torch.Tensor], torch.Tensor]
    published: Callable[[], dict]
    file_name: str


# ---------------------------------------------------------------------------- CONCH v1


class _CastLayerNorm(nn.LayerNorm):
    """CONCH's LayerNorm: computes, then casts back to the input dtype."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class RefAttentionalPooler(nn.Module):
    """CONCH v1's ``AttentionalPooler`` (open_clip_custom/transformer.py)."""

    def __init__(self, d_model, context_dim, n_head=8, n_queries=256):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = _CastLayerNorm(d_model)
        self.ln_k = _CastLayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query)
        out = self.attn(q.unsqueeze(1).repeat(1, x.shape[1], 1), x, x, need_weights=False)[0]
        return out.permute(1, 0, 2)


class RefConchVisual(nn.Module):
    """CONCH v1's ``VisualModel`` with both attentional poolers (conch_ViT-B-16.json)."""

    def __init__(self, depth=12, image_size=448):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(embed_dim=768, depth=depth, num_heads=12, mlp_ratio=4,
                                       img_size=image_size, patch_size=16, num_classes=0,
                                       dynamic_img_size=True)  # fmt: skip
        self.attn_pool_contrast = RefAttentionalPooler(512, 768, 8, 1)
        self.ln_contrast = nn.LayerNorm(512)
        self.proj_contrast = nn.Parameter(768**-0.5 * torch.randn(512, 512))
        self.attn_pool_caption = RefAttentionalPooler(768, 768, 8, 256)
        self.ln_caption = nn.LayerNorm(768)

    def forward_no_head(self, x):
        """What ``CoCa.encode_image(x, proj_contrast=False, normalize=False)`` returns."""
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def conch_v1(depth=12) -> Reference:
    visual = randomize(RefConchVisual(depth=depth))

    def published():
        # the CoCa file: visual.*, a text tower and decoder (stand-ins with CoCa's names)
        state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
        for key in ("text.token_embedding.weight", "text.positional_embedding",
                    "text.cls_emb", "text.transformer.resblocks.0.attn.in_proj_weight",
                    "text.ln_final.weight", "text.text_projection",
                    "text_decoder.resblocks.0.attn.in_proj_weight",
                    "text_decoder.cross_attn.0.attn.in_proj_weight",
                    "text_decoder.ln_final.weight", "text_decoder.text_projection"):  # fmt: skip
            state[key] = torch.randn(8, 4)
        state["logit_scale"] = torch.tensor(2.6592)
        return state

    return Reference(visual, visual.forward_no_head, published, "pytorch_model.bin")


# ---------------------------------------------------------------------------- CONCH v1.5


def _ibot_vit_class():
    from timm.models.vision_transformer import VisionTransformer

    class RefIBotViT(VisionTransformer):
        """TRIDENT's conchv1_5 iBOT ViT: timm blocks, position embedding interpolated on
        every forward pass with DINO's ``scale_factor = (w0 + 0.1) / sqrt(N)``."""

        def _pos_embed(self, x):
            b, h, w, c = x.shape  # dynamic_img_size: NHWC
            x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
            n = self.pos_embed.shape[1] - 1
            if h * w == n and h == w:
                return x + self.pos_embed
            side = math.sqrt(n)
            patch = self.pos_embed[:, 1:].reshape(1, int(side), int(side), c).permute(0, 3, 1, 2)
            patch = F.interpolate(patch, scale_factor=((h + 0.1) / side, (w + 0.1) / side),
                                  mode="bicubic")  # fmt: skip
            patch = patch.permute(0, 2, 3, 1).reshape(1, -1, c)
            return x + torch.cat([self.pos_embed[:, :1], patch], dim=1)

    return RefIBotViT


class RefPoolerV15(nn.Module):
    """TRIDENT conchv1_5 ``AttentionalPooler`` (einsum attention, bias-free projections)."""

    def __init__(self, d_model=768, context_dim=1024, n_head=8, n_queries=1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.scale, self.heads = (d_model // n_head) ** -0.5, n_head
        self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        x = x[:, None]  # b 1 n d
        q = self.query[None, None].expand(x.shape[0], 1, -1, -1)
        q, (k, v) = self.to_q(self.ln_q(q)), self.to_kv(self.ln_k(x)).chunk(2, dim=-1)

        def heads(t):  # b t n (h d) -> b h t n d
            b, t_, n, _ = t.shape
            return t.reshape(b, t_, n, self.heads, -1).permute(0, 3, 1, 2, 4)

        q, k, v = heads(q) * self.scale, heads(k), heads(v)
        sim = torch.einsum("...id,...jd->...ij", q, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = torch.einsum("...ij,...jd->...id", attn, v)  # b h t n d
        out = out.permute(0, 2, 3, 1, 4).flatten(3)
        return self.to_out(out).squeeze(dim=1)


class RefConchV15(nn.Module):
    def __init__(self, depth=24):
        super().__init__()
        self.trunk = _ibot_vit_class()(
            patch_size=16, embed_dim=1024, depth=depth, num_heads=16, mlp_ratio=4,
            qkv_bias=True, init_values=1.0, num_classes=0, img_size=224, dynamic_img_size=True,
        )  # fmt: skip
        self.attn_pool_contrast = RefPoolerV15()
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x):
        x = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(x)[:, 0])


def conch_v15(depth=24) -> Reference:
    ref = randomize(RefConchV15(depth=depth))
    return Reference(ref, ref, ref.state_dict, "pytorch_model_vision.bin")


# ---------------------------------------------------------------------------- CTransPath


class RefTransPathStem(nn.Module):
    """TransPath's ``ConvStem`` for timm 0.5.4 (tokens out, ``(B, N, C)``)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=768, norm_layer=None,
                 flatten=True):  # fmt: skip
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches, self.flatten = self.grid_size[0] * self.grid_size[1], flatten
        stem, c_in, c_out = [], 3, embed_dim // 8
        for _ in range(2):
            stem += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                     nn.ReLU(inplace=True)]  # fmt: skip
            c_in, c_out = c_out, c_out * 2
        stem.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def ctranspath() -> Reference:
    import timm_ctp

    model = timm_ctp.create_model("swin_tiny_patch4_window7_224", embed_layer=RefTransPathStem,
                                  pretrained=False, img_size=224)  # fmt: skip
    model.head = nn.Identity()
    randomize(model)
    return Reference(model, model, lambda: {"model": model.state_dict()}, "CHIEF_CTransPath.pth")


# ---------------------------------------------------------------------------- ResNet-50


def resnet50_trunc() -> Reference:
    """TRIDENT's resnet50: timm ``features_only`` to stage 3, torchvision weights, avg pool."""
    import timm
    import torchvision

    tv = randomize(torchvision.models.resnet50(weights=None))
    trunk = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=[3])
    missing, unexpected = trunk.load_state_dict(tv.state_dict(), strict=False)
    assert not missing and set(k.split(".")[0] for k in unexpected) == {"layer4", "fc"}
    trunk.eval()

    def embed(x):
        return F.adaptive_avg_pool2d(trunk(x)[0], 1).flatten(1)

    return Reference(trunk, embed, tv.state_dict, "resnet50-0676ba61.pth")


# ---------------------------------------------------------------------------- Hugging Face

_V5_TO_V4_VIT = (
    (r"^layers\.(\d+)\.attention\.(q|k|v)_proj\.", None),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
)
_V5_TO_V4_DINOV2 = (
    (r"^encoder\.layer\.(\d+)\.attention\.(q|k|v)_proj\.", None),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
)
_QKV_NAMES = {"q": "query", "k": "key", "v": "value"}


def hf_v4_layout(state: dict, rules) -> dict:
    """transformers 5 key names back to the transformers 4 names the files are published in."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            found = re.match(pattern, key)
            if found and repl is None:
                block, which = found.groups()
                key = (
                    f"encoder.layer.{block}.attention.attention.{_QKV_NAMES[which]}."
                    + key[found.end() :]
                )
                break
            if found:
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    return out


def phikon(depth=12) -> Reference:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=768, num_hidden_layers=depth, num_attention_heads=12,
                       intermediate_size=3072, image_size=224, patch_size=16,
                       layer_norm_eps=1e-12, qkv_bias=True)  # fmt: skip
    model = randomize(ViTModel(config, add_pooling_layer=True))

    def embed(x):
        return model(pixel_values=x).last_hidden_state[:, 0]

    def published():
        return hf_v4_layout(model.state_dict(), _V5_TO_V4_VIT)

    return Reference(model, embed, published, "pytorch_model.bin")


def phikon_v2(depth=24, image_size=224) -> Reference:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=1024, num_hidden_layers=depth, num_attention_heads=16,
                          mlp_ratio=4, image_size=image_size, patch_size=16, layerscale_value=1.0,
                          layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False)  # fmt: skip
    model = randomize(Dinov2Model(config))

    def embed(x):
        return model(pixel_values=x).last_hidden_state[:, 0]

    def published():
        return hf_v4_layout(model.state_dict(), _V5_TO_V4_DINOV2)

    return Reference(model, embed, published, "model.safetensors")
