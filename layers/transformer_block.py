"""The pre-norm transformer block shared by families whose mixer is a drop-in attention module."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from timm.layers import DropPath, LayerScale, Mlp

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """``x + drop_path(ls1(attn(norm1(x))))`` then ``x + drop_path(ls2(mlp(norm2(x))))``.

    Channels-last ``[B, *spatial, C]``; ``attn`` is any attnzoo mixer (it keeps the shape).
    ``layer_scale`` (init value) adds learnable per-channel scales ``ls1.gamma``/``ls2.gamma``.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        layer_scale: Optional[float] = None,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
