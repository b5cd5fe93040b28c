"""SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design.

Paper: Yun and Ro, CVPR 2024 (arXiv:2401.16456).
Upstream: ysj9909/SHViT (model/shvit.py, MIT) and timm's port (timm/models/shvit.py, Apache-2.0)
whose weights live on the Hub as ``timm/shvit_s{1,2,3,4}.in1k`` (MIT). Written for attnzoo from
those definitions, with timm's parameter names (``patch_embed.*``, residual branches ``*.m.*``, the
downsampler ``downsample.0-4``, ``mixer.m.*``, ``head.bn`` / ``head.l``): an ``az_shvit_*`` state
dict is its timm twin's, both ways.

Architecture: a stem of four 3x3 stride-2 conv-BN (ReLU between them; stride 16), then three
stages at strides 16, 32 and 64. A block is ``x + dw3x3(x)`` (depthwise conv-BN), then
``x + attn(x)`` (single-head attention on the first ``partial_dim`` channels, see
``attnzoo.layers.shvit_attn``; the first stage has none), then ``x + ffn(x)`` (1x1 conv-BN, ReLU,
1x1 conv-BN, ratio 2). Stages 2 and 3 open with a downsampler: residual depthwise conv + FFN at the
old width, a patch merging (1x1 conv-BN to 4x, ReLU, 3x3 stride-2 depthwise conv-BN, ReLU,
squeeze-excite, 1x1 conv-BN to the new width), and residual depthwise conv + FFN at the new width.
Head: global average pool, BatchNorm1d, Linear.

Layout: NCHW throughout, as upstream (the network is convolutional; the attention mixer converts to
the op's heads-last layout at the op boundary). ``forward_features`` returns NCHW
(``output_fmt = 'NCHW'``); ``forward_intermediates`` gives NCHW or NHWC.

Differences from upstream, none of which changes the function of loaded weights:
* ``residual_bn_init`` (default 1e-5): the BatchNorm closing each residual branch starts at 1e-5
  instead of 0, so that every parameter gets a gradient from the first step.
* ``drop_path_rate`` (default 0, as upstream's released models): stochastic depth on the residual
  branches of the blocks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import timm
import torch
from torch import nn
from timm.layers import DropPath, SEModule, trunc_normal_
from timm.models import generate_default_cfgs

from attnzoo.layers.shvit_attn import ConvNorm2d, SingleHeadAttention2d

from ._checkpoint import unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["SHViT", "SHViTConfig", "checkpoint_filter_fn"]


class ConvFFN(nn.Module):
    """``pw2(relu(pw1(x)))`` with 1x1 conv-BN; NCHW."""

    def __init__(self, dim: int, hidden: int, bn_init: float):
        super().__init__()
        self.pw1 = ConvNorm2d(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm2d(hidden, dim, bn_weight_init=bn_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class PatchMerging(nn.Module):
    """Stride-2 inverted bottleneck: 1x1 to 4x channels, 3x3 depthwise stride 2, squeeze-excite,
    1x1 to ``out_dim``; NCHW."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        hidden = 4 * dim
        self.conv1 = ConvNorm2d(dim, hidden)
        self.act = nn.ReLU()
        self.conv2 = ConvNorm2d(hidden, hidden, 3, stride=2, groups=hidden)
        self.se = SEModule(hidden, rd_ratio=0.25)
        self.conv3 = ConvNorm2d(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


class Residual(nn.Module):
    """``x + drop_path(m(x))``; the branch is ``m`` (timm's name)."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.m(x))


def make_downsample(dim: int, out_dim: int, residual_bn_init: float) -> nn.Sequential:
    """Residual depthwise conv + FFN at ``dim`` (0, 1), patch merging to ``out_dim`` (2, stride 2),
    residual depthwise conv + FFN at ``out_dim`` (3, 4); NCHW. Indexed as timm's."""
    return nn.Sequential(
        Residual(ConvNorm2d(dim, dim, 3, groups=dim)),
        Residual(ConvFFN(dim, 2 * dim, residual_bn_init)),
        PatchMerging(dim, out_dim),
        Residual(ConvNorm2d(out_dim, out_dim, 3, groups=out_dim)),
        Residual(ConvFFN(out_dim, 2 * out_dim, residual_bn_init)),
    )


class SHViTBlock(nn.Module):
    """``x + conv(x)``, ``x + mixer(x)`` (single-head attention, when the stage has it),
    ``x + ffn(x)``; NCHW. Each branch is a ``Residual`` (``*.m.*``, timm's names)."""

    def __init__(
        self,
        dim: int,
        partial_dim: int,
        qk_dim: int,
        attention: bool,
        drop_path: float,
        residual_bn_init: float,
        backend: Optional[str],
    ):
        super().__init__()
        self.conv = Residual(ConvNorm2d(dim, dim, 3, groups=dim, bn_weight_init=residual_bn_init), drop_path)
        self.mixer = (
            Residual(SingleHeadAttention2d(dim, partial_dim, qk_dim, proj_bn_init=residual_bn_init, backend=backend), drop_path)
            if attention else nn.Identity()
        )
        self.ffn = Residual(ConvFFN(dim, 2 * dim, residual_bn_init), drop_path)

    @property
    def attn(self) -> Optional[SingleHeadAttention2d]:
        """The single-head attention mixer, or None in a stage without attention."""
        return self.mixer.m if isinstance(self.mixer, Residual) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))


