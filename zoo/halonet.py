"""HaloNet: ResNet-style backbones with blocked local self-attention (halo attention).

Paper:
    Scaling Local Self-Attention for Parameter Efficient Visual Backbones, Vaswani et al.,
    CVPR 2021 (arXiv:2103.12731). There is no official code release.
Upstream: timm ``layers/halo_attn.py`` (``HaloAttn``) and ``models/byoanet.py`` on the generic
``models/byobnet.py`` (``ByobNet``); Apache-2.0 code and weights (``timm/<name>.<tag>`` on the
Hub). Written for attnzoo from those definitions; ``checkpoint_filter_fn`` loads timm's weights.

Architecture: a stem of 3x3 (or one 7x7) convolutions with an optional max-pool, then four stages
of residual blocks: bottleneck blocks (1x1 - grouped 3x3 - [SE / ECA] - 1x1) and self-attention
blocks whose 3x3 convolution is replaced by halo attention (1x1 - halo attention - BN-act - 1x1);
a stage's first block carries its stride (the halo attention strides its queries). An optional
final 1x1 convolution widens the features before average pooling and the classifier.

Layout: this family is convolution-heavy, so blocks keep NCHW and convert to channels-last only at
the mixer boundary (``attnzoo.layers.HaloAttention2d`` takes ``[B, H, W, C]``), as the mixer
contract allows for convolution-heavy families (docs/architecture.md). ``forward_features`` returns NHWC like every attnzoo family; ``forward_intermediates``
returns NCHW (or NHWC) and its last feature is taken after ``final_conv``, as timm's.

Differences from timm's ByobNet: ``zero_init_last`` defaults to False (the generic tests want
every parameter to get a gradient from a fresh model; timm zero-initialises the last BN of each
residual branch); DropBlock is not supported; the relative position embeddings are excluded from
weight decay (timm decays them).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import timm
from timm.layers import BatchNormAct2d, ConvNormAct, DropPath, get_act_layer, get_attn, make_divisible
from timm.models import checkpoint_seq, generate_default_cfgs

from attnzoo.layers.halo_attn import HaloAttention2d

from ._checkpoint import fit_layout, unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["HaloNet", "HaloNetConfig", "checkpoint_filter_fn"]


# --- blocks -----------------------------------------------------------------------------------

class Stem(nn.Module):
    """Convolutions ``conv1 .. convN`` (ConvNormAct) and an optional 3x3 stride-2 max-pool; NCHW."""

    def __init__(self, in_chans: int, chs: Sequence[int], strides: Sequence[int], kernel_size: int, pool: bool, act_layer):
        super().__init__()
        prev, stride = in_chans, 1
        self.feature_after, self.feature_chs = None, None  # the last layer still at stride 2 (timm's feature 0)
        for i, (c, s) in enumerate(zip(chs, strides)):
            self.add_module(f"conv{i + 1}", ConvNormAct(prev, c, kernel_size, stride=s, act_layer=act_layer))
            prev, stride = c, stride * s
            if stride == 2:
                self.feature_after, self.feature_chs = f"conv{i + 1}", c
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        if self.feature_after is None:
            raise ValueError(f"stem strides {tuple(strides)} never reach stride 2; feature 0 would be undefined")

    def forward_with_feature(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the stride-2 feature, the stem output)."""
        feature = None
        for name, m in self.named_children():
            x = m(x)
            if name == self.feature_after:
                feature = x
        return feature, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x


def _shortcut(in_chs: int, out_chs: int, stride: int, conv_shortcut: bool) -> Optional[nn.Module]:
    """timm's rule: identity when shapes agree; otherwise a strided 1x1 conv + BN, or no residual."""
    if in_chs == out_chs and stride == 1:
        return nn.Identity()
    return ConvNormAct(in_chs, out_chs, 1, stride=stride, apply_act=False) if conv_shortcut else None


