"""TransNeXt: aggregated (pixel-focused) attention and convolutional GLU.

Paper:
    TransNeXt: Robust Foveal Visual Perception for Vision Transformers, Dai Shi, CVPR 2024
    (arXiv:2311.17132).
Upstream: DaiShiResearch/TransNeXt (classification/transnext.py with attention_native.py;
Apache-2.0), whose ImageNet-1k weights are pickled ``.pth`` files on the Hub as
``DaiShiResearch/transnext-{micro,tiny,small,base}-224-1k`` and
``DaiShiResearch/transnext-{small,base}-384-1k-ft-1k``. Not in timm. Written for attnzoo from
those definitions; ``checkpoint_filter_fn`` converts the authors' checkpoints.

Architecture: four stages; each opens with an overlapping patch embedding (7x7 stride-4
convolution + LayerNorm for the first, 3x3 stride-2 for the others), runs pre-norm blocks
(mixer + convolutional GLU, stochastic depth, no layer scale) and ends with a LayerNorm.
Stages 1-3 mix with aggregated attention (3x3 local window + tokens pooled to ``1 / sr`` of the
stage grid, ``sr = 8, 4, 2``, one softmax), stage 4 with full length-scaled cosine attention;
both take a continuous position bias from an MLP over log-spaced relative coordinates
(``attnzoo.layers.transnext_attn``).

Any input size, one set of weights: upstream builds its masks, length scales, pooled sizes and
coordinate tables for one ``img_size`` at construction. Here they follow the actual input (see
``attnzoo.layers.transnext_attn``): the pooled grid of a stage is ``(max(1, H_s // sr), max(1,
W_s // sr))`` of the stage's input grid ``H_s x W_s`` (``ceil(H / 4)``, ``ceil(H / 8)``, ...), and
the relative coordinates are normalised by the stage grid at ``pretrain_size`` (224 for every
released checkpoint, the 384 fine-tunes included, as the authors' README prescribes). At 224 and
384 this is exactly upstream's model. The smallest input is 1x1 (every stage then has one token).

Features are channels-last ``[B, H, W, C]`` inside; ``forward_features`` and
``forward_intermediates`` return NCHW. Each stage's output is already normalised by that stage's
LayerNorm (the last one is the final norm), so ``forward_intermediates(norm=...)`` changes
nothing, as in timm's PVT-v2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs

from attnzoo.layers.convglu import ConvolutionalGLU
from attnzoo.layers.transnext_attn import AggregatedAttention2d, LengthScaledAttention2d

from ._checkpoint import unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["TransNeXt", "TransNeXtConfig", "checkpoint_filter_fn"]

# upstream's LayerNorms: eps 1e-6 in the blocks and at the end of each stage; the patch
# embeddings and the pooled branch keep nn.LayerNorm's default 1e-5
_BlockNorm = partial(nn.LayerNorm, eps=1e-6)


class OverlapPatchEmbed(nn.Module):
    """``k x k`` stride-``s`` convolution (padding ``k // 2``) and a LayerNorm; output grid
    ``ceil(H / s)`` for ``k = 2s - 1`` and ``k = 3, s = 2``. ``channels_last_in`` says whether the
    input is NHWC (between stages) or an NCHW image (the stem); the output is NHWC."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int, channels_last_in: bool):
        super().__init__()
        self.channels_last_in = channels_last_in
        self.proj = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class TransNeXtBlock(nn.Module):
    """``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``; NHWC."""

    def __init__(self, dim: int, attn: nn.Module, mlp_hidden: int, drop_path: float, proj_drop: float):
        super().__init__()
        self.norm1 = _BlockNorm(dim)
        self.attn = attn
        self.norm2 = _BlockNorm(dim)
        self.mlp = ConvolutionalGLU(dim, mlp_hidden, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransNeXtStage(nn.Module):
    def __init__(
        self,
        downsample: nn.Module,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        window_size: int,
        pretrain_grid: int,
        cpb_hidden: int,
        drop_path: Sequence[float],
        proj_drop: float,
        backend: Optional[str],
    ):
        super().__init__()
        self.downsample = downsample
        self.grad_checkpointing = False
        # upstream: hidden = int(2 * int(dim * mlp_ratio) / 3), the GLU's parameter-neutral width
        mlp_hidden = int(2 * int(dim * mlp_ratio) / 3)

        def mixer() -> nn.Module:
            common = dict(pretrain_size=pretrain_grid, cpb_hidden=cpb_hidden, proj_drop=proj_drop, backend=backend)
            if sr_ratio == 1:
                return LengthScaledAttention2d(dim, num_heads, **common)
            return AggregatedAttention2d(dim, num_heads, sr_ratio, window_size, **common)

        self.blocks = nn.Sequential(*[TransNeXtBlock(dim, mixer(), mlp_hidden, drop_path[i], proj_drop) for i in range(depth)])
        self.norm = _BlockNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return self.norm(run_blocks(self, x))


class TransNeXt(StagedModel):
    """TransNeXt backbone with a classification head (timm model conventions).

    Args:
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: per stage (``sr_ratio == 1``
            selects full attention, as upstream).
        window_size: local window of aggregated attention (odd, 3 upstream).
        pretrain_size: the image size the weights were pretrained at (normalises the CPB
            coordinates; 224 for all released checkpoints).
        patch_size: stride of the stem (4).
        cpb_hidden: hidden width of the CPB MLPs (512).
        backend: aggregated_attention backend of every mixer (None: dispatch rule).
    """

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.downsample", (0,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        (r"^stages\.(\d+)\.norm", (99999,)),
    )
    # StagedModel's forward_* / prune / head: channels-last stages, NCHW features; every stage ends
    # with its own LayerNorm, so there is no final norm (norm=True changes nothing)
    _stage_fmt = "NHWC"

    def __init__(
        self,
        embed_dims: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 15, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        window_size: int = 3,
        pretrain_size: int = 224,
        patch_size: int = 4,
        cpb_hidden: int = 512,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        check_global_pool(global_pool)
        num_stages = len(depths)
        if not all(len(s) == num_stages for s in (embed_dims, num_heads, mlp_ratios, sr_ratios)):
            raise ValueError(
                f"embed_dims {embed_dims}, num_heads {num_heads}, mlp_ratios {mlp_ratios} and sr_ratios {sr_ratios} "
                f"must have one entry per stage of depths {depths}"
            )
        if isinstance(pretrain_size, bool) or not isinstance(pretrain_size, int) or pretrain_size // (patch_size * 2 ** (num_stages - 1)) < 2:
            raise ValueError(
                f"pretrain_size must be an int with a last-stage grid of at least 2 "
                f"(>= {2 * patch_size * 2 ** (num_stages - 1)}), got {pretrain_size!r}"
            )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.pretrain_size = pretrain_size
        self.num_features = self.head_hidden_size = embed_dims[-1]

        self.stem = OverlapPatchEmbed(in_chans, embed_dims[0], 2 * patch_size - 1, patch_size, channels_last_in=False)
        dpr = drop_path_rates(depths, drop_path_rate)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stride = patch_size * 2**i
            downsample = nn.Identity() if i == 0 else OverlapPatchEmbed(embed_dims[i - 1], embed_dims[i], 3, 2, channels_last_in=True)
            stages.append(TransNeXtStage(
                downsample, embed_dims[i], depths[i], num_heads[i], mlp_ratios[i], sr_ratios[i], window_size,
                pretrain_size // stride, cpb_hidden, dpr[i], proj_drop_rate, backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # upstream's: truncated normal linears, fan-out normal convolutions
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Full names of the parameters upstream exempts from weight decay (its keywords
        query_embedding, relative_pos_bias_local, cpb, temperature; timm matches names exactly)."""
        keywords = ("query_embedding", "relative_pos_bias_local", "cpb", "temperature")
        return {name for name, _ in self.named_parameters() if any(k in name for k in keywords)}


# --- checkpoint conversion ---------------------------------------------------------------------

# Size-dependent buffers some upstream versions store: rebuilt here for the actual input size.
_DROPPED = re.compile(r"(^relative_pos_index\d+$|^relative_coords_table\d+$|\.seq_length_scale$|\.padding_mask$"
                      r"|\.relative_pos_index$|\.relative_coords_table$)")
_STAGE_KEY = re.compile(r"^(patch_embed|block|norm)(\d+)\.(.+)$")
_INNER_RULES = [
    (re.compile(r"\.attn\.cpb_fc([12])\."), r".attn.cpb.fc\1."),
    (re.compile(r"\.mlp\.dwconv\.dwconv\."), ".mlp.dwconv."),
]


def _convert_authors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        m = _STAGE_KEY.match(key)
        if m is None:
            out[key] = value  # head.* keeps its name; anything unknown is left for strict loading to name
            continue
        kind, stage, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
        if kind == "patch_embed":
            new = f"stem.{rest}" if stage == 0 else f"stages.{stage}.downsample.{rest}"
        elif kind == "block":
            new = f"stages.{stage}.blocks.{rest}"
            for pattern, repl in _INNER_RULES:
                new = pattern.sub(repl, new)
        else:
            new = f"stages.{stage}.norm.{rest}"
        out[new] = value
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: TransNeXt) -> Dict[str, torch.Tensor]:
    """Converts a TransNeXt checkpoint to attnzoo's names: the authors' ``.pth`` (raw, or wrapped
    in 'model' / 'state_dict') or attnzoo's own. Size-dependent buffers (coordinate tables, relative
    position indices, padding masks, length scales) are dropped: they are rebuilt per input size."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(("patch_embed1.", "block1.")) for k in state_dict):
        return _convert_authors(state_dict)
    return {k: v for k, v in state_dict.items() if not _DROPPED.search(k)}


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransNeXtConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    drop_path_rate: float
    mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: Tuple[int, ...] = (8, 4, 2, 1)
    window_size: int = 3
    pretrain_size: int = 224


_MICRO = dict(embed_dims=(48, 96, 192, 384), depths=(2, 2, 15, 2), num_heads=(2, 4, 8, 16))
_TINY = dict(embed_dims=(72, 144, 288, 576), depths=(2, 2, 15, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dims=(72, 144, 288, 576), depths=(5, 5, 22, 5), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dims=(96, 192, 384, 768), depths=(5, 5, 23, 5), num_heads=(4, 8, 16, 32))

_SRC = "TransNeXt classification/README.md model zoo (arXiv:2311.17132)"
_HUB = "DaiShiResearch/transnext-{}"

# name: (config (drop_path_rate from upstream's training configs), published figures, Hub repo suffix)
_VARIANTS: Dict[str, Tuple[TransNeXtConfig, Published, str]] = {
    "transnext_micro": (TransNeXtConfig(**_MICRO, drop_path_rate=0.15), Published(12.8, 2.7, 82.5, 224, _SRC), "micro-224-1k"),
    "transnext_tiny": (TransNeXtConfig(**_TINY, drop_path_rate=0.25), Published(28.2, 5.7, 84.0, 224, _SRC), "tiny-224-1k"),
    "transnext_small": (TransNeXtConfig(**_SMALL, drop_path_rate=0.45), Published(49.7, 10.3, 84.7, 224, _SRC), "small-224-1k"),
    "transnext_base": (TransNeXtConfig(**_BASE, drop_path_rate=0.6), Published(89.7, 18.4, 84.8, 224, _SRC), "base-224-1k"),
    "transnext_small_384": (TransNeXtConfig(**_SMALL, drop_path_rate=0.7), Published(49.7, 32.1, 86.0, 384, _SRC), "small-384-1k-ft-1k"),
    "transnext_base_384": (TransNeXtConfig(**_BASE, drop_path_rate=0.8), Published(89.7, 56.3, 86.2, 384, _SRC), "base-384-1k-ft-1k"),
}


def _cfg(suffix: str, img_size: int) -> Dict:
    return dict(
        hf_hub_id=_HUB.format(suffix),
        hf_hub_filename=f"transnext_{suffix.replace('-', '_')}.pth",
        num_classes=1000,
        input_size=(3, img_size, img_size),
        pool_size=(img_size // 32, img_size // 32),
        # upstream's evaluation: resize 256 + centre crop at 224; a plain resize (warp) at 384
        crop_pct=0.875 if img_size == 224 else 1.0,
        crop_mode="center" if img_size == 224 else "squash",
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.proj",
        classifier="head",
        license="apache-2.0",
        paper_ids="arXiv:2311.17132",
        origin_url="https://github.com/DaiShiResearch/TransNeXt",
    )


default_cfgs = generate_default_cfgs({
    f"{name}.in1k": _cfg(suffix, published.img_size) for name, (_, published, suffix) in _VARIANTS.items()
})


def _create(name: str, pretrained: bool = False, **kwargs) -> TransNeXt:
    cfg = _VARIANTS[name][0]
    model_args = dict(
        embed_dims=cfg.embed_dims, depths=cfg.depths, num_heads=cfg.num_heads, mlp_ratios=cfg.mlp_ratios,
        sr_ratios=cfg.sr_ratios, window_size=cfg.window_size, pretrain_size=cfg.pretrain_size,
        drop_path_rate=cfg.drop_path_rate,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        TransNeXt, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("TransNeXt", __name__, _create, {n: v[1] for n, v in _VARIANTS.items()})
