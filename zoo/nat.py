"""NAT and DiNAT: Neighborhood Attention Transformer and its dilated variant.

Papers:
    Neighborhood Attention Transformer, Hassani et al., CVPR 2023 (arXiv:2204.07143).
    Dilated Neighborhood Attention Transformer, Hassani and Shi, 2022 (arXiv:2209.15001).
Upstream: SHI-Labs/Neighborhood-Attention-Transformer (classification/nat.py, dinat.py; MIT) and
the Hugging Face transformers ports (models/dinat, models/deprecated/nat) whose weights live on
the Hub as ``shi-labs/{nat,dinat}-*``. Written for attnzoo from those definitions.

Architecture: a stem of two 3x3 stride-2 convolutions and a LayerNorm (stride 4), then four
stages of pre-norm transformer blocks whose mixer is 7x7 neighborhood attention with a relative
position bias; stages 2-4 open with a 3x3 stride-2 convolution + LayerNorm that doubles the
channels. DiNAT alternates dilation 1 with a dilation that spreads the kernel over the feature map.
Features are channels-last ``[B, H, W, C]`` inside; ``forward_intermediates`` returns NCHW.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs

from attnzoo.layers import NeighborhoodAttention2d, TransformerBlock

from ._checkpoint import unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["NAT", "NATConfig", "checkpoint_filter_fn"]


class ConvStem(nn.Module):
    """Two 3x3 stride-2 convolutions (no activation between them, as upstream) and a LayerNorm.
    NCHW image in, NHWC features out."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.conv1(x)).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """3x3 stride-2 convolution (no bias) to ``out_dim`` channels and a LayerNorm; NHWC in and out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATStage(nn.Module):
    def __init__(
        self,
        dim_in: int,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        dilations: Sequence[int],
        mlp_ratio: float,
        layer_scale: Optional[float],
        drop_path: Sequence[float],
        downsample: bool,
        backend: Optional[str],
    ):
        super().__init__()
        self.downsample = ConvDownsample(dim_in, dim) if downsample else nn.Identity()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            TransformerBlock(
                dim,
                NeighborhoodAttention2d(dim, num_heads, kernel_size, dilation=dilations[i], backend=backend),
                mlp_ratio=mlp_ratio,
                layer_scale=layer_scale,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return run_blocks(self, x)


class NAT(StagedModel):
    """NAT / DiNAT backbone with a classification head (timm model conventions)."""

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.downsample", (0,)),
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        (r"^norm", (99999,)),
    )
    # StagedModel's forward_* / prune / head: channels-last stages and final LayerNorm, NHWC features
    _stage_fmt = _norm_fmt = "NHWC"

    def __init__(
        self,
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilations: Optional[Sequence[Sequence[int]]] = None,
        layer_scale: Optional[float] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        check_global_pool(global_pool)
        num_stages = len(depths)
        if dilations is None:
            dilations = [[1] * d for d in depths]
        if len(num_heads) != num_stages or [len(d) for d in dilations] != list(depths):
            raise ValueError(f"num_heads {num_heads} and dilations {dilations} must match depths {depths}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NHWC"  # forward_features layout (timm's attribute, as its Swin)

        self.stem = ConvStem(in_chans, embed_dim)
        dpr = drop_path_rates(depths, drop_path_rate)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(NATStage(
                dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], kernel_size, dilations[i],
                mlp_ratio, layer_scale, dpr[i], downsample=i > 0, backend=backend,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Full names of the relative position bias tables (timm's optimizer factory matches names exactly)."""
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}


# --- checkpoint conversion ---------------------------------------------------------------------

# Hugging Face transformers (shi-labs/{nat,dinat}-* on the Hub): NatForImageClassification /
# DinatForImageClassification. ``{p}`` is the base prefix, "nat" or "dinat".
_HF_RULES = [
    (r"^{p}\.embeddings\.patch_embeddings\.projection\.0\.", "stem.conv1."),
    (r"^{p}\.embeddings\.patch_embeddings\.projection\.1\.", "stem.conv2."),
    (r"^{p}\.embeddings\.norm\.", "stem.norm."),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_before\.", r"stages.\1.blocks.\2.norm1."),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.rpb$", r"stages.\1.blocks.\2.attn.rpb"),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.output\.dense\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_after\.", r"stages.\1.blocks.\2.norm2."),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.intermediate\.dense\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^{p}\.encoder\.levels\.(\d+)\.layers\.(\d+)\.output\.dense\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^{p}\.layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_HF_QKV = re.compile(r"^(?:nat|dinat)\.encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_HF_LAYER_SCALE = re.compile(r"^(?:nat|dinat)\.encoder\.levels\.(\d+)\.layers\.(\d+)\.layer_scale_parameters$")
_HF_DOWNSAMPLE = re.compile(r"^(?:nat|dinat)\.encoder\.levels\.(\d+)\.downsample\.(reduction|norm)\.(.+)$")

# The authors' own checkpoints (classification/nat.py): levels.i.blocks.j..., downsample at the
# end of each level (ours opens the next stage).
_AUTHOR_RULES = [
    (r"^patch_embed\.proj\.0\.", "stem.conv1."),
    (r"^patch_embed\.proj\.1\.", "stem.conv2."),
    (r"^patch_embed\.norm\.", "stem.norm."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.gamma1$", r"stages.\1.blocks.\2.ls1.gamma"),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.gamma2$", r"stages.\1.blocks.\2.ls2.gamma"),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
]
_AUTHOR_DOWNSAMPLE = re.compile(r"^levels\.(\d+)\.downsample\.(reduction|norm)\.(.+)$")


def _rename(key: str, rules) -> Optional[str]:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def _downsample_key(match: re.Match) -> str:
    level, part, rest = match.groups()
    return f"stages.{int(level) + 1}.downsample.{'conv' if part == 'reduction' else 'norm'}.{rest}"


def _convert_hf(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    prefix = "dinat" if any(k.startswith("dinat.") for k in state_dict) else "nat"
    rules = [(p.format(p=prefix), r) for p, r in _HF_RULES]
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, str, str], Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if m := _HF_QKV.match(key):
            level, layer, which, kind = m.groups()
            qkv.setdefault((level, layer, kind), {})[which] = value
        elif m := _HF_LAYER_SCALE.match(key):
            level, layer = m.groups()
            if value.dim() != 2 or value.shape[0] != 2:
                raise ValueError(f"{key!r} has shape {tuple(value.shape)}; transformers' NAT stores the two layer scales as (2, dim)")
            out[f"stages.{level}.blocks.{layer}.ls1.gamma"] = value[0]
            out[f"stages.{level}.blocks.{layer}.ls2.gamma"] = value[1]
        elif m := _HF_DOWNSAMPLE.match(key):
            out[_downsample_key(m)] = value
        elif (new := _rename(key, rules)) is not None:
            out[new] = value
        else:
            out[key] = value  # left unmatched on purpose: strict loading names it
    for (level, layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"checkpoint has {sorted(parts)} for levels.{level}.layers.{layer}, expected query, key and value")
        shapes = {which: tuple(t.shape) for which, t in parts.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"query, key and value {kind}s of levels.{level}.layers.{layer} differ in shape: {shapes}")
        out[f"stages.{level}.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _convert_authors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := _AUTHOR_DOWNSAMPLE.match(key):
            out[_downsample_key(m)] = value
        elif (new := _rename(key, _AUTHOR_RULES)) is not None:
            out[new] = value
        else:
            out[key] = value  # norm.*, head.* keep their names
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: NAT) -> Dict[str, torch.Tensor]:
    """Converts a NAT/DiNAT checkpoint to attnzoo's names: the Hugging Face transformers format
    (``shi-labs/*`` on the Hub), the authors' original ``.pth`` format, or attnzoo's own."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(("nat.", "dinat.")) for k in state_dict):
        return _convert_hf(state_dict)
    if any(k.startswith(("levels.", "patch_embed.")) for k in state_dict):
        return _convert_authors(state_dict)
    return dict(state_dict)


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NATConfig:
    embed_dim: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    mlp_ratio: float
    drop_path_rate: float
    kernel_size: int = 7
    dilations: Optional[Tuple[Tuple[int, ...], ...]] = None
    layer_scale: Optional[float] = None


def _dilated(depths: Sequence[int], first: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """DiNAT's schedule: each stage alternates dilation 1 and ``first[i]``, starting with 1."""
    return tuple(tuple(1 if j % 2 == 0 else d for j in range(depth)) for depth, d in zip(depths, first))


_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, drop_path_rate=0.3)
_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0, drop_path_rate=0.5)
_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0, drop_path_rate=0.35)
_D224 = (8, 4, 2, 1)  # dinat.py: dilation ~ feature size / kernel at 224 px
_D384 = (13, 6, 3, 1)