class SHViTStage(nn.Module):
    def __init__(
        self,
        dim_in: int,
        dim: int,
        depth: int,
        partial_dim: int,
        qk_dim: int,
        attention: bool,
        drop_path: Sequence[float],
        residual_bn_init: float,
        downsample: bool,
        backend: Optional[str],
    ):
        super().__init__()
        self.downsample = make_downsample(dim_in, dim, residual_bn_init) if downsample else nn.Identity()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            SHViTBlock(dim, partial_dim, qk_dim, attention, drop_path[i], residual_bn_init, backend)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self, x)


def patch_embed(in_chans: int, dim: int) -> nn.Sequential:
    """Four 3x3 stride-2 conv-BN (``dim/8, dim/4, dim/2, dim`` channels) with ReLU between; stride
    16. Indexed as timm's (convs at 0, 2, 4, 6)."""
    return nn.Sequential(
        ConvNorm2d(in_chans, dim // 8, 3, stride=2), nn.ReLU(),
        ConvNorm2d(dim // 8, dim // 4, 3, stride=2), nn.ReLU(),
        ConvNorm2d(dim // 4, dim // 2, 3, stride=2), nn.ReLU(),
        ConvNorm2d(dim // 2, dim, 3, stride=2),
    )


class NormLinear(nn.Module):
    """BatchNorm1d ``bn`` then Linear ``l`` (timm's names): SHViT's classifier over the pooled features."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.l = nn.Linear(dim, num_classes)  # noqa: E741  (timm's parameter name)
        trunc_normal_(self.l.weight, std=0.02)
        nn.init.zeros_(self.l.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(self.bn(x))


class SHViT(StagedModel):
    """SHViT backbone with a classification head (timm model conventions), NCHW."""

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.downsample", (0,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
    )

    output_fmt = "NCHW"  # StagedModel's forward_* / prune / head defaults: NCHW, no final norm

    def __init__(
        self,
        embed_dims: Sequence[int] = (128, 224, 320),
        depths: Sequence[int] = (2, 4, 5),
        partial_dims: Sequence[int] = (32, 48, 68),
        qk_dims: Sequence[int] = (16, 16, 16),
        attention: Sequence[bool] = (False, True, True),
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        residual_bn_init: float = 1e-5,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        num_stages = len(depths)
        if not (len(embed_dims) == len(partial_dims) == len(qk_dims) == len(attention) == num_stages):
            raise ValueError(
                f"embed_dims {embed_dims}, partial_dims {partial_dims}, qk_dims {qk_dims} and "
                f"attention {attention} must have one entry per stage, like depths {depths}"
            )
        if embed_dims[0] % 8:
            raise ValueError(f"embed_dims[0] must be a multiple of 8 (the stem halves it three times), got {embed_dims[0]}")
        check_global_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = embed_dims[-1]

        self.patch_embed = patch_embed(in_chans, embed_dims[0])
        dpr = drop_path_rates(depths, drop_path_rate)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(SHViTStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], partial_dims[i], qk_dims[i], attention[i],
                dpr[i], residual_bn_init, downsample=i > 0, backend=backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=16 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def stem(self) -> nn.Sequential:
        """The patch embedding (timm's ``patch_embed``) under the name the other families use."""
        return self.patch_embed

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(super().group_matcher(coarse), stem=r"^patch_embed")

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond what timm's optimizer factory already exempts (biases and norm scales)."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:  # the linear layer after the head's BatchNorm
        return self.head.l if isinstance(self.head, NormLinear) else self.head

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        if global_pool is not None:
            check_global_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = NormLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


# --- checkpoint conversion ---------------------------------------------------------------------

# attnzoo's names before its state dicts became timm's (timm/shvit_s*.in1k names on the right)
_OLD_RULES = [
    (r"^stem\.conv([1-4])\.", lambda m: f"patch_embed.{2 * (int(m.group(1)) - 1)}."),
    (r"^stages\.(\d+)\.downsample\.pre_conv\.", r"stages.\1.downsample.0.m."),
    (r"^stages\.(\d+)\.downsample\.pre_ffn\.", r"stages.\1.downsample.1.m."),
    (r"^stages\.(\d+)\.downsample\.merge\.", r"stages.\1.downsample.2."),
    (r"^stages\.(\d+)\.downsample\.post_conv\.", r"stages.\1.downsample.3.m."),
    (r"^stages\.(\d+)\.downsample\.post_ffn\.", r"stages.\1.downsample.4.m."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.conv\.(?!m\.)", r"stages.\1.blocks.\2.conv.m."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.norm\.", r"stages.\1.blocks.\2.mixer.m.pre_norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.", r"stages.\1.blocks.\2.mixer.m.qkv."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"stages.\1.blocks.\2.mixer.m.proj.1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.(?!m\.)", r"stages.\1.blocks.\2.ffn.m."),
    (r"^head\.norm\.", "head.bn."),
    (r"^head\.fc\.", "head.l."),
]

# The authors' checkpoints (ysj9909/SHViT model/shvit.py): stage i is ``blocks{i+1}``; in stages
# after the first, entries 0-2 are the downsampler (0: Sequential(Residual(dw), Residual(FFN)),
# 1: PatchMerging, 2: Sequential(Residual(dw), Residual(FFN))) and the blocks start at 3.
_AUTHOR_KEY = re.compile(r"^blocks(\d+)\.(\d+)\.(.*)$")
_AUTHOR_DOWNSAMPLE = {("0", "0"): "0", ("0", "1"): "1", ("2", "0"): "3", ("2", "1"): "4"}


def _authors_to_timm(key: str) -> str:
    m = _AUTHOR_KEY.match(key)
    if m is None:
        return key  # patch_embed.* and head.* are named as timm names them
    stage, index, rest = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
    if stage == 0:
        return f"stages.0.blocks.{index}.{rest}"
    if index == 1:
        return f"stages.{stage}.downsample.2.{rest}"
    if index in (0, 2):
        part, rest = rest.split(".", 1)
        return f"stages.{stage}.downsample.{_AUTHOR_DOWNSAMPLE[(str(index), part)]}.{rest}"
    return f"stages.{stage}.blocks.{index - 3}.{rest}"


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key  # left unmatched on purpose: strict loading names it


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: SHViT) -> Dict[str, torch.Tensor]:
    """An SHViT checkpoint in timm's names (``timm/shvit_s*.in1k``; attnzoo's own state dicts are
    the same, passed through): the authors' original ``.pth`` format and attnzoo's earlier names
    are converted to them."""
    state_dict = unwrap_state_dict(state_dict)
    if not any(k.startswith("patch_embed.") for k in state_dict):
        return {_rename(k, _OLD_RULES): v for k, v in state_dict.items()}
    if any(k.startswith("head_dist.") for k in state_dict):
        raise ValueError(
            "checkpoint has a distillation head (head_dist.*): its eval logits average two BN-Linear heads, "
            "which one SHViT head cannot reproduce; use the non-distilled checkpoint"
        )
    if not any(k.startswith("blocks") for k in state_dict):
        return dict(state_dict)
    return {_authors_to_timm(k): v for k, v in state_dict.items()}


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SHViTConfig:
    embed_dims: Tuple[int, int, int]
    depths: Tuple[int, int, int]
    partial_dims: Tuple[int, int, int]
    qk_dims: Tuple[int, int, int] = (16, 16, 16)
    attention: Tuple[bool, bool, bool] = (False, True, True)


_SRC = "SHViT paper (arXiv:2401.16456, CVPR 2024) Table 2"

# attnzoo name: (config, published figures, timm name, tag). GFLOPs count multiply-adds; S1-S3 at
# 224 px, S4 at 256 px (the resolution of the released weights and of the paper's rows).
_VARIANTS: Dict[str, Tuple[SHViTConfig, Published, str, str]] = {
    "az_shvit_s1": (SHViTConfig((128, 224, 320), (2, 4, 5), (32, 48, 68)), Published(6.3, 0.241, 72.8, 224, _SRC), "shvit_s1", "in1k"),
    "az_shvit_s2": (SHViTConfig((128, 308, 448), (2, 4, 5), (32, 66, 96)), Published(11.4, 0.366, 75.2, 224, _SRC), "shvit_s2", "in1k"),
    "az_shvit_s3": (SHViTConfig((192, 352, 448), (3, 5, 5), (48, 75, 96)), Published(14.2, 0.601, 77.4, 224, _SRC), "shvit_s3", "in1k"),
    "az_shvit_s4": (SHViTConfig((224, 336, 448), (4, 7, 6), (48, 72, 96)), Published(16.5, 0.986, 79.4, 256, _SRC), "shvit_s4", "in1k"),
}


def _cfg(timm_name: str, tag: str) -> Dict:
    """timm's pretrained cfg of the twin (Hub id, input size, crop, mean/std, license, first conv and
    classifier names: attnzoo's parameter names are timm's)."""
    cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}").to_dict()
    for derived in ("architecture", "tag"):
        cfg.pop(derived, None)
    return cfg


default_cfgs = generate_default_cfgs({
    f"{name}.{tag}": _cfg(timm_name, tag) for name, (_, _, timm_name, tag) in _VARIANTS.items()
})


def _create(name: str, pretrained: bool = False, **kwargs) -> SHViT:
    cfg = _VARIANTS[name][0]
    model_args = dict(
        embed_dims=cfg.embed_dims, depths=cfg.depths, partial_dims=cfg.partial_dims,
        qk_dims=cfg.qk_dims, attention=cfg.attention,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    return build_model(
        SHViT, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("SHViT", __name__, _create, {n: v[1] for n, v in _VARIANTS.items()})
