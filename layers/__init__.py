"""Mixers, position biases and blocks shared by the families (nn.Modules).

Every mixer takes channels-last ``[B, *spatial, C]``, returns the same shape, pads to what its
op needs and crops back, and keeps ``self.backend`` (docs/architecture.md, "Layers"). The
convolution-heavy families' mixers (HaloNet, SHViT) are the stated exceptions noted below.

| module                    | what                                                          | families   |
|---------------------------|---------------------------------------------------------------|------------|
| ``neighborhood_attn.py``  | NeighborhoodAttention{,1d,2d,3d} over gna, RPB                | NAT, DiNAT |
| ``transformer_block.py``  | TransformerBlock: pre-norm mixer + MLP, layer scale           | NAT, DiNAT, MaxViT |
| ``maxvit_attn.py``        | Block/GridAttention2d over gna (blocked / grid), MaxViT's RPB table or MLP | MaxViT |
| ``mbconv.py``             | MBConv with squeeze-excitation (NCHW)                         | MaxViT     |
| ``davit_attn.py``         | WindowAttention2d over gna, ChannelAttention, ConvPosEnc      | DaViT      |
| ``halo_attn.py``          | HaloAttention2d over halo_attention, factorised relative logits | HaloNet  |
| ``shvit_attn.py``         | SingleHeadAttention2d over dense on a channel slice, ConvNorm2d (NCHW in and out) | SHViT |
| ``biformer_attn.py``      | BiLevelRoutingAttention2d over routed_attention (LePE, auto-pad), AttentionLePE2d over dense | BiFormer |
| ``transnext_attn.py``     | AggregatedAttention2d / LengthScaledAttention2d over aggregated_attention, ContinuousPositionBias (CPB MLP, per-size cached tables) | TransNeXt |
| ``convglu.py``            | ConvolutionalGLU (gate through a 3x3 depthwise conv, NHWC)    | TransNeXt  |
"""
from .biformer_attn import AttentionLePE2d, BiLevelRoutingAttention2d
from .convglu import ConvolutionalGLU
from .davit_attn import ChannelAttention, ConvPosEnc, WindowAttention, WindowAttention2d
from .halo_attn import HaloAttention2d
from .maxvit_attn import BlockAttention2d, GridAttention2d, PartitionAttention2d
from .mbconv import MBConv
from .neighborhood_attn import (
    NeighborhoodAttention,
    NeighborhoodAttention1d,
    NeighborhoodAttention2d,
    NeighborhoodAttention3d,
)
from .shvit_attn import ConvNorm2d, SingleHeadAttention2d
from .transformer_block import TransformerBlock
from .transnext_attn import AggregatedAttention2d, ContinuousPositionBias, LengthScaledAttention2d

__all__ = [
    "NeighborhoodAttention", "NeighborhoodAttention1d", "NeighborhoodAttention2d", "NeighborhoodAttention3d",
    "TransformerBlock",
    "PartitionAttention2d", "BlockAttention2d", "GridAttention2d", "MBConv",
    "WindowAttention", "WindowAttention2d", "ChannelAttention", "ConvPosEnc",
    "HaloAttention2d",
    "ConvNorm2d", "SingleHeadAttention2d",
    "BiLevelRoutingAttention2d", "AttentionLePE2d",
    "AggregatedAttention2d", "LengthScaledAttention2d", "ContinuousPositionBias", "ConvolutionalGLU",
]
