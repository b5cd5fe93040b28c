"""MBConv with squeeze-excitation, as MaxViT uses it (pre-norm, inverted bottleneck, NCHW).

``x -> pre_norm (BN) -> 1x1 expand -> BN + act -> kxk depthwise (carries the stride) -> BN + act
-> SE -> 1x1 project`` plus a shortcut that, when striding, average-pools 2x2 and (when the width
changes) projects with a 1x1 conv. Module names follow timm's ``MbConvBlock`` so its weights
load unchanged.

Padding: ``padding='same'`` is TensorFlow's asymmetric SAME padding (the TF MaxViT port);
``padding=''`` is PyTorch's symmetric padding, with a ceil-mode shortcut pool so that odd inputs
give ``ceil(size / 2)`` on both paths (timm's floor-mode pool makes odd sizes fail there; even
sizes are identical).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from timm.layers import BatchNormAct2d, DropPath, SEModule, create_conv2d, create_pool2d, get_act_layer, make_divisible

__all__ = ["MBConv", "PoolDownsample"]


class PoolDownsample(nn.Module):
    """2x2 stride-2 average pool, then a 1x1 conv when the width changes (``expand``)."""

    def __init__(self, in_chs: int, out_chs: int, padding: str = "", bias: bool = True, device=None, dtype=None):
        super().__init__()
        if padding == "same":
            self.pool = create_pool2d("avg", 2, stride=2, padding="same")
        else:
            self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True)
        self.expand = nn.Conv2d(in_chs, out_chs, 1, bias=bias, device=device, dtype=dtype) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class MBConv(nn.Module):
    """Pre-norm MBConv block with squeeze-excitation; NCHW in and out.

    Args:
        in_chs, out_chs: channels in and out.
        stride: 1 or 2 (in the depthwise conv; the shortcut pools).
        expand_ratio: hidden width = ``make_divisible(expand_ratio * (out_chs if expand_output else in_chs))``.
        expand_output: take the hidden width from ``out_chs`` (TF MaxViT) or ``in_chs`` (timm _rw_).
        se_ratio: SE reduced width = ``int(se_ratio * (out_chs if expand_output else hidden))``.
        kernel_size: depthwise kernel.
        act_layer: activation (name or class) of the two norm-acts; SE uses SiLU.
        norm_eps: BatchNorm epsilon (1e-3 in the TF port).
        padding: ``'same'`` (TF SAME) or ``''`` (symmetric).
        output_bias: bias in the shortcut and final 1x1 convs.
        drop_path: stochastic depth of the residual branch.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        *,
        expand_ratio: float = 4.0,
        expand_output: bool = True,
        se_ratio: float = 0.25,
        kernel_size: int = 3,
        act_layer: Union[str, type] = "gelu",
        norm_eps: float = 1e-5,
        padding: str = "",
        output_bias: bool = True,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if padding not in ("", "same"):
            raise ValueError(f"padding must be '' or 'same', got {padding!r}")
        dd = dict(device=device, dtype=dtype)
        act = get_act_layer(act_layer)
        mid_chs = make_divisible((out_chs if expand_output else in_chs) * expand_ratio)
        rd_chs = int(se_ratio * (out_chs if expand_output else mid_chs))
        if stride == 2:
            self.shortcut = PoolDownsample(in_chs, out_chs, padding=padding, bias=output_bias, **dd)
        elif in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, bias=output_bias, **dd)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = BatchNormAct2d(in_chs, eps=norm_eps, apply_act=False, **dd)
        self.conv1_1x1 = create_conv2d(in_chs, mid_chs, 1, **dd)
        self.norm1 = BatchNormAct2d(mid_chs, eps=norm_eps, act_layer=act, **dd)
        self.conv2_kxk = create_conv2d(mid_chs, mid_chs, kernel_size, stride=stride, depthwise=True, padding=padding, **dd)
        self.norm2 = BatchNormAct2d(mid_chs, eps=norm_eps, act_layer=act, **dd)
        self.se = SEModule(mid_chs, rd_channels=rd_chs, act_layer=nn.SiLU, **dd)
        self.conv3_1x1 = create_conv2d(mid_chs, out_chs, 1, bias=output_bias, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.drop_path(self.conv3_1x1(x)) + shortcut
