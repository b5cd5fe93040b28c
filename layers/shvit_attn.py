"""SHViT's single-head attention mixer (SHSA) and the conv-BN unit it is built from, on top of
``attnzoo.kernels.dense``.

Layout: unlike the channels-last mixers, this one is NCHW in and out (``[B, C, H, W]``): SHViT is a
convolutional network whose blocks are all conv-BN, so it stays NCHW as timm's and the authors'
implementation do, and converts to the op's heads-last layout (``[B, H, W, 1, dim]``) only at the
op boundary, as the mixer contract allows for convolution-heavy families (docs/architecture.md).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels.dense import dense_attention

__all__ = ["ConvNorm2d", "SingleHeadAttention2d"]


class ConvNorm2d(nn.Module):
    """``bn(c(x))``: a bias-free convolution with 'same' padding followed by BatchNorm2d.

    Keys ``c.weight`` and ``bn.*`` as in timm's and the authors' SHViT. ``bn_weight_init`` is the
    initial BatchNorm scale (0 makes a residual branch start as the identity).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.c = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class SingleHeadAttention2d(nn.Module):
    """Single-head self-attention on the first ``partial_dim`` channels (SHViT's SHSA).

    ``x1, x2 = x[:, :partial_dim], x[:, partial_dim:]``; ``q, k, v = qkv(norm(x1))`` with a 1x1
    conv-BN to ``[qk_dim, qk_dim, partial_dim]`` channels and ``norm`` a GroupNorm with one group;
    one head of global attention over all ``H * W`` positions (``attnzoo.kernels.dense_attention``,
    scale ``qk_dim ** -0.5``); then ``proj(relu(cat(attn, x2)))`` with a 1x1 conv-BN over all ``dim``
    channels. No padding is needed: the attention is global, so any ``H, W >= 1`` works.

    NCHW in and out: ``[B, dim, H, W]`` (see the module docstring).

    Args:
        dim: channels C.
        partial_dim: channels that go through attention (``1 <= partial_dim <= dim``).
        qk_dim: query / key channels of the single head.
        proj_bn_init: initial BatchNorm scale of the output projection.
        backend: dense attention backend for this module (None: dispatch rule; see attnzoo.kernels).

    Keys as timm's ``SHSA``: ``pre_norm.*``, ``qkv.c.weight``, ``qkv.bn.*``, ``proj.1.c.weight``,
    ``proj.1.bn.*`` (``proj`` is ``Sequential(ReLU, conv-BN)``).
    """

    def __init__(
        self,
        dim: int,
        partial_dim: int,
        qk_dim: int = 16,
        *,
        proj_bn_init: float = 1.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not 1 <= partial_dim <= dim:
            raise ValueError(f"partial_dim must be in [1, dim={dim}], got {partial_dim}")
        if qk_dim < 1:
            raise ValueError(f"qk_dim must be >= 1, got {qk_dim}")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.partial_dim = partial_dim
        self.qk_dim = qk_dim
        self.scale = qk_dim ** -0.5
        self.backend = backend
        self.pre_norm = nn.GroupNorm(1, partial_dim, **dd)
        self.qkv = ConvNorm2d(partial_dim, 2 * qk_dim + partial_dim, **dd)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm2d(dim, dim, bn_weight_init=proj_bn_init, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects NCHW input [B, C={self.dim}, H, W], got shape {tuple(x.shape)}"
            )
        b, _, h, w = x.shape
        x1, x2 = x.split([self.partial_dim, self.dim - self.partial_dim], dim=1)
        qkv = self.qkv(self.pre_norm(x1))
        # NCHW -> the op's heads-last [B, H, W, heads=1, channels]
        q, k, v = qkv.permute(0, 2, 3, 1).unsqueeze(-2).split([self.qk_dim, self.qk_dim, self.partial_dim], dim=-1)
        out = dense_attention(q, k, v, scale=self.scale, backend=self.backend)  # [B, H, W, 1, partial_dim]
        out = out.squeeze(-2).permute(0, 3, 1, 2)
        return self.proj(torch.cat([out, x2], dim=1))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, partial_dim={self.partial_dim}, qk_dim={self.qk_dim}, heads=1, "
            f"backend={self.backend}"
        )
