"""BiFormer's mixers, channels-last ``[B, H, W, C]`` in and out:

* ``BiLevelRoutingAttention2d``: bi-level routing attention (``attnzoo.kernels.routed_attention``)
  with LePE, a depthwise convolution of v added to the attention output (stages 1-3);
* ``AttentionLePE2d``: global multi-head attention (``attnzoo.kernels.dense_attention``) with LePE
  on the mixer's input, BiFormer's stage-4 mixer (upstream ``topk = -2``; ``topk = -1`` is the same
  without LePE, ``side_dwconv=0``).

Both follow the authors' rayleizhu/BiFormer (``ops/bra_legacy.py``, ``models/_common.py``; MIT),
including its choices that released weights depend on (noted where they occur).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels._checks import check_int
from attnzoo.kernels.dense import dense_attention
from attnzoo.kernels.routed_attention import routed_attention

from ._padding import crop_spatial, pad_spatial_end, round_up

__all__ = ["BiLevelRoutingAttention2d", "AttentionLePE2d"]


def _lepe(dim: int, kernel_size: int, dd: dict) -> Optional[nn.Conv2d]:
    """LePE: ``kernel_size`` x ``kernel_size`` depthwise convolution, zero 'same' padding; None for 0."""
    check_int("side_dwconv", kernel_size, 0)
    if kernel_size == 0:
        return None
    if kernel_size % 2 == 0:
        raise ValueError(f"side_dwconv must be 0 (no LePE) or an odd int, got {kernel_size}")
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)


def _apply_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class BiLevelRoutingAttention2d(nn.Module):
    """Bi-level routing attention over ``[B, H, W, C]`` (BiFormer, stages 1-3).

    The map is cut into ``num_regions x num_regions`` regions; each query region attends to the
    ``topk`` regions whose mean key best matches its mean query (routing on all heads' channels
    together, not differentiated), token to token, per head. LePE (a ``side_dwconv`` depthwise
    convolution of v over the whole map) is added before the output projection.

    Any size works: the input is zero-padded at the bottom/right to a multiple of ``num_regions``
    *before* the qkv projection (so padded tokens carry the qkv bias and take part in the region
    means and the attention, as the authors' ``auto_pad`` for detection and segmentation does),
    regions are ``ceil(H / num_regions) x ceil(W / num_regions)`` tokens, and the output is cropped
    back. At multiples of ``num_regions`` (224 px for BiFormer) nothing is padded.

    Args:
        dim: channels C; v has C channels, split over the heads.
        num_heads: attention heads (divides ``qk_dim`` and ``dim``).
        num_regions: regions per side (the authors' ``n_win``; 7 for classification).
        topk: routed regions per query region, ``1 <= topk <= num_regions ** 2``.
        qk_dim: channels of q and k (default ``dim``).
        qk_scale: softmax scale; default ``qk_dim ** -0.5`` as upstream (the full qk width, not the
            head width: the released weights were trained with it).
        side_dwconv: LePE kernel size (odd), 0 for none.
        backend: routed_attention backend for this module (None: dispatch rule).

    State-dict keys: ``qkv`` (Linear C -> 2 qk_dim + C, the authors' ``qkv.qkv``), ``lepe``,
    ``proj`` (the authors' ``wo``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_regions: int = 7,
        topk: int = 4,
        *,
        qk_dim: Optional[int] = None,
        qk_scale: Optional[float] = None,
        side_dwconv: int = 5,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_int("dim", dim, 1)
        check_int("num_heads", num_heads, 1)
        check_int("num_regions", num_regions, 1)
        qk_dim = dim if qk_dim is None else check_int("qk_dim", qk_dim, 1)
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim ({qk_dim}) and dim ({dim}) must be multiples of num_heads ({num_heads})")
        regions = num_regions * num_regions
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= regions:
            raise ValueError(
                f"topk must be an int in [1, num_regions**2 = {regions}], got {topk!r} "
                "(for full attention use AttentionLePE2d)"
            )
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.num_regions = num_regions
        self.topk = topk
        self.scale = qk_scale if qk_scale is not None else qk_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, **dd)
        self.lepe = _lepe(dim, side_dwconv, dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, C={self.dim}] channels-last input, got shape {tuple(x.shape)}"
            )
        spatial = x.shape[1:3]
        s = self.num_regions
        # round_up, not -n % s: a symbolic size (torch.export) stays provably a multiple of s
        x = pad_spatial_end(x, [round_up(n, s) - n for n in spatial])
        b, h, w, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        out = routed_attention(
            q.reshape(b, h, w, heads, self.qk_dim // heads), k.reshape(b, h, w, heads, self.qk_dim // heads),
            v.reshape(b, h, w, heads, self.dim // heads),
            s, self.topk, scale=self.scale, backend=self.backend,
        ).reshape(b, h, w, self.dim)
        if self.lepe is not None:
            out = out + _apply_nhwc(self.lepe, v)  # over the padded map, as upstream
        return self.proj(crop_spatial(out, spatial))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, num_regions={self.num_regions}, "
            f"topk={self.topk}, backend={self.backend}"
        )


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class AttentionLePE2d(nn.Module):
    """Global multi-head attention with LePE over ``[B, H, W, C]`` (BiFormer's stage 4).

    ``out = proj(attention(q, k, v) + lepe(x))``: unlike the routing mixer, LePE here convolves the
    mixer's *input* x, not v, and the qkv projection has no bias by default; both as upstream's
    ``AttentionLePE``, whose weights depend on it. No padding is needed: any size works.

    Args:
        dim: channels C.
        num_heads: heads (upstream's stage 4 uses its default, 8, not dim / 32).
        qkv_bias: bias in the qkv projection (upstream: none).
        qk_scale: softmax scale, default ``(dim / num_heads) ** -0.5``.
        side_dwconv: LePE kernel size (odd), 0 for none (upstream ``topk = -1``).
        backend: dense_attention backend for this module (None: dispatch rule).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        side_dwconv: int = 5,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_int("dim", dim, 1)
        check_int("num_heads", num_heads, 1)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.lepe = _lepe(dim, side_dwconv, dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, C={self.dim}] channels-last input, got shape {tuple(x.shape)}"
            )
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).view(b, h, w, 3, self.num_heads, self.head_dim).unbind(-3)
        out = dense_attention(q, k, v, scale=self.scale, backend=self.backend).reshape(b, h, w, self.dim)
        if self.lepe is not None:
            out = out + _apply_nhwc(self.lepe, x)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, global, backend={self.backend}"
