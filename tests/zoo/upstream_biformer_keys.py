"""Key names and shapes of the authors' BiFormer checkpoints, written from the upstream module
definitions (rayleizhu/BiFormer ``models/biformer.py``, ``models/_common.py``,
``ops/bra_legacy.py``), not from attnzoo's model, so that conversion is tested against what the
released files hold (the state dict is saved under 'model').

* ``downsample_layers.0`` = Sequential(Conv2d(3, C0/2, 3, s2), BatchNorm2d, GELU, Conv2d(C0/2, C0, 3, s2),
  BatchNorm2d): indices 0, 1, 3, 4; ``downsample_layers.i`` (i = 1..3) = Sequential(Conv2d(C_{i-1}, C_i,
  3, s2), BatchNorm2d).
* ``stages.i.j`` = Block: ``pos_embed`` (3x3 depthwise Conv2d), ``norm1``, ``attn``, ``norm2``, ``mlp`` =
  Sequential(Linear, Identity, GELU, Linear): indices 0 and 3.
  - topk > 0: BiLevelRoutingAttention: ``attn.lepe`` (5x5 depthwise), ``attn.qkv.qkv`` (Linear C ->
    2 qk_dim + C; qk_dim = C), ``attn.wo``; the router (param_routing=False) and kv_down ('identity')
    have no parameters.
  - topk = -2: AttentionLePE: ``attn.qkv`` (Linear C -> 3C, no bias), ``attn.proj``, ``attn.lepe``.
* ``norm`` (BatchNorm2d), ``head`` (Linear).
BatchNorm entries include running_mean, running_var and num_batches_tracked (shape ()).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

Shapes = Dict[str, Tuple[int, ...]]

# name: (embed_dims, depths, topks, mlp_ratio) as models/biformer.py registers them
UPSTREAM_CONFIGS = {
    "biformer_tiny": ((64, 128, 256, 512), (2, 2, 8, 2), (1, 4, 16, -2), 3),
    "biformer_small": ((64, 128, 256, 512), (4, 4, 18, 4), (1, 4, 16, -2), 3),
    "biformer_base": ((96, 192, 384, 768), (4, 4, 18, 4), (1, 4, 16, -2), 3),
}


def _conv(prefix: str, out_c: int, in_c_per_group: int, k: int) -> Shapes:
    return {f"{prefix}.weight": (out_c, in_c_per_group, k, k), f"{prefix}.bias": (out_c,)}


def _bn(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _ln(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (out_f, in_f)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_f,)
    return shapes


def authors_keys(embed_dims: Sequence[int], depths: Sequence[int], topks: Sequence[int], mlp_ratio: int,
                 in_chans: int = 3, num_classes: int = 1000, side_dwconv: int = 5) -> Shapes:
    c0 = embed_dims[0]
    keys: Shapes = {
        **_conv("downsample_layers.0.0", c0 // 2, in_chans, 3),
        **_bn("downsample_layers.0.1", c0 // 2),
        **_conv("downsample_layers.0.3", c0, c0 // 2, 3),
        **_bn("downsample_layers.0.4", c0),
    }
    for i in range(1, 4):
        keys.update(_conv(f"downsample_layers.{i}.0", embed_dims[i], embed_dims[i - 1], 3))
        keys.update(_bn(f"downsample_layers.{i}.1", embed_dims[i]))
    for i, (dim, depth, topk) in enumerate(zip(embed_dims, depths, topks)):
        hidden = int(mlp_ratio * dim)
        for j in range(depth):
            p = f"stages.{i}.{j}"
            keys.update(_conv(f"{p}.pos_embed", dim, 1, 3))
            keys.update(_ln(f"{p}.norm1", dim))
            if topk > 0:
                keys.update(_conv(f"{p}.attn.lepe", dim, 1, side_dwconv))
                keys.update(_linear(f"{p}.attn.qkv.qkv", 3 * dim, dim))
                keys.update(_linear(f"{p}.attn.wo", dim, dim))
            else:
                keys.update(_linear(f"{p}.attn.qkv", 3 * dim, dim, bias=False))
                keys.update(_linear(f"{p}.attn.proj", dim, dim))
                keys.update(_conv(f"{p}.attn.lepe", dim, 1, side_dwconv))
            keys.update(_ln(f"{p}.norm2", dim))
            keys.update(_linear(f"{p}.mlp.0", hidden, dim))
            keys.update(_linear(f"{p}.mlp.3", dim, hidden))
    keys.update(_bn("norm", embed_dims[-1]))
    keys.update(_linear("head", num_classes, embed_dims[-1]))
    return keys
