"""Mixers, position biases and blocks shared by the families (nn.Modules).

Every mixer takes channels-last ``[B, *spatial, C]``, returns the same shape, pads to what its
op needs and crops back, and keeps ``self.backend`` (see DESIGN.md "Mixer interface").

| module                    | what                                              | families   |
|---------------------------|---------------------------------------------------|------------|
| ``neighborhood_attn.py``  | NeighborhoodAttention{,1d,2d,3d} over gna, RPB    | NAT, DiNAT |
| ``transformer_block.py``  | TransformerBlock: pre-norm mixer + MLP, layer scale | NAT, DiNAT |
"""
from .neighborhood_attn import (
    NeighborhoodAttention,
    NeighborhoodAttention1d,
    NeighborhoodAttention2d,
    NeighborhoodAttention3d,
)
from .transformer_block import TransformerBlock

__all__ = [
    "NeighborhoodAttention", "NeighborhoodAttention1d", "NeighborhoodAttention2d", "NeighborhoodAttention3d",
    "TransformerBlock",
]
