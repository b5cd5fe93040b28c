"""Key names and shapes of upstream NAT/DiNAT checkpoints, written from the upstream module
definitions (not from attnzoo's model), so that conversion is tested against what the files hold.

* transformers format (Hub ``shi-labs/{nat,dinat}-*``): NatForImageClassification /
  DinatForImageClassification in transformers' models/deprecated/nat and models/dinat:
  ``{nat|dinat}.embeddings.patch_embeddings.projection.{0,1}``, ``embeddings.norm``,
  ``encoder.levels.i.layers.j.{layernorm_before, attention.self.{rpb,query,key,value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense,
  layer_scale_parameters (2, dim)}``, ``encoder.levels.i.downsample.{reduction, norm}`` (levels
  0-2), ``layernorm``, ``classifier``.
* authors' format (SHI-Labs classification/nat.py): ``patch_embed.proj.{0,1}``, ``patch_embed.norm``,
  ``levels.i.blocks.j.{norm1, attn.{qkv,rpb,proj}, norm2, mlp.{fc1,fc2}, gamma1, gamma2}``,
  ``levels.i.downsample.{reduction, norm}``, ``norm``, ``head``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

Shapes = Dict[str, Tuple[int, ...]]

# (embed_dim, depths, heads, mlp_ratio, layer_scale, kernel) as the upstream configs define them
UPSTREAM_CONFIGS = {
    "nat_mini": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3.0, False, 7),
    "nat_small": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2.0, True, 7),
    "dinat_mini": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3.0, False, 7),
    "dinat_large_11x11_384": (192, (3, 4, 18, 5), (6, 12, 24, 48), 2.0, False, 11),
}


def _linear(prefix: str, out_f: int, in_f: int) -> Shapes:
    return {f"{prefix}.weight": (out_f, in_f), f"{prefix}.bias": (out_f,)}


def _norm(prefix: str, dim: int) -> Shapes:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def transformers_keys(base: str, embed_dim: int, depths: Sequence[int], heads: Sequence[int], mlp_ratio: float,
                      layer_scale: bool, kernel: int, num_classes: int = 1000) -> Shapes:
    c = embed_dim
    keys: Shapes = {
        f"{base}.embeddings.patch_embeddings.projection.0.weight": (c // 2, 3, 3, 3),
        f"{base}.embeddings.patch_embeddings.projection.0.bias": (c // 2,),
        f"{base}.embeddings.patch_embeddings.projection.1.weight": (c, c // 2, 3, 3),
        f"{base}.embeddings.patch_embeddings.projection.1.bias": (c,),
        **_norm(f"{base}.embeddings.norm", c),
    }
    for i, (depth, h) in enumerate(zip(depths, heads)):
        dim = c * 2**i
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            p = f"{base}.encoder.levels.{i}.layers.{j}"
            keys.update(_norm(f"{p}.layernorm_before", dim))
            keys[f"{p}.attention.self.rpb"] = (h, 2 * kernel - 1, 2 * kernel - 1)
            for which in ("query", "key", "value"):
                keys.update(_linear(f"{p}.attention.self.{which}", dim, dim))
            keys.update(_linear(f"{p}.attention.output.dense", dim, dim))
            keys.update(_norm(f"{p}.layernorm_after", dim))
            keys.update(_linear(f"{p}.intermediate.dense", hidden, dim))
            keys.update(_linear(f"{p}.output.dense", dim, hidden))
            if layer_scale:
                keys[f"{p}.layer_scale_parameters"] = (2, dim)
        if i < len(depths) - 1:
            keys[f"{base}.encoder.levels.{i}.downsample.reduction.weight"] = (2 * dim, dim, 3, 3)
            keys.update(_norm(f"{base}.encoder.levels.{i}.downsample.norm", 2 * dim))
    final = c * 2 ** (len(depths) - 1)
    keys.update(_norm(f"{base}.layernorm", final))
    keys.update(_linear("classifier", num_classes, final))
    return keys


def authors_keys(embed_dim: int, depths: Sequence[int], heads: Sequence[int], mlp_ratio: float,
                 layer_scale: bool, kernel: int, num_classes: int = 1000) -> Shapes:
    c = embed_dim
    keys: Shapes = {
        "patch_embed.proj.0.weight": (c // 2, 3, 3, 3),
        "patch_embed.proj.0.bias": (c // 2,),
        "patch_embed.proj.1.weight": (c, c // 2, 3, 3),
        "patch_embed.proj.1.bias": (c,),
        **_norm("patch_embed.norm", c),
    }
    for i, (depth, h) in enumerate(zip(depths, heads)):
        dim = c * 2**i
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}"
            keys.update(_norm(f"{p}.norm1", dim))
            keys.update(_linear(f"{p}.attn.qkv", 3 * dim, dim))
            keys[f"{p}.attn.rpb"] = (h, 2 * kernel - 1, 2 * kernel - 1)
            keys.update(_linear(f"{p}.attn.proj", dim, dim))
            keys.update(_norm(f"{p}.norm2", dim))
            keys.update(_linear(f"{p}.mlp.fc1", hidden, dim))
            keys.update(_linear(f"{p}.mlp.fc2", dim, hidden))
            if layer_scale:
                keys[f"{p}.gamma1"] = (dim,)
                keys[f"{p}.gamma2"] = (dim,)
        if i < len(depths) - 1:
            keys[f"levels.{i}.downsample.reduction.weight"] = (2 * dim, dim, 3, 3)
            keys.update(_norm(f"levels.{i}.downsample.norm", 2 * dim))
    final = c * 2 ** (len(depths) - 1)
    keys.update(_norm("norm", final))
    keys.update(_linear("head", num_classes, final))
    return keys