_NAT_SRC = "NAT paper (arXiv:2204.07143) Table 2"
_DINAT_SRC = "DiNAT paper (arXiv:2209.15001), classification/DiNAT.md"

# name: (config, published figures, Hub id, tag)
_VARIANTS: Dict[str, Tuple[NATConfig, Published, str, str]] = {
    "nat_mini": (NATConfig(**_MINI), Published(20, 2.7, 81.8, 224, _NAT_SRC), "shi-labs/nat-mini-in1k-224", "in1k"),
    "nat_tiny": (NATConfig(**_TINY), Published(28, 4.3, 83.2, 224, _NAT_SRC), "shi-labs/nat-tiny-in1k-224", "in1k"),
    "nat_small": (NATConfig(**_SMALL, layer_scale=1e-5), Published(51, 7.8, 83.7, 224, _NAT_SRC), "shi-labs/nat-small-in1k-224", "in1k"),
    "nat_base": (NATConfig(**_BASE, layer_scale=1e-5), Published(90, 13.7, 84.3, 224, _NAT_SRC), "shi-labs/nat-base-in1k-224", "in1k"),
    "dinat_mini": (NATConfig(**_MINI, dilations=_dilated(_MINI["depths"], _D224)), Published(20, 2.7, 81.8, 224, _DINAT_SRC), "shi-labs/dinat-mini-in1k-224", "in1k"),
    "dinat_tiny": (NATConfig(**_TINY, dilations=_dilated(_TINY["depths"], _D224)), Published(28, 4.3, 82.7, 224, _DINAT_SRC), "shi-labs/dinat-tiny-in1k-224", "in1k"),
    "dinat_small": (NATConfig(**_SMALL, dilations=_dilated(_SMALL["depths"], _D224)), Published(51, 7.8, 83.8, 224, _DINAT_SRC), "shi-labs/dinat-small-in1k-224", "in1k"),
    "dinat_base": (NATConfig(**_BASE, layer_scale=1e-5, dilations=_dilated(_BASE["depths"], _D224)), Published(90, 13.7, 84.4, 224, _DINAT_SRC), "shi-labs/dinat-base-in1k-224", "in1k"),
    "dinat_large": (NATConfig(**_LARGE, dilations=_dilated(_LARGE["depths"], _D224)), Published(200, 30.6, 86.6, 224, _DINAT_SRC), "shi-labs/dinat-large-in22k-in1k-224", "in22k_ft_in1k"),
    "dinat_large_384": (NATConfig(**_LARGE, dilations=_dilated(_LARGE["depths"], _D384)), Published(200, 89.7, 87.4, 384, _DINAT_SRC), "shi-labs/dinat-large-in22k-in1k-384", "in22k_ft_in1k"),
    "dinat_large_11x11_384": (NATConfig(**_LARGE, kernel_size=11, dilations=_dilated(_LARGE["depths"], _D224)), Published(200, 92.4, 87.5, 384, _DINAT_SRC), "shi-labs/dinat-large-11x11-in22k-in1k-384", "in22k_ft_in1k"),
}


