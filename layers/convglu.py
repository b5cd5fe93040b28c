"""Convolutional GLU (TransNeXt's feed-forward): a gated linear unit whose gate branch passes
through a 3x3 depthwise convolution, so the channel mixer also sees its neighbours. Channels-last
``[B, H, W, C]`` in and out."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels._checks import check_int

__all__ = ["ConvolutionalGLU"]


@register_notrace_module  # checks the input shape: an FX leaf
class ConvolutionalGLU(nn.Module):
    """``fc2(drop(act(dwconv(a)) * g))`` with ``[a | g] = fc1(x)``, over ``[B, H, W, C]``.

    ``fc1`` maps ``in_features`` to ``2 * hidden_features``; its first half ``a`` goes through
    the ``kernel_size x kernel_size`` depthwise convolution (zero 'same' padding, bias) and the
    activation, and gates the second half ``g`` (Shi, TransNeXt, CVPR 2024). TransNeXt keeps the
    parameter count of an MLP of ratio ``r`` with ``hidden_features = int(2 * int(dim * r) / 3)``;
    that choice is the caller's (``attnzoo.transnext`` makes it), this module takes the gated width.

    Args:
        in_features: input channels C.
        hidden_features: gated width (channels of the depthwise convolution).
        out_features: output channels (default C).
        kernel_size: odd side of the depthwise convolution (default 3).
        act_layer: activation (default GELU).
        drop: dropout after the gate and after fc2.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: Optional[int] = None,
        kernel_size: int = 3,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_int("in_features", in_features)
        check_int("hidden_features", hidden_features)
        check_int("kernel_size", kernel_size, odd=True)
        out_features = out_features or in_features
        dd = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, kernel_size, padding=kernel_size // 2,
                                groups=hidden_features, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"ConvolutionalGLU expects [B, H, W, C={self.in_features}] channels-last input, got shape {tuple(x.shape)}"
            )
        a, gate = self.fc1(x).chunk(2, dim=-1)
        a = self.dwconv(a.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(a) * gate)
        return self.drop(self.fc2(x))
