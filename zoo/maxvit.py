"""MaxViT: Multi-Axis Vision Transformer.

Paper: MaxViT: Multi-Axis Vision Transformer, Tu et al., ECCV 2022 (arXiv:2204.01697).
Upstream: timm ``models/maxxvit.py`` (Apache-2.0): ``maxvit_*_tf_*`` are the paper's TensorFlow
weights (google-research/maxvit, Apache-2.0) ported by timm; ``maxvit_*_rw_*`` / ``maxvit_rmlp_*``
are timm-trained. Written for attnzoo from those definitions, with timm's parameter names and layouts: an
``az_maxvit_*`` state dict is its timm twin's, both ways (``checkpoint_filter_fn`` only resizes
bias tables trained at another partition and reads attnzoo's earlier names).

Architecture: a stem (3x3 stride-2 conv, BN + act, 3x3 conv; stride 2), then four stages of MaxViT
blocks; each block is MBConv (expand 4, SE; the first block of a stage strides 2, its shortcut
average-pools) -> block attention (P x P windows) + MLP -> grid attention (G x G dilated grid) +
MLP, dim_head 32. The partition is ``img_size // 32`` (7 at 224, 8 at 256, 12 at 384, 16 at 512),
fixed at construction; inputs of any size are padded to it inside the mixers. Head: final
LayerNorm + pooled linear classifier, or (``head_hidden_size``) pool -> LayerNorm -> linear + tanh
-> linear.

Layouts: MBConv works in NCHW; each attention half permutes to channels-last ``[B, H, W, C]``
(the mixer contract) and back, as timm does. ``forward_features`` returns NHWC;
``forward_intermediates`` returns the four stage outputs (strides 4, 8, 16, 32; timm also counts
the stride-2 stem as feature 0, attnzoo does not).

Two configurations: the TF port (``_tf_``: GELU-tanh, TF "same" padding, BatchNorm eps 1e-3,
LayerNorm eps 1e-5, MBConv width from its output, learned bias table in the TF layout) and timm's
own (``_rw_``: SiLU in MBConv, GELU in the MLPs, symmetric padding, no bias in the MBConv output
convs, MBConv width from its input, SE 1/16, LayerNorm eps 1e-6, a Swin-layout bias table or, for
``rmlp``, a bias MLP over log-spaced offsets).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import BatchNormAct2d, create_conv2d, get_act_layer, resize_rel_pos_bias_table
from timm.models import generate_default_cfgs, get_arch_pretrained_cfgs

from attnzoo.layers.maxvit_attn import BlockAttention2d, GridAttention2d, rpb_to_timm
from attnzoo.layers.mbconv import MBConv
from attnzoo.layers.transformer_block import TransformerBlock

from ._checkpoint import fit_layout, unwrap_state_dict
from ._common import StagedModel, check_global_pool, drop_path_rates, run_blocks
from ._registry import Published, register_family
from .hub import build_model

__all__ = ["MaxViT", "MaxViTConfig", "checkpoint_filter_fn"]


class Stem(nn.Module):
    """3x3 stride-2 conv -> BN + act -> 3x3 conv; NCHW in and out."""

    def __init__(self, in_chans: int, widths: Tuple[int, int], bias: bool, act_layer, norm_eps: float, padding: str):
        super().__init__()
        self.conv1 = create_conv2d(in_chans, widths[0], 3, stride=2, padding=padding, bias=bias)
        self.norm1 = BatchNormAct2d(widths[0], eps=norm_eps, act_layer=act_layer)
        self.conv2 = create_conv2d(widths[0], widths[1], 3, stride=1, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class MaxViTBlock(nn.Module):
    """MBConv -> block attention + MLP -> grid attention + MLP. NCHW in and out."""

    def __init__(self, conv: MBConv, attn_block: TransformerBlock, attn_grid: TransformerBlock):
        super().__init__()
        self.conv = conv
        self.attn_block = attn_block
        self.attn_grid = attn_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)


class MaxViTStage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, x)


class ClassifierHead(nn.Module):
    """Head over NCHW features: pool -> norm -> [linear + tanh] -> dropout -> linear.

    ``global_pool=''`` keeps the map: norm and linears act on the channels of every position and
    the result stays NCHW."""

    def __init__(self, in_features: int, num_classes: int, hidden_size: Optional[int], norm_eps: Optional[float],
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.global_pool = global_pool
        self.norm = nn.LayerNorm(in_features, eps=norm_eps) if norm_eps is not None else nn.Identity()
        if hidden_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(in_features, hidden_size))
            self.pre_logits.add_module("act", nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.num_features = hidden_size or in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        else:
            x = x.permute(0, 2, 3, 1)
        x = self.drop(self.pre_logits(self.norm(x)))
        if not pre_logits:
            x = self.fc(x)
        return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)


class MaxViT(StagedModel):
    """MaxViT backbone with a classification head (timm model conventions).

    Args:
        embed_dims, depths: per-stage width and number of MaxViT blocks.
        stem_width: stem conv widths (int or pair).
        stem_bias: bias in the stem convs.
        head_hidden_size: width of the head's tanh pre-logits layer (the norm moves into the head),
            or None for final norm + linear classifier.
        img_size: the resolution the partition is derived from (``img_size // partition_ratio``).
        partition_size: block / grid size, overriding ``img_size // partition_ratio``.
        dim_head: channels per attention head.
        rel_pos: ``'table'`` or ``'mlp'`` (see attnzoo.layers.maxvit_attn).
        layer_scale: init value of layer scales in the attention halves (None: none).
        tf_port: the TF configuration (see the module docstring) instead of timm's ``_rw_`` one.
        backend: gna backend for every mixer.
    """

    # timm's fine parameter groups after the stem (StagedModel.group_matcher)
    fine_groups = (
        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
        (r"^norm", (99999,)),
    )
    # StagedModel's forward_* / prune / head: NCHW stages (features as timm's MaxxVit), the stem is
    # feature 0 at stride 2, a final LayerNorm on channels-last (Identity where the head holds it)
    _norm_fmt = "NHWC"
    _stem_feature = True
    _head_pools = True

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 5, 2),
        stem_width: Union[int, Tuple[int, int]] = 64,
        stem_bias: bool = True,
        head_hidden_size: Optional[int] = 512,
        img_size: Union[int, Tuple[int, int]] = 224,
        partition_size: Optional[Union[int, Tuple[int, int]]] = None,
        partition_ratio: int = 32,
        dim_head: int = 32,
        rel_pos: str = "table",
        rel_pos_mlp_dim: int = 512,
        layer_scale: Optional[float] = None,
        tf_port: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        backend: Optional[str] = None,
    ):
        super().__init__(in_chans)
        check_global_pool(global_pool)
        if len(embed_dims) != len(depths):
            raise ValueError(f"embed_dims {embed_dims} and depths {depths} must have the same length")
        if partition_size is None:
            hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            partition_size = tuple(max(1, s // partition_ratio) for s in hw)
        self.partition_size = (partition_size, partition_size) if isinstance(partition_size, int) else tuple(partition_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = embed_dims[-1]
        stem_width = (stem_width, stem_width) if isinstance(stem_width, int) else tuple(stem_width)

        if tf_port:
            conv_act, mlp_act, padding, conv_eps, norm_eps = "gelu_tanh", "gelu_tanh", "same", 1e-3, 1e-5
            conv_kwargs = dict(expand_output=True, se_ratio=0.25, output_bias=True)
        else:
            conv_act, mlp_act, padding, conv_eps, norm_eps = "silu", "gelu", "", 1e-5, 1e-6
            conv_kwargs = dict(expand_output=False, se_ratio=1 / 16, output_bias=False)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        mlp_act = get_act_layer(mlp_act)

        self.stem = Stem(in_chans, stem_width, stem_bias, get_act_layer(conv_act), conv_eps, padding)
        rates = drop_path_rates(depths, drop_path_rate)
        stages = []
        # as timm's MaxxVit: the stem output is feature 0, then the four stages
        self.feature_info = [dict(num_chs=stem_width[1], reduction=2, module="stem")]
        in_chs = stem_width[1]
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if dim % dim_head:
                raise ValueError(f"embed_dims[{i}] ({dim}) must be a multiple of dim_head ({dim_head})")
            heads = dim // dim_head
            blocks = []
            for j in range(depth):
                dp = rates[i][j]
                # timm's layouts: the TF port's table is per head, qkv (q|k|v, heads, dim); timm's
                # own (_rw_, rmlp) tables are Swin-layout, qkv (heads, q|k|v, dim)
                attn_kwargs = dict(rel_pos=rel_pos, rel_pos_mlp_dim=rel_pos_mlp_dim, table_layout="tf" if tf_port else "swin",
                                   head_first=not tf_port, backend=backend)
                blocks.append(MaxViTBlock(
                    MBConv(in_chs, dim, stride=2 if j == 0 else 1, act_layer=conv_act, norm_eps=conv_eps,
                           padding=padding, drop_path=dp, **conv_kwargs),
                    TransformerBlock(dim, BlockAttention2d(dim, heads, self.partition_size, **attn_kwargs),
                                     mlp_ratio=4.0, layer_scale=layer_scale, drop_path=dp, norm_layer=norm_layer, act_layer=mlp_act),
                    TransformerBlock(dim, GridAttention2d(dim, heads, self.partition_size, **attn_kwargs),
                                     mlp_ratio=4.0, layer_scale=layer_scale, drop_path=dp, norm_layer=norm_layer, act_layer=mlp_act),
                ))
                in_chs = dim
            stages.append(MaxViTStage(blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        if head_hidden_size:
            self.norm = nn.Identity()
            self.head = ClassifierHead(self.num_features, num_classes, head_hidden_size, norm_eps, global_pool, drop_rate)
        else:
            self.norm = norm_layer(self.num_features)
            self.head = ClassifierHead(self.num_features, num_classes, None, None, global_pool, drop_rate)
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # timm's 'vit_eff' scheme: xavier for linears, EfficientNet fan-out normal for convs
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Full names of the relative position bias parameters (tables and bias MLPs)."""
        return {n for n, _ in self.named_parameters() if n.endswith(".relative_position_bias_table") or ".rel_pos.mlp." in n}

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def _prune_head(self) -> None:
        # the head's norm and pre-logits layer are sized for the last stage: a bare head instead
        self.head = ClassifierHead(self.num_features, 0, None, None, "")
        super()._prune_head()


# --- checkpoint conversion ---------------------------------------------------------------------

_TABLE = re.compile(r"^(.*\.attn)\.rel_pos\.relative_position_bias_table$")
# attnzoo's names before its state dicts became timm's: gna-layout table, bias MLP, qkv (q|k|v, heads, dim)
_OLD_TABLE = re.compile(r"^(.*\.attn)\.rpb$")
_OLD_MLP = re.compile(r"^(.*\.attn)\.rpb_mlp\.(.+)$")
_QKV = re.compile(r"^(.*\.attn)\.qkv\.(weight|bias)$")


def _resizable_table(value: torch.Tensor, target: Tuple[int, ...]) -> bool:
    """A bias table timm's ``resize_rel_pos_bias_table`` can bring to ``target``: the same layout and
    head count, trained at another partition size ('tf' ``[heads, 2P-1, 2P-1]``; 'swin'
    ``[(2P-1)^2, heads]`` from a square partition)."""
    if value.dim() != len(target):
        return False
    if value.dim() == 3:
        return value.shape[0] == target[0] and value.shape[1] % 2 == 1 and value.shape[2] % 2 == 1
    side = round(value.shape[0] ** 0.5)
    return value.dim() == 2 and value.shape[1] == target[1] and side * side == value.shape[0] and side % 2 == 1


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MaxViT) -> Dict[str, torch.Tensor]:
    """A MaxViT checkpoint in timm's format (``timm/maxvit_*`` on the Hub; attnzoo's own state dicts
    are the same) for ``model``: unwrapped from ``state_dict`` / ``model``; bias tables trained at
    another partition size resized as timm does (``resize_rel_pos_bias_table``; same layout and
    heads only); 1x1 conv weights ``(O, I, 1, 1)`` and linear ones ``(O, I)`` converted either way,
    as timm's filter does; attnzoo's earlier names (``*.attn.rpb`` in gna's layout,
    ``*.attn.rpb_mlp.*``, qkv rows in (q|k|v, heads, dim) order) converted to timm's. Any other
    shape is left as it is, for the load's shape check to refuse naming the key and both shapes.
    """
    state_dict = unwrap_state_dict(state_dict)
    old = any(_OLD_TABLE.match(k) or _OLD_MLP.match(k) for k in state_dict)
    ours = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := _OLD_TABLE.match(key):
            key, value = f"{m.group(1)}.rel_pos.relative_position_bias_table", rpb_to_timm(value, model.get_submodule(m.group(1)).rel_pos.layout)
        elif m := _OLD_MLP.match(key):
            key = f"{m.group(1)}.rel_pos.mlp.{m.group(2)}"
        elif old and (m := _QKV.match(key)) and model.get_submodule(m.group(1)).head_first and value.shape == ours[key].shape:
            heads = model.get_submodule(m.group(1)).num_heads
            value = value.reshape(3, heads, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        target = ours.get(key)
        if target is None or value.shape == target.shape:
            pass
        elif (m := _TABLE.match(key)) and _resizable_table(value, tuple(target.shape)):
            # weights trained at another partition size: interpolated as timm does
            mixer = model.get_submodule(m.group(1))
            value = resize_rel_pos_bias_table(value, new_window_size=mixer.partition_size, new_bias_shape=tuple(target.shape))
        else:
            value = fit_layout(value, target.shape)
        out[key] = value
    return out


# --- variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaxViTConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    stem_width: Union[int, Tuple[int, int]]
    stem_bias: bool
    head_hidden_size: Optional[int]
    img_size: int
    tf_port: bool
    rel_pos: str = "table"
    layer_scale: Optional[float] = None


def _tf(dims, depths, stem, img):
    return MaxViTConfig(dims, depths, stem, True, dims[-1], img, tf_port=True)


def _rw(dims, depths, stem, img, rel_pos="table", head_hidden_size=None, layer_scale=None):
    return MaxViTConfig(dims, depths, stem, False, head_hidden_size, img, tf_port=False, rel_pos=rel_pos, layer_scale=layer_scale)


_T, _S, _B, _L, _XL = (64, 128, 256, 512), (96, 192, 384, 768), (96, 192, 384, 768), (128, 256, 512, 1024), (192, 384, 768, 1536)
_SHORT, _LONG, _NANO = (2, 2, 5, 2), (2, 6, 14, 2), (1, 2, 3, 1)
_PAPER = "MaxViT paper (arXiv:2204.01697) Table 2, ImageNet-1k at 224"
_NONE = "timm-trained or not published at this resolution: no published figures"


def _unpublished(img: int) -> Published:
    return Published(None, None, None, img, _NONE)


# attnzoo name: (timm name, config, published figures). The first is the smallest (CI runs it).
_VARIANTS: Dict[str, Tuple[str, MaxViTConfig, Published]] = {}
for _name, _cfg, _pub in [
    ("maxvit_rmlp_pico_rw_256", _rw((32, 64, 128, 256), _SHORT, (24, 32), 256, "mlp"), _unpublished(256)),
    ("maxvit_nano_rw_256", _rw(_T, _NANO, (32, 64), 256), _unpublished(256)),
    ("maxvit_tiny_rw_224", _rw(_T, _SHORT, (32, 64), 224), _unpublished(224)),
    ("maxvit_rmlp_nano_rw_256", _rw(_T, _NANO, (32, 64), 256, "mlp"), _unpublished(256)),
    ("maxvit_rmlp_tiny_rw_256", _rw(_T, _SHORT, (32, 64), 256, "mlp"), _unpublished(256)),
    ("maxvit_rmlp_small_rw_224", _rw(_S, _SHORT, (32, 64), 224, "mlp", layer_scale=1e-6), _unpublished(224)),
    ("maxvit_rmlp_base_rw_224", _rw(_B, _LONG, (32, 64), 224, "mlp", head_hidden_size=768), _unpublished(224)),
    ("maxvit_rmlp_base_rw_384", _rw(_B, _LONG, (32, 64), 384, "mlp", head_hidden_size=768), _unpublished(384)),
    ("maxvit_tiny_tf_224", _tf(_T, _SHORT, 64, 224), Published(31, 5.6, 83.62, 224, _PAPER)),
    ("maxvit_tiny_tf_384", _tf(_T, _SHORT, 64, 384), _unpublished(384)),
    ("maxvit_tiny_tf_512", _tf(_T, _SHORT, 64, 512), _unpublished(512)),
    ("maxvit_small_tf_224", _tf(_S, _SHORT, 64, 224), Published(69, 11.7, 84.45, 224, _PAPER)),
    ("maxvit_small_tf_384", _tf(_S, _SHORT, 64, 384), _unpublished(384)),
    ("maxvit_small_tf_512", _tf(_S, _SHORT, 64, 512), _unpublished(512)),
    ("maxvit_base_tf_224", _tf(_B, _LONG, 64, 224), Published(119, 24.2, 84.95, 224, _PAPER)),
    ("maxvit_base_tf_384", _tf(_B, _LONG, 64, 384), _unpublished(384)),
    ("maxvit_base_tf_512", _tf(_B, _LONG, 64, 512), _unpublished(512)),
    ("maxvit_large_tf_224", _tf(_L, _LONG, 128, 224), Published(212, 43.9, 85.17, 224, _PAPER)),
    ("maxvit_large_tf_384", _tf(_L, _LONG, 128, 384), _unpublished(384)),
    ("maxvit_large_tf_512", _tf(_L, _LONG, 128, 512), _unpublished(512)),
    ("maxvit_xlarge_tf_224", _tf(_XL, _LONG, 192, 224), _unpublished(224)),
    ("maxvit_xlarge_tf_384", _tf(_XL, _LONG, 192, 384), _unpublished(384)),
    ("maxvit_xlarge_tf_512", _tf(_XL, _LONG, 192, 512), _unpublished(512)),
]:
    _VARIANTS["az_" + _name] = (_name, _cfg, _pub)

# Fields of timm's pretrained cfgs that describe its own module layout, not the weights' use.
_OURS = dict(fixed_input_size=False, first_conv="stem.conv1", classifier="head.fc", url="")


def _pretrained_cfgs() -> Dict[str, Dict]:
    """Every timm tag of every variant, from timm's registry, under attnzoo's names."""
    cfgs = {}
    for name, (timm_name, _, _) in _VARIANTS.items():
        for full, cfg in get_arch_pretrained_cfgs(timm_name).items():
            d = cfg.to_dict()
            d = {k: v for k, v in d.items() if k not in ("architecture", "tag")}
            d.update(_OURS, paper_ids="arXiv:2204.01697", origin_url="https://github.com/huggingface/pytorch-image-models")
            cfgs[f"{name}.{cfg.tag}"] = d
    return cfgs


default_cfgs = generate_default_cfgs(_pretrained_cfgs())


def _create(name: str, pretrained: bool = False, **kwargs) -> MaxViT:
    cfg = _VARIANTS[name][1]
    model_args = dict(
        embed_dims=cfg.embed_dims, depths=cfg.depths, stem_width=cfg.stem_width, stem_bias=cfg.stem_bias,
        head_hidden_size=cfg.head_hidden_size, img_size=cfg.img_size, rel_pos=cfg.rel_pos,
        layer_scale=cfg.layer_scale, tf_port=cfg.tf_port,
    )
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))
    return build_model(
        MaxViT, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


register_family("MaxViT", __name__, _create, {n: v[2] for n, v in _VARIANTS.items()})