class BottleneckBlock(nn.Module):
    """1x1 - kxk (grouped, strided) - channel attention - 1x1, residual, activation; NCHW."""

    def __init__(
        self, in_chs: int, out_chs: int, mid_chs: int, stride: int, groups: int, act_layer, attn_layer,
        conv_shortcut: bool, linear_out: bool, drop_path: float,
    ):
        super().__init__()
        self.shortcut = _shortcut(in_chs, out_chs, stride, conv_shortcut)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, act_layer=act_layer)
        self.conv2_kxk = ConvNormAct(mid_chs, mid_chs, 3, stride=stride, groups=groups, act_layer=act_layer)
        self.attn = attn_layer(mid_chs) if attn_layer is not None else nn.Identity()
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, apply_act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.Identity() if linear_out else act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.attn(self.conv2_kxk(self.conv1_1x1(x))))
        out = self.drop_path(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class SelfAttnBlock(nn.Module):
    """1x1 - halo attention (strided) - BN-act - 1x1, residual, activation. NCHW in and out; the
    mixer runs channels-last."""

    def __init__(
        self, in_chs: int, out_chs: int, mid_chs: int, stride: int, act_layer, halo_kwargs: Dict,
        conv_shortcut: bool, linear_out: bool, drop_path: float, backend: Optional[str],
    ):
        super().__init__()
        self.shortcut = _shortcut(in_chs, out_chs, stride, conv_shortcut)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, act_layer=act_layer)
        self.self_attn = HaloAttention2d(mid_chs, stride=stride, backend=backend, **halo_kwargs)
        self.post_attn = BatchNormAct2d(mid_chs, act_layer=act_layer)
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, apply_act=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.Identity() if linear_out else act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1_1x1(x)
        out = self.self_attn(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = self.drop_path(self.conv3_1x1(self.post_attn(out)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class SingleConvStem(ConvNormAct):
    """One conv + BN-act as the whole stem (timm's ``stem_type='one'``: parameters ``stem.conv`` /
    ``stem.bn``, as haloregnetz_b's checkpoints name them); the stride-2 feature is its output."""

    feature_after = ""

    def __init__(self, in_chans: int, chs: int, kernel_size: int, act_layer):
        super().__init__(in_chans, chs, kernel_size, stride=2, act_layer=act_layer)
        self.feature_chs = chs

    def forward_with_feature(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self(x)
        return x, x


class HaloStage(nn.Sequential):
    """The blocks of one stage, indexed directly (``stages.<i>.<j>``, timm's ByobNet names)."""

    def __init__(self, blocks: List[nn.Module]):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    @property
    def blocks(self) -> "HaloStage":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        for block in self:
            x = block(x)
        return x


# --- model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HaloNetConfig:
    """One HaloNet architecture. ``layout[i]`` has one letter per block of stage i:
    ``b`` bottleneck block, ``h`` halo self-attention block."""

    layout: Tuple[str, ...]
    widths: Tuple[int, ...]
    strides: Tuple[int, ...]
    bottle_ratio: Tuple[float, ...]
    stem_chs: Tuple[int, ...] = (24, 32, 64)
    stem_strides: Tuple[int, ...] = (2, 1, 1)
    stem_kernel: int = 3
    stem_pool: bool = True
    stem_single: bool = False  # the stem is one ConvNormAct (timm's stem_type='one'), not conv1..convN
    group_size: int = 0  # channels per group of the bottleneck 3x3 conv; 0: one group
    act: str = "relu"
    attn: Optional[str] = None  # channel attention of bottleneck blocks: 'se', 'eca' or None
    attn_rd_ratio: Optional[float] = None  # SE reduction ratio when not timm's default
    num_heads: Tuple[int, ...] = (8, 8, 8, 8)
    block_size: int = 8
    halo_size: int = 3
    dim_head: Optional[int] = None
    qk_ratio: float = 1.0
    num_features: int = 0  # width of the final 1x1 conv; 0: none
    conv_shortcut: bool = True  # False: no residual where the shape changes (RegNet-Z style)
    bottle_in: bool = False  # bottleneck width from the block's input (not output) channels
    linear_out: bool = False  # no activation after the residual sum


class HaloNet(StagedModel):
    """HaloNet backbone with a classification head (timm model conventions)."""

    # StagedModel's forward_* / prune / head, as timm's ByobNet: NCHW, feature 0 is the stem's
    # stride-2 convolution, the last feature is taken after final_conv; no final norm
    _stem_feature = True
    _head_pools = True

    def __init__(
        self,
        cfg: HaloNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        check_global_pool(global_pool)
        n = len(cfg.layout)
        if not (len(cfg.widths) == len(cfg.strides) == len(cfg.bottle_ratio) == len(cfg.num_heads) == n):
            raise ValueError(f"widths, strides, bottle_ratio and num_heads need one entry per stage ({n})")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        act_layer = get_act_layer(cfg.act)
        attn_layer = None
        if cfg.attn is not None:
            attn_layer = get_attn(cfg.attn)
            if cfg.attn_rd_ratio is not None:
                attn_layer = partial(attn_layer, rd_ratio=cfg.attn_rd_ratio)

        if cfg.stem_single:
            if len(cfg.stem_chs) != 1 or tuple(cfg.stem_strides) != (2,) or cfg.stem_pool:
                raise ValueError("stem_single needs one stem conv of stride 2 and no stem pool")
            self.stem = SingleConvStem(in_chans, cfg.stem_chs[0], cfg.stem_kernel, act_layer)
        else:
            self.stem = Stem(in_chans, cfg.stem_chs, cfg.stem_strides, cfg.stem_kernel, cfg.stem_pool, act_layer)
        reduction = math.prod(cfg.stem_strides) * (2 if cfg.stem_pool else 1)
        depths = [len(s) for s in cfg.layout]
        dpr = drop_path_rates(depths, drop_path_rate)
        prev = cfg.stem_chs[-1]
        stages = []
        # as timm's ByobNet: the stem's convolutions are feature 0, then the stages
        # module: the stride-2 layer inside the stem (hook and FX feature extraction read it)
        self.feature_info = [dict(num_chs=self.stem.feature_chs, reduction=2, module=".".join(filter(None, ("stem", self.stem.feature_after))))]
        for i, letters in enumerate(cfg.layout):
            halo_kwargs = dict(
                num_heads=cfg.num_heads[i], block_size=cfg.block_size, halo_size=cfg.halo_size,
                dim_head=cfg.dim_head, qk_ratio=cfg.qk_ratio,
            )
            blocks = []
            for j, letter in enumerate(letters):
                stride = cfg.strides[i] if j == 0 else 1
                out = cfg.widths[i]
                mid = make_divisible((prev if cfg.bottle_in else out) * cfg.bottle_ratio[i])
                common = dict(
                    conv_shortcut=cfg.conv_shortcut, linear_out=cfg.linear_out,
                    drop_path=dpr[i][j],
                )
                if letter == "b":
                    groups = mid // cfg.group_size if cfg.group_size else 1
                    blocks.append(BottleneckBlock(prev, out, mid, stride, groups, act_layer, attn_layer, **common))
                elif letter == "h":
                    blocks.append(SelfAttnBlock(prev, out, mid, stride, act_layer, halo_kwargs, backend=backend, **common))
                else:
                    raise ValueError(f"layout letters must be 'b' or 'h', got {letter!r} in {cfg.layout}")
                prev = out
            stages.append(HaloStage(blocks))
            reduction *= cfg.strides[i]
            self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        if cfg.num_features:
            self.final_conv = ConvNormAct(prev, cfg.num_features, 1, act_layer=act_layer)
            self.num_features = cfg.num_features
            self.feature_info[-1] = dict(num_chs=cfg.num_features, reduction=reduction, module="final_conv")
        else:
            self.final_conv = nn.Identity()
            self.num_features = prev
        self.head_hidden_size = self.num_features
        self.head = ClassifierHead(self.num_features, num_classes, global_pool, drop_rate)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BottleneckBlock, SelfAttnBlock)):
                mixer = m.attn if isinstance(m, BottleneckBlock) else m.self_attn
                if hasattr(mixer, "reset_parameters"):
                    mixer.reset_parameters()  # SE / ECA / the halo mixer own their init
                if zero_init_last and m.shortcut is not None:
                    nn.init.zeros_(m.conv3_1x1.bn.weight)
        if isinstance(self.head.fc, nn.Linear):
            nn.init.normal_(self.head.fc.weight, std=0.01)
            nn.init.zeros_(self.head.fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Empty, as timm's ByobNet: its relative position embeddings train with weight decay, and a
        drop-in replacement must train the same way."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=[
                (r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                (r"^final_conv", (99999,)),
            ],
        )

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, self.global_pool, self.drop_rate)

    def _forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.stem.forward_with_feature(x)

    def _after_last_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)

    def _prune_last(self) -> None:
        self.final_conv = nn.Identity()  # sized for the last stage


class ClassifierHead(nn.Module):
    """Global average pool over NCHW features (``pool='avg'``; ``''`` keeps the map and applies the
    linear layer at every position), dropout, linear."""

    def __init__(self, in_features: int, num_classes: int, pool: str, drop_rate: float):
        super().__init__()
        self.pool = pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.drop(x)
        if pre_logits:
            return x
        if self.pool != "avg":  # the NCHW map (static: FX and compile see no shape-dependent branch)
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(x)


# --- checkpoint conversion ---------------------------------------------------------------------

# attnzoo's names before its state dicts became timm's
_OLD_RULES = [
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.self_attn\.(height_rel|width_rel)$"), r".self_attn.pos_embed.\1"),
]
_ATTN_PROJ = re.compile(r"\.self_attn\.(q|kv)\.weight$")


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Optional[HaloNet] = None) -> Dict[str, torch.Tensor]:
    """A HaloNet checkpoint in timm's ByobNet format (``timm/<name>.<tag>``; attnzoo's own state
    dicts are the same): unwrapped from ``state_dict`` / ``model``; attnzoo's earlier names
    (``stages.i.blocks.j``, ``self_attn.{height,width}_rel``, linear ``[out, in]`` q / kv
    weights) converted to timm's (``stages.i.j``, ``self_attn.pos_embed.*``, ``[out, in, 1, 1]``).
    """
    state_dict = unwrap_state_dict(state_dict)
    ours = model.state_dict() if model is not None else {}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _OLD_RULES:
            key = pattern.sub(repl, key)
        if _ATTN_PROJ.search(key) and value.dim() == 2:
            # a linear [out, in] -> timm's 1x1 conv [out, in, 1, 1]; any other shape is left for the shape check to name
            value = fit_layout(value, ours[key].shape) if key in ours else value[:, :, None, None]
        out[key] = value
    return out