def _cfg(hub_id: str, img_size: int) -> Dict:
    return dict(
        hf_hub_id=hub_id,
        num_classes=1000,
        input_size=(3, img_size, img_size),
        pool_size=(img_size // 32, img_size // 32),
        crop_pct=0.875 if img_size == 224 else 1.0,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv1",
        classifier="head",
        license="mit",
        paper_ids="arXiv:2204.07143" if "/nat-" in hub_id else "arXiv:2209.15001",
        origin_url="https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
    )


default_cfgs = generate_default_cfgs({
    f"{name}.{tag}": _cfg(hub_id, published.img_size)
    for name, (_, published, hub_id, tag) in _VARIANTS.items()
})


def _create(name: str, pretrained: bool = False, **kwargs) -> NAT:
    cfg = _VARIANTS[name][0]
    model_args = dict(
        embed_dim=cfg.embed_dim, depths=cfg.depths, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        kernel_size=cfg.kernel_size, dilations=cfg.dilations, layer_scale=cfg.layer_scale,
        drop_path_rate=cfg.drop_path_rate,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        NAT, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("NAT", __name__, _create, {n: v[1] for n, v in _VARIANTS.items() if n.startswith("nat_")})
register_family("DiNAT", __name__, _create, {n: v[1] for n, v in _VARIANTS.items() if n.startswith("dinat_")})
