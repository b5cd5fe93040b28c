"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper:
    BiFormer: Vision Transformer with Bi-Level Routing Attention, Zhu et al., CVPR 2023
    (arXiv:2303.08810).
Upstream: rayleizhu/BiFormer (MIT): ``models/biformer.py`` with ``ops/bra_legacy.py``, the code
the released ImageNet-1k checkpoints were trained with (linked from its README, not on the Hub).
Not in timm. Written for attnzoo from those definitions; ``checkpoint_filter_fn`` converts the
authors' checkpoints to attnzoo's names.

Architecture: a stem of two 3x3 stride-2 convolutions (BatchNorm, GELU between), then four stages;
stages 2-4 open with a 3x3 stride-2 convolution + BatchNorm. A block is
``x = x + dwconv3x3(x); x = x + attn(LN(x)); x = x + mlp(LN(x))`` (LayerNorm eps 1e-6, MLP ratio 3,
no layer scale). Stages 1-3 use bi-level routing attention over 7x7 regions, top-k 1 / 4 / 16,
head dim 32, LePE 5x5 on v (``BiLevelRoutingAttention2d``); stage 4 uses global attention with 8
heads and LePE on its input (``AttentionLePE2d``, upstream's ``topk = -2``). The head is
BatchNorm -> global average pool -> linear.

Any input size works: the mixers pad to a multiple of the region count (7 per side) and crop
back, so regions are ``ceil(size / 7)`` tokens per side, as the authors' dense-prediction models
do; at 224 px nothing is padded and the released weights compute what upstream computes. Blocks
run channels-last ``[B, H, W, C]``; ``forward_features`` returns NCHW like upstream, and
``forward_intermediates`` NCHW (or NHWC).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs

from attnzoo.layers.biformer_attn import AttentionLePE2d, BiLevelRoutingAttention2d
from attnzoo.layers.davit_attn import ConvPosEnc

from ._checkpoint import unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["BiFormer", "BiFormerConfig", "checkpoint_filter_fn"]


class Stem(nn.Module):
    """3x3 stride-2 conv (C/2) -> BN -> GELU -> 3x3 stride-2 conv (C) -> BN. NCHW image in,
    NHWC features (``ceil(H / 4) x ceil(W / 4)``) out."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return x.permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """3x3 stride-2 convolution (padding 1) + BatchNorm; NHWC in and out (``ceil`` halving)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class BiFormerBlock(nn.Module):
    """``x = x + pos_embed(x); x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x)))``
    over channels-last ``[B, H, W, C]``. ``topk > 0``: bi-level routing attention with
    ``dim // head_dim`` heads; ``topk = -2``: global attention with LePE (8 heads), ``-1``: the
    same without LePE (upstream's codes)."""

    def __init__(
        self,
        dim: int,
        topk: int,
        head_dim: int = 32,
        num_regions: int = 7,
        mlp_ratio: float = 3.0,
        side_dwconv: int = 5,
        drop_path: float = 0.0,
        backend: Optional[str] = None,
    ):
        super().__init__()
        self.pos_embed = ConvPosEnc(dim, 3)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention2d(
                dim, dim // head_dim, num_regions, topk, side_dwconv=side_dwconv, backend=backend
            )
        elif topk in (-1, -2):
            self.attn = AttentionLePE2d(dim, 8, side_dwconv=side_dwconv if topk == -2 else 0, backend=backend)
        else:
            raise ValueError(f"topk must be >= 1 (routed), -1 (global) or -2 (global with LePE), got {topk}")
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(x)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class BiFormerStage(nn.Module):
    """Optional downsampler (stages 2-4), then ``depth`` blocks. NHWC in and out."""

    def __init__(self, dim_in: int, dim: int, depth: int, topk: int, head_dim: int, num_regions: int,
                 mlp_ratio: float, side_dwconv: int, drop_path: Sequence[float], downsample: bool,
                 backend: Optional[str]):
        super().__init__()
        self.downsample = Downsample(dim_in, dim) if downsample else nn.Identity()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            BiFormerBlock(dim, topk, head_dim, num_regions, mlp_ratio, side_dwconv, drop_path[j], backend)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self, x)