# --- variants --------------------------------------------------------------------------------

_RESNET = dict(widths=(256, 512, 1024, 2048), strides=(1, 2, 2, 2), bottle_ratio=(0.25,) * 4)

_CONFIGS: Dict[str, HaloNetConfig] = {
    "halonet_h1": HaloNetConfig(
        layout=("hhh", "hhh", "h" * 10, "hhh"), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2),
        bottle_ratio=(1.0,) * 4, stem_chs=(64,), stem_strides=(2,), stem_kernel=7,
    ),
    "halonet26t": HaloNetConfig(layout=("bb", "bb", "bh", "hh"), halo_size=2, **_RESNET),
    "sehalonet33ts": HaloNetConfig(
        layout=("bb", "bbh", "bbh", "hh"), widths=(256, 512, 1024, 1536), strides=(1, 2, 2, 2),
        bottle_ratio=(0.25, 0.25, 0.25, 0.333), stem_strides=(2, 1, 2), stem_pool=False, act="silu",
        attn="se", num_features=1280,
    ),
    "halonet50ts": HaloNetConfig(
        layout=("bbb", "bbbh", "bhbhbh", "bhb"), act="silu", num_heads=(8, 4, 8, 8), **_RESNET,
    ),
    "eca_halonext26ts": HaloNetConfig(
        layout=("bb", "bb", "bh", "hh"), group_size=16, act="silu", attn="eca", halo_size=2, dim_head=16, **_RESNET,
    ),
    "haloregnetz_b": HaloNetConfig(
        layout=("bb", "b" * 6, "bbbh" * 3, "hh"), widths=(48, 96, 192, 288), strides=(2, 2, 2, 2),
        bottle_ratio=(3.0,) * 4, stem_chs=(32,), stem_strides=(2,), stem_pool=False, group_size=16, act="silu",
        attn="se", attn_rd_ratio=0.25, block_size=7, halo_size=2, qk_ratio=0.33, num_features=1536, stem_single=True,
        conv_shortcut=False, bottle_in=True, linear_out=True,
    ),
}

