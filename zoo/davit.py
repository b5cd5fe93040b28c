"""DaViT: Dual Attention Vision Transformers.

Paper:
    DaViT: Dual Attention Vision Transformers, Ding et al., ECCV 2022 (arXiv:2204.03645).
Upstream: dingmyu/davit (MIT) and timm's ``models/davit.py`` (timm's port, Apache-2.0), whose
weights live on the Hub as ``timm/davit_{tiny,small,base}.msft_in1k``. Written for attnzoo from
those definitions; the state-dict keys are timm's, so timm's checkpoints load unchanged.

Architecture: a 7x7 stride-4 convolution + LayerNorm stem, then four stages of dual blocks;
stages 2-4 open with LayerNorm + 2x2 stride-2 convolution. A dual block is a spatial block
(``ConvPosEnc`` -> 7x7 window attention, no position bias -> ``ConvPosEnc`` -> MLP) followed by a
channel block (the same with channel (group) attention, groups = heads). The head is average
pool -> LayerNorm -> linear. Inputs are zero-padded to multiples of 4 (stem), 2 (downsamplers)
and 7 (window attention, inside the mixer) at the right/bottom and cropped back, as timm does, so
every input size gives timm's outputs. Features are channels-last ``[B, H, W, C]`` inside;
``forward_intermediates`` returns NCHW (or NHWC).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_notrace_function

from attnzoo.layers._padding import round_up
from attnzoo.layers.davit_attn import ChannelAttention, ConvPosEnc, WindowAttention2d

from ._checkpoint import unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["DaViT", "DaViTConfig", "checkpoint_filter_fn"]


@register_notrace_function  # pads by the input size: one FX node (FX wraps only names without a leading _)
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads NCHW ``x`` at the bottom/right to a multiple of ``multiple`` (no-op when it is)."""
    h, w = x.shape[-2:]
    # round_up, not -h % multiple: a symbolic size (torch.export) stays provably a multiple
    pad_h, pad_w = round_up(h, multiple) - h, round_up(w, multiple) - w
    return x if statically_known_true(pad_h == 0) and statically_known_true(pad_w == 0) else F.pad(x, (0, pad_w, 0, pad_h))


class Stem(nn.Module):
    """7x7 stride-4 convolution (padding 3, after zero-padding the image to a multiple of 4) and a
    LayerNorm. NCHW image in, NHWC features (``ceil(H / 4) x ceil(W / 4)``) out."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 7, stride=4, padding=3)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(pad_to_multiple(x, 4)).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """LayerNorm, then a 2x2 stride-2 convolution (after zero-padding to even sizes); NHWC in and out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(self.norm(x).permute(0, 3, 1, 2), 2)
        return self.conv(x).permute(0, 2, 3, 1)


class DaViTBlock(nn.Module):
    """One half of a dual block, channels-last ``[B, H, W, C]``:
    ``x = cpe1(x); x = x + drop_path(attn(norm1(x))); x = cpe2(x); x = x + drop_path(mlp(norm2(x)))``.
    ``attn`` is a window attention mixer (spatial block) or a channel attention mixer (channel block)."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.cpe1 = ConvPosEnc(dim, 3)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = ConvPosEnc(dim, 3)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe1(x)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = self.cpe2(x)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class DaViTStage(nn.Module):
    """Optional downsampler, then ``depth`` dual blocks ``blocks.j = Sequential(spatial, channel)``."""

    def __init__(
        self,
        dim_in: int,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
        backend: Optional[str],
    ):
        super().__init__()
        self.downsample = Downsample(dim_in, dim) if downsample else nn.Identity()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                DaViTBlock(dim, WindowAttention2d(dim, num_heads, window_size, backend=backend), mlp_ratio, drop_path[j]),
                DaViTBlock(dim, ChannelAttention(dim, num_heads, backend=backend), mlp_ratio, drop_path[j]),
            )
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self, x)


class NormClassifierHead(nn.Module):
    """Average pool -> LayerNorm -> dropout -> linear (timm's ``NormMlpClassifierHead`` without a
    hidden layer; keys ``norm``, ``fc``). With ``global_pool=''`` the norm and classifier apply to
    every position of the NCHW map."""

    def __init__(self, dim: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.global_pool = check_global_pool(global_pool)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        else:  # keep the NCHW map; norm and classifier act on the channels of every position
            x = x.permute(0, 2, 3, 1)
        x = self.drop(self.norm(x))
        if not pre_logits:
            x = self.fc(x)
        return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)


class DaViT(StagedModel):
    """DaViT backbone with a classification head (timm model conventions)."""

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.downsample", (0,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        (r"^head\.norm", (99999,)),
    )
    # StagedModel's forward_* / prune / head: channels-last stages, NCHW features as timm's DaVit;
    # the LayerNorm follows the pooling (in the head), so norm=True changes nothing, as in timm
    _stage_fmt = "NHWC"
    _head_pools = True

    def __init__(
        self,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (1, 1, 3, 1),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        num_stages = len(depths)
        if len(embed_dims) != num_stages or len(num_heads) != num_stages:
            raise ValueError(f"embed_dims {embed_dims} and num_heads {num_heads} must have one entry per stage of depths {depths}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = embed_dims[-1]

        self.stem = Stem(in_chans, embed_dims[0])
        # stochastic depth rises linearly over the dual blocks; both halves of a dual block share it
        dpr = drop_path_rates(depths, drop_path_rate)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(DaViTStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], num_heads[i], window_size, mlp_ratio,
                dpr[i], downsample=i > 0, backend=backend,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = NormClassifierHead(self.num_features, num_classes, global_pool, drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def global_pool(self) -> str:
        return self.head.global_pool

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond what timm's optimizer factory already exempts (1-D parameters): DaViT has no
        position tables, and timm's DaVit declares none, so training matches timm's."""
        return set()

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        if global_pool is not None:
            self.head.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _prune_norm(self) -> None:
        self.head.norm = nn.Identity()  # the final norm belongs to the head

    def _prune_head(self) -> None:
        self._prune_norm()  # the head goes with its norm
        super()._prune_head()