class BiFormer(StagedModel):
    """BiFormer backbone with a classification head (timm model conventions)."""

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.downsample", (0,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        (r"^norm", (99999,)),
    )
    # StagedModel's forward_* / prune / head: channels-last stages, NCHW features after the final
    # BatchNorm, as upstream
    _stage_fmt = "NHWC"
    _norm_fmt = "NCHW"

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 8, 2),
        topks: Sequence[int] = (1, 4, 16, -2),
        head_dim: int = 32,
        num_regions: int = 7,
        mlp_ratio: float = 3.0,
        side_dwconv: int = 5,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        num_stages = len(depths)
        if len(embed_dims) != num_stages or len(topks) != num_stages:
            raise ValueError(f"embed_dims {embed_dims} and topks {topks} must have one entry per stage of depths {depths}")
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool)
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = embed_dims[-1]

        self.stem = Stem(in_chans, embed_dims[0])
        dpr = drop_path_rates(depths, drop_path_rate)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(BiFormerStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], topks[i], head_dim, num_regions, mlp_ratio,
                side_dwconv, dpr[i], downsample=i > 0, backend=backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond the 1-D parameters timm's optimizer factory already exempts: BiFormer has
        no position tables (upstream names 'pos_embed' and 'cls_token', which match no parameter)."""
        return set()


# --- checkpoint conversion ---------------------------------------------------------------------

# The authors' classification checkpoints (models/biformer.py + ops/bra_legacy.py):
# downsample_layers.0 = stem Sequential(conv, BN, GELU, conv, BN); downsample_layers.i =
# Sequential(conv, BN); stages.i.j = Block(pos_embed, norm1, attn.{qkv.qkv, lepe, wo} (routing) or
# attn.{qkv, lepe, proj} (stage 4), norm2, mlp = Sequential(Linear, Identity, GELU, Linear));
# norm (BatchNorm2d); head (Linear).
_AUTHOR_RULES = [
    (r"^downsample_layers\.0\.0\.", "stem.conv1."),
    (r"^downsample_layers\.0\.1\.", "stem.norm1."),
    (r"^downsample_layers\.0\.3\.", "stem.conv2."),
    (r"^downsample_layers\.0\.4\.", "stem.norm2."),
    (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.conv."),
    (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d+)\.(\d+)\.pos_embed\.", r"stages.\1.blocks.\2.pos_embed.proj."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.qkv\.qkv\.", r"stages.\1.blocks.\2.attn.qkv."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.wo\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
]


def _convert_authors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _AUTHOR_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value  # norm.* and head.* keep their names; anything unknown is reported by strict loading
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: BiFormer) -> Dict[str, torch.Tensor]:
    """Converts a BiFormer checkpoint to attnzoo's names: the authors' release (the state dict
    under 'model', or bare) or attnzoo's own (passed through)."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith("downsample_layers.") for k in state_dict):
        return _convert_authors(state_dict)
    return dict(state_dict)


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BiFormerConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    topks: Tuple[int, ...] = (1, 4, 16, -2)
    head_dim: int = 32
    num_regions: int = 7
    mlp_ratio: float = 3.0
    side_dwconv: int = 5


_PAPER = "the authors' README (rayleizhu/BiFormer) and paper (arXiv:2303.08810), ImageNet-1k 224px"

# name: (config, published figures, the authors' checkpoint url (README, OneDrive))
_VARIANTS: Dict[str, Tuple[BiFormerConfig, Published, str]] = {
    "biformer_tiny": (BiFormerConfig((64, 128, 256, 512), (2, 2, 8, 2)), Published(13.1, 2.2, 81.4, 224, _PAPER),
                      "https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content"),
    "biformer_small": (BiFormerConfig((64, 128, 256, 512), (4, 4, 18, 4)), Published(25.5, 4.5, 83.8, 224, _PAPER),
                       "https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content"),
    "biformer_base": (BiFormerConfig((96, 192, 384, 768), (4, 4, 18, 4)), Published(56.8, 9.8, 84.3, 224, _PAPER),
                      "https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content"),
}


def _cfg(url: str) -> Dict:
    return dict(
        url=url,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,  # the authors' eval: resize 256, center crop 224, bicubic
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv1",
        classifier="head",
        license="mit",
        paper_ids="arXiv:2303.08810",
        origin_url="https://github.com/rayleizhu/BiFormer",
    )


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(url) for name, (_, _, url) in _VARIANTS.items()})


def _create(name: str, pretrained: bool = False, **kwargs) -> BiFormer:
    cfg = _VARIANTS[name][0]
    model_args = dict(
        embed_dims=cfg.embed_dims, depths=cfg.depths, topks=cfg.topks, head_dim=cfg.head_dim,
        num_regions=cfg.num_regions, mlp_ratio=cfg.mlp_ratio, side_dwconv=cfg.side_dwconv,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        BiFormer, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("BiFormer", __name__, _create, {n: v[1] for n, v in _VARIANTS.items()})
