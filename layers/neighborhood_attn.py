"""Neighborhood attention mixers (NAT, DiNAT): sliding-window attention with a relative position
bias, for 1-, 2- and 3-D channels-last inputs, on top of ``attnzoo.kernels.gna``."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels import gna

from ._padding import crop_spatial, pad_spatial_end

__all__ = ["NeighborhoodAttention", "NeighborhoodAttention1d", "NeighborhoodAttention2d", "NeighborhoodAttention3d"]

IntOrTuple = Union[int, Sequence[int]]


def _tuple(value, rank: int, name: str) -> tuple:
    values = (value,) * rank if isinstance(value, (int, bool)) else tuple(value)
    if len(values) != rank:
        raise ValueError(f"{name} must be an int or a tuple of {rank} values, got {value!r}")
    return values


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class NeighborhoodAttention(nn.Module):
    """Multi-head neighborhood attention over ``[B, *spatial, C]`` (channels-last).

    Owns a fused qkv projection, an optional relative position bias table
    ``rpb: [heads, 2k-1, ...]`` and the output projection. Inputs smaller than
    ``kernel_size * dilation`` on an axis are zero-padded at the end of that axis and cropped
    back, as upstream NAT/DiNAT do, so any size >= 1 works.

    Args:
        dim: channels C (a multiple of ``num_heads``).
        num_heads: attention heads.
        kernel_size, stride, dilation, is_causal: the gna pattern, int or per axis.
        spatial_dims: number of spatial axes (1, 2 or 3).
        qkv_bias: bias in the qkv projection.
        rel_pos_bias: learn a relative position bias table.
        qk_scale: softmax scale (default head_dim ** -0.5).
        backend: gna backend for this module (None: dispatch rule; see attnzoo.kernels).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: IntOrTuple = 7,
        *,
        spatial_dims: int = 2,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: Union[bool, Sequence[bool]] = False,
        qkv_bias: bool = True,
        rel_pos_bias: bool = True,
        qk_scale: Optional[float] = None,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.spatial_dims = spatial_dims
        self.kernel_size = _tuple(kernel_size, spatial_dims, "kernel_size")
        self.stride = _tuple(stride, spatial_dims, "stride")
        self.dilation = _tuple(dilation, spatial_dims, "dilation")
        self.is_causal = _tuple(is_causal, spatial_dims, "is_causal")
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size), **dd))
            nn.init.trunc_normal_(self.rpb, std=0.02)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, {self.spatial_dims} spatial axes, C={self.dim}] "
                f"channels-last input, got shape {tuple(x.shape)}"
            )
        spatial = x.shape[1:-1]
        need = [k * d for k, d in zip(self.kernel_size, self.dilation)]
        # sym_max: for a symbolic size (torch.export) the graph pads by max(0, need - size) itself
        x = pad_spatial_end(x, [torch.sym_max(s, n) - s for n, s in zip(need, spatial)])
        b, padded = x.shape[0], x.shape[1:-1]
        q, k, v = self.qkv(x).view(b, *padded, 3, self.num_heads, self.head_dim).unbind(-3)
        out = gna(
            q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
            rpb=self.rpb, scale=self.scale, backend=self.backend,
        )
        out = out.reshape(b, *padded, self.dim)
        return self.proj_drop(self.proj(crop_spatial(out, spatial)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}, "
            f"rel_pos_bias={self.rpb is not None}, backend={self.backend}"
        )


class NeighborhoodAttention1d(NeighborhoodAttention):
    """Neighborhood attention over ``[B, L, C]``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: IntOrTuple = 7, **kwargs):
        super().__init__(dim, num_heads, kernel_size, spatial_dims=1, **kwargs)


class NeighborhoodAttention2d(NeighborhoodAttention):
    """Neighborhood attention over ``[B, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: IntOrTuple = 7, **kwargs):
        super().__init__(dim, num_heads, kernel_size, spatial_dims=2, **kwargs)


class NeighborhoodAttention3d(NeighborhoodAttention):
    """Neighborhood attention over ``[B, D, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: IntOrTuple = 7, **kwargs):
        super().__init__(dim, num_heads, kernel_size, spatial_dims=3, **kwargs)