# --- checkpoint conversion ---------------------------------------------------------------------

# The authors' checkpoints (dingmyu/davit): patch_embeds.i (i = 0 is the stem), main_blocks.i.j.k,
# cpe.0 / cpe.1 per block, norms + head at the end. timm's (and so attnzoo's) names otherwise.
_AUTHOR_RULES = [
    (r"^patch_embeds\.0\.proj\.", "stem.conv."),
    (r"^patch_embeds\.0\.norm\.", "stem.norm."),
    (r"^patch_embeds\.(\d+)\.proj\.", r"stages.\1.downsample.conv."),
    (r"^patch_embeds\.(\d+)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^main_blocks\.(\d+)\.(\d+)\.(\d+)\.cpe\.([01])\.", lambda m: f"stages.{m[1]}.blocks.{m[2]}.{m[3]}.cpe{int(m[4]) + 1}."),
    (r"^main_blocks\.(\d+)\.", r"stages.\1.blocks."),
    (r"^norms\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]


def _convert_authors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _AUTHOR_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value  # anything unmatched keeps its name: strict loading reports it
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: DaViT) -> Dict[str, torch.Tensor]:
    """Converts a DaViT checkpoint to attnzoo's names: timm's (``timm/davit_*`` on the Hub; the
    same names as attnzoo's, passed through) or the authors' original (dingmyu/davit)."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(("patch_embeds.", "main_blocks.")) for k in state_dict):
        return _convert_authors(state_dict)
    return dict(state_dict)


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DaViTConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    window_size: int = 7
    mlp_ratio: float = 4.0


_PAPER = "DaViT paper (arXiv:2204.03645), ImageNet-1k results"
_NONE = "timm config; no ImageNet-1k figures published for it"

# attnzoo name: (config, published figures, timm name, timm tag ('' for cfgs without weights))
_VARIANTS: Dict[str, Tuple[DaViTConfig, Published, str, str]] = {
    "az_davit_tiny": (DaViTConfig((96, 192, 384, 768), (1, 1, 3, 1), (3, 6, 12, 24)), Published(28.3, 4.5, 82.8, 224, _PAPER), "davit_tiny", "msft_in1k"),
    "az_davit_small": (DaViTConfig((96, 192, 384, 768), (1, 1, 9, 1), (3, 6, 12, 24)), Published(49.7, 8.8, 84.2, 224, _PAPER), "davit_small", "msft_in1k"),
    "az_davit_base": (DaViTConfig((128, 256, 512, 1024), (1, 1, 9, 1), (4, 8, 16, 32)), Published(87.9, 15.5, 84.6, 224, _PAPER), "davit_base", "msft_in1k"),
    "az_davit_large": (DaViTConfig((192, 384, 768, 1536), (1, 1, 9, 1), (6, 12, 24, 48)), Published(None, None, None, 224, _NONE), "davit_large", ""),
    "az_davit_huge": (DaViTConfig((256, 512, 1024, 2048), (1, 1, 9, 1), (8, 16, 32, 64)), Published(None, None, None, 224, _NONE), "davit_huge", ""),
    "az_davit_giant": (DaViTConfig((384, 768, 1536, 3072), (1, 1, 12, 3), (12, 24, 48, 96)), Published(None, None, None, 224, _NONE), "davit_giant", ""),
}


def timm_pretrained_cfg(timm_name: str, tag: str) -> Dict:
    """timm's own pretrained cfg of ``timm_name.tag`` as a dict, minus the per-model fields."""
    cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}" if tag else timm_name).to_dict()
    for field in ("architecture", "tag"):
        cfg.pop(field, None)
    return dict(cfg, paper_ids="arXiv:2204.03645", origin_url="https://github.com/dingmyu/davit")


default_cfgs = generate_default_cfgs({
    f"{name}.{tag}" if tag else name: timm_pretrained_cfg(timm_name, tag)
    for name, (_, _, timm_name, tag) in _VARIANTS.items()
})


def _create(name: str, pretrained: bool = False, **kwargs) -> DaViT:
    cfg = _VARIANTS[name][0]
    model_args = dict(
        embed_dims=cfg.embed_dims, depths=cfg.depths, num_heads=cfg.num_heads,
        window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        DaViT, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("DaViT", __name__, _create, {n: v[1] for n, v in _VARIANTS.items()})