# timm's ImageNet-1k results of these weights (pytorch-image-models, results/results-imagenet.csv: top-1 and
# param_count at the weights' resolution); the HaloNet paper (arXiv:2103.12731) reports other variants.
_SRC = "timm results-imagenet.csv (pytorch-image-models)"
# attnzoo name: (timm name, timm pretrained tag, published figures)
_VARIANTS: Dict[str, Tuple[str, str, Published]] = {
    "az_halonet26t": ("halonet26t", "a1h_in1k", Published(12.5, None, 79.13, 256, _SRC)),
    "az_halonet50ts": ("halonet50ts", "a1h_in1k", Published(22.7, None, 81.64, 256, _SRC)),
    "az_sehalonet33ts": ("sehalonet33ts", "ra2_in1k", Published(13.7, None, 80.98, 256, _SRC)),
    "az_eca_halonext26ts": ("eca_halonext26ts", "c1_in1k", Published(10.8, None, 79.52, 256, _SRC)),
    "az_haloregnetz_b": ("haloregnetz_b", "ra3_in1k", Published(11.7, None, 81.06, 224, _SRC)),
    "az_halonet_h1": ("halonet_h1", "untrained", Published(None, None, None, 256, "timm (untrained, no published figures)")),
}


def _cfg(timm_name: str, tag: str) -> Dict:
    """timm's own pretrained cfg of the twin, with our first conv's name."""
    cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}").to_dict()
    for key in ("architecture", "tag"):
        cfg.pop(key, None)
    cfg["classifier"] = "head.fc"
    cfg["paper_ids"] = "arXiv:2103.12731"
    return cfg


default_cfgs = generate_default_cfgs({
    f"{name}.{tag}": _cfg(timm_name, tag) for name, (timm_name, tag, _) in _VARIANTS.items()
})


def _create(name: str, pretrained: bool = False, **kwargs) -> HaloNet:
    timm_name = _VARIANTS[name][0]
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))
    return build_model(
        HaloNet, name, pretrained,
        cfg=_CONFIGS[timm_name],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


register_family("HaloNet", __name__, _create, {n: v[2] for n, v in _VARIANTS.items()})
