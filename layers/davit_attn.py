"""DaViT's mixers: blocked window attention (over ``attnzoo.kernels.gna``), channel (group)
attention (over ``attnzoo.kernels.channel_attention``) and the convolutional position encoding
that DaViT places before each of them. All take and return channels-last ``[B, *spatial, C]``."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels import gna
from attnzoo.kernels.channel_attention import channel_attention

from ._padding import crop_spatial, pad_spatial_end, padded_blocks

__all__ = ["WindowAttention", "WindowAttention2d", "ChannelAttention", "ConvPosEnc"]

IntOrTuple = Union[int, Sequence[int]]


def _check_heads(dim: int, num_heads: int) -> None:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class WindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping windows (Swin / DaViT W-MSA, no shift, no
    position bias) over ``[B, *spatial, C]``: gna with ``kernel_size = stride = window_size``.

    Inputs are zero-padded at the end of each axis to a multiple of the window *before* the qkv
    projection, and the output is cropped back, as DaViT does: padded positions are keys and
    values (carrying only the qkv bias) of the last window on each axis. With that padding the
    gna pattern is exactly the window partition.

    Args:
        dim: channels C (a multiple of ``num_heads``).
        num_heads: attention heads.
        window_size: window per spatial axis, int or tuple.
        spatial_dims: number of spatial axes (1, 2 or 3).
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale (default head_dim ** -0.5).
        backend: gna backend for this module (None: dispatch rule; see attnzoo.kernels).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: IntOrTuple = 7,
        *,
        spatial_dims: int = 2,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        _check_heads(dim, num_heads)
        window = (window_size,) * spatial_dims if isinstance(window_size, int) else tuple(window_size)
        if len(window) != spatial_dims or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in window):
            raise ValueError(f"window_size must be an int >= 1 or a tuple of {spatial_dims} such ints, got {window_size!r}")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.spatial_dims = spatial_dims
        self.window_size = window
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, {self.spatial_dims} spatial axes, C={self.dim}] "
                f"channels-last input, got shape {tuple(x.shape)}"
            )
        spatial = x.shape[1:-1]
        x = pad_spatial_end(x, [padded_blocks(s, w) - s for s, w in zip(spatial, self.window_size)])
        b, padded = x.shape[0], x.shape[1:-1]
        q, k, v = self.qkv(x).view(b, *padded, 3, self.num_heads, self.head_dim).unbind(-3)
        out = gna(q, k, v, self.window_size, stride=self.window_size, scale=self.scale, backend=self.backend)
        out = out.reshape(b, *padded, self.dim)
        return self.proj_drop(self.proj(crop_spatial(out, spatial)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, backend={self.backend}"


class WindowAttention2d(WindowAttention):
    """Window attention over ``[B, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, window_size: IntOrTuple = 7, **kwargs):
        super().__init__(dim, num_heads, window_size, spatial_dims=2, **kwargs)


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class ChannelAttention(nn.Module):
    """DaViT channel (group) attention over ``[B, *spatial, C]``: the channels are split into
    ``num_heads`` groups and each group attends over its channels, with the channel affinity
    ``softmax((scale * k)^T v)`` summed over all positions and applied to q
    (``attnzoo.kernels.channel_attention``). Global over positions, linear in their number; no
    padding is needed, so any spatial size (and any number of spatial axes) works.

    Args:
        dim: channels C (a multiple of ``num_heads``).
        num_heads: channel groups.
        qkv_bias: bias in the qkv projection.
        qk_scale: scale of k (default head_dim ** -0.5, head_dim = dim // num_heads).
        backend: channel_attention backend for this module (None: dispatch rule).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_heads(dim, num_heads)
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, *spatial, C={self.dim}] channels-last input "
                f"with at least one spatial axis, got shape {tuple(x.shape)}"
            )
        q, k, v = self.qkv(x).view(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        out = channel_attention(q, k, v, scale=self.scale, backend=self.backend)
        return self.proj_drop(self.proj(out.reshape(x.shape)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, groups={self.num_heads}, head_dim={self.head_dim}, backend={self.backend}"


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class ConvPosEnc(nn.Module):
    """Convolutional position encoding ``x + act(dwconv_k(x))`` (k x k depthwise, zero 'same'
    padding) over channels-last ``[B, H, W, C]``; ``act`` is GELU or the identity (DaViT's
    classification models use the identity)."""

    def __init__(self, dim: int, kernel_size: int = 3, act: bool = False, *, device=None, dtype=None):
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self.dim = dim
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"ConvPosEnc expects [B, H, W, C={self.dim}] channels-last input, got shape {tuple(x.shape)}")
        return x + self.act(self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
