"""CONCH v1 and v1.5 image encoders: a timm ViT trunk, an attention pooler, a LayerNorm.

The embedding is what CONCH's ``encode_image(x, proj_contrast=False, normalize=False)``
returns (``VisualModel.forward_no_head``): the trunk's tokens after its final norm (CLS
included), pooled by one learned query attending over them, then ``ln_contrast``; no
projection, no L2 normalisation. v1 pools with ``nn.MultiheadAttention`` (512-d query,
768-d context); v1.5 with bias-free linear q/kv/out projections (768-d query, 1024-d
context) on a ViT-L/16 trunk with LayerScale (init_values 1.0).

Module and parameter names follow the authors' (``trunk``, ``attn_pool_contrast``,
``ln_contrast``), so their files load after the ``visual.`` prefix is stripped (v1) or
as they are (v1.5). Imports torch: the builder imports this module only when needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Pooler(nn.Module):
    """Learned queries attending over tokens: the parts both CONCH poolers share.

    Parameters
    ----------
    dim, context_dim : int
        Width of the queries and of the tokens.
    num_heads, num_queries : int
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, num_queries: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(num_queries, dim))
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)


class MultiheadPooler(_Pooler):
    """The queries attend with ``nn.MultiheadAttention`` (CONCH v1)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, num_queries: int = 1):
        super().__init__(dim, context_dim, num_heads, num_queries)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=context_dim, vdim=context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, T, context_dim)`` tokens into ``(B, num_queries, dim)``."""
        x = self.ln_k(x).transpose(0, 1)  # (T, B, C): MultiheadAttention is sequence-first
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[1], -1)
        return self.attn(q, x, x, need_weights=False)[0].transpose(0, 1)


class LinearPooler(_Pooler):
    """The queries attend through bias-free linear projections (CONCH v1.5)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, num_queries: int = 1):
        super().__init__(dim, context_dim, num_heads, num_queries)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, T, context_dim)`` tokens into ``(B, num_queries, dim)``."""
        batch, heads = x.shape[0], self.num_heads
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q = self.to_q(self.ln_q(self.query)).expand(batch, -1, -1)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, H*d) -> (B, H, N, d)
            return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(batch, q.shape[1], -1))


class ConchVisual(nn.Module):
    """Trunk, attention pooler and LayerNorm: the pooled CONCH image embedding.

    Attributes
    ----------
    trunk : timm VisionTransformer
        Its ``forward_features`` gives the tokens the pooler attends over.
    attn_pool_contrast : MultiheadPooler or LinearPooler
    ln_contrast : nn.LayerNorm
    pos_embed_ref_grid : int or None
        v1.5 only: the patch grid the authors build the trunk at (224 px / 16), from
        which its position embedding is interpolated to ``img_size``.
    """

    def __init__(self, trunk: nn.Module, pooler: nn.Module, dim: int, ref_grid=None):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = pooler
        self.ln_contrast = nn.LayerNorm(dim)
        self.pos_embed_ref_grid = ref_grid

    @property
    def num_prefix_tokens(self) -> int:
        """Class token(s) at the start of the trunk's tokens."""
        return self.trunk.num_prefix_tokens

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's tokens ``(B, T, D)`` after its final norm."""
        return self.trunk.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding ``(B, dim)``."""
        return self.ln_contrast(self.attn_pool_contrast(self.forward_features(x))[:, 0])


def conch_v1(*, img_size: int = 448, pool_dim: int = 512, pool_heads: int = 8, **trunk):
    """CONCH v1's image encoder (``conch_ViT-B-16``: ViT-B/16 at 448 px, 512-d pooler).

    ``trunk``: timm ``VisionTransformer`` keyword arguments over ViT-B/16's (``depth``
    12, ``embed_dim`` 768, ...).
    """
    from timm.models.vision_transformer import VisionTransformer

    trunk = {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, **trunk}
    vit = VisionTransformer(img_size=img_size, num_classes=0, dynamic_img_size=True, **trunk)
    return ConchVisual(vit, MultiheadPooler(pool_dim, trunk["embed_dim"], pool_heads), pool_dim)


def conch_v15(*, img_size: int = 448, pool_dim: int = 768, pool_heads: int = 8,
              ref_img_size: int = 224, **trunk):  # fmt: skip
    """CONCH v1.5's image encoder (ViT-L/16 with LayerScale, 768-d pooler).

    ``trunk``: timm ``VisionTransformer`` keyword arguments over ViT-L/16's (``depth`` 24,
    ``embed_dim`` 1024, ``init_values`` 1.0, ...). The trunk is built at ``img_size``
    here; the authors build it at ``ref_img_size`` and interpolate its position embedding
    on every forward pass, which the ``conch_v15`` key conversion does once at load time
    instead (the same numbers).
    """
    from timm.models.vision_transformer import VisionTransformer

    trunk = {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
             "init_values": 1.0, **trunk}  # fmt: skip
    vit = VisionTransformer(img_size=img_size, num_classes=0, qkv_bias=True, **trunk)
    pooler = LinearPooler(pool_dim, trunk["embed_dim"], pool_heads)
    return ConchVisual(vit, pooler, pool_dim, ref_grid=ref_img_size // trunk["patch_size"])
