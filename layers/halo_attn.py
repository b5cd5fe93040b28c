"""Halo attention mixer (HaloNet): blocked local self-attention whose keys extend a halo around
each query block, with factorised relative logits, on top of ``attnzoo.kernels.halo_attention``."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from timm.models import register_notrace_module
from timm.layers import make_divisible, trunc_normal_

from attnzoo.kernels.halo_attention import halo_attention

from ._padding import ceil_div, crop_spatial, padded_blocks

__all__ = ["HaloAttention2d", "RelLogitEmbed"]


class RelLogitEmbed(nn.Module):
    """The factorised relative-logit embeddings ``height_rel`` / ``width_rel`` ``[2 * win - 1,
    dim_head]``, named as timm's ``PosEmbedRel`` (``self_attn.pos_embed.*``)."""

    def __init__(self, win: int, dim_head: int, device=None, dtype=None):
        super().__init__()
        self.height_rel = nn.Parameter(torch.empty(2 * win - 1, dim_head, device=device, dtype=dtype))
        self.width_rel = nn.Parameter(torch.empty(2 * win - 1, dim_head, device=device, dtype=dtype))


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class HaloAttention2d(nn.Module):
    """Multi-head halo attention over ``[B, H, W, C]`` (channels-last), as timm's ``HaloAttn``.

    Queries come from a 1x1 projection of the input subsampled by ``stride`` (query blocks of
    ``block_size // stride``); keys and values from a 1x1 projection of the full input, each block
    attending to a ``(block_size + 2 * halo_size)^2`` window. Where ``block_size`` is not a multiple
    of ``stride`` (or ``avg_down``), queries keep full resolution and the output is 2x2
    average-pooled instead. There is no output projection (the block's next 1x1 conv is it).

    The op needs ``H`` and ``W`` divisible by ``block_size``; other sizes are zero-padded at the
    end of each axis after the projections (so padded keys and values are zeros, like the halo
    beyond the border) and the output is cropped to ``ceil(H / stride)``. At divisible sizes the
    result is timm's exactly, including timm's ``floor(H / 2)`` rows when ``H`` is odd on the
    average-pool path.

    Args:
        dim: input channels C.
        num_heads: attention heads.
        dim_out: output channels (the value width), default ``dim``; a multiple of num_heads.
        dim_head: query/key width per head, default ``make_divisible(dim_out * qk_ratio, 8) // num_heads``.
        block_size: side of the key blocks; halo_size: keys added on each side.
        stride: 1 or 2; output stride.
        qk_ratio: query/key width relative to dim_out when dim_head is not given.
        qkv_bias: bias in the q and kv projections.
        avg_down: downsample by average pooling even where block_size is a multiple of stride.
        backend: halo_attention backend for this module (None: dispatch rule).

    Shapes: ``[B, H, W, dim]`` -> ``[B, ceil(H / stride), ceil(W / stride), dim_out]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        dim_out: Optional[int] = None,
        dim_head: Optional[int] = None,
        block_size: int = 8,
        halo_size: int = 3,
        stride: int = 1,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        avg_down: bool = False,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dim_out = dim_out or dim
        if num_heads < 1 or dim_out % num_heads:
            raise ValueError(f"dim_out ({dim_out}) must be a multiple of num_heads ({num_heads}), num_heads >= 1")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if block_size < 1 or halo_size < 0:
            raise ValueError(f"block_size must be >= 1 and halo_size >= 0, got {block_size} and {halo_size}")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk ** -0.5
        self.block_size = block_size
        self.halo_size = halo_size
        self.stride = stride
        self.avg_down = stride > 1 and (avg_down or block_size % stride != 0)
        self.query_stride = 1 if self.avg_down else stride
        self.backend = backend
        win = block_size + 2 * halo_size
        # timm's 1x1 convolutions (weights [out, in, 1, 1], so state dicts are timm's), applied as
        # linears on the channels-last input (``_project``: the flattened weight is a view)
        self.q = nn.Conv2d(dim, num_heads * self.dim_head_qk, 1, bias=qkv_bias, **dd)
        # per head: [k (dim_head_qk) | v (dim_head_v)], the channel order of timm's kv conv
        self.kv = nn.Conv2d(dim, num_heads * (self.dim_head_qk + self.dim_head_v), 1, bias=qkv_bias, **dd)
        self.pos_embed = RelLogitEmbed(win, self.dim_head_qk, **dd)
        self.reset_parameters()

    @staticmethod
    def _project(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, conv.weight.flatten(1), conv.bias)

    def reset_parameters(self) -> None:
        std = self.dim ** -0.5  # fan-in
        trunc_normal_(self.q.weight, std=std)
        trunc_normal_(self.kv.weight, std=std)
        for bias in (self.q.bias, self.kv.bias):
            if bias is not None:
                nn.init.zeros_(bias)
        trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, C={self.dim}] channels-last input, got shape {tuple(x.shape)}"
            )
        b, h, w, _ = x.shape
        bs, s = self.block_size, self.query_stride
        # integer arithmetic on the sizes (symbolic under torch.export: padded_blocks gives an
        # exported graph at least two blocks, one of zeros that is cropped, as the halo's zeros)
        hp, wp = padded_blocks(h, bs), padded_blocks(w, bs)
        q = self._project(self.q, x[:, ::s, ::s] if s > 1 else x)
        kv = self._project(self.kv, x)
        if not (statically_known_true(hp == h) and statically_known_true(wp == w)):
            # pad after the projections: padded keys and values are zeros, as in the halo
            q = F.pad(q, (0, 0, 0, wp // s - q.shape[2], 0, hp // s - q.shape[1]))
            kv = F.pad(kv, (0, 0, 0, wp - w, 0, hp - h))
        q = q.unflatten(-1, (self.num_heads, self.dim_head_qk))
        k, v = kv.unflatten(-1, (self.num_heads, -1)).split([self.dim_head_qk, self.dim_head_v], dim=-1)
        out = halo_attention(
            q, k, v, self.pos_embed.height_rel, self.pos_embed.width_rel, bs, self.halo_size, s,
            scale=self.scale, backend=self.backend,
        )
        out = out.flatten(-2)  # [B, hp / s, wp / s, dim_out]
        if self.avg_down:
            out = F.avg_pool2d(out.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        return crop_spatial(out, (ceil_div(h, self.stride), ceil_div(w, self.stride)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, dim_out={self.dim_out}, num_heads={self.num_heads}, dim_head_qk={self.dim_head_qk}, "
            f"block_size={self.block_size}, halo_size={self.halo_size}, stride={self.stride}, "
            f"avg_down={self.avg_down}, backend={self.backend}"
        )
