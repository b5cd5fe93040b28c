"""Key names and shapes of the authors' TransNeXt checkpoints, written from the upstream module
definitions (DaiShiResearch/TransNeXt classification/transnext.py and attention_native.py), not
from attnzoo's model, so that conversion is tested against what the released ``.pth`` files hold.

Upstream layout, stage ``i`` in 1..4:
* ``patch_embed{i}.proj`` (Conv2d: 7x7 from the image for i = 1, else 3x3 from the previous
  stage), ``patch_embed{i}.norm`` (LayerNorm);
* ``block{i}.{j}.norm1``, ``.attn.*``, ``.norm2``, ``.mlp.{fc1, dwconv.dwconv, fc2}``
  (ConvolutionalGLU, hidden ``int(2 * int(dim * mlp_ratio) / 3)``);
  - sr_ratio > 1 (AggregatedAttention): ``temperature [h, 1, 1]``, ``q``, ``query_embedding
    [h, 1, hd]``, ``kv``, ``proj``, ``sr`` (1x1 Conv2d), ``norm``, ``cpb_fc1 (2 -> 512)``,
    ``cpb_fc2 (512 -> h)``, ``relative_pos_bias_local [h, L]``, ``learnable_tokens [h, hd, L]``,
    ``learnable_bias [h, 1, L]``; non-persistent buffers ``seq_length_scale``, ``padding_mask``;
  - sr_ratio = 1 (Attention): ``temperature``, ``qkv``, ``query_embedding``, ``proj``,
    ``cpb_fc1``, ``cpb_fc2``; non-persistent buffer ``seq_length_scale``;
* ``norm{i}`` (LayerNorm); ``head`` (Linear); non-persistent model buffers
  ``relative_pos_index{i}``, ``relative_coords_table{i}``.

``size_dependent_buffers`` lists the non-persistent buffers with their shapes at 224 px, for
checkpoints saved by versions or forks that kept them.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

Shapes = Dict[str, Tuple[int, ...]]

# (embed_dims, depths, num_heads, mlp_ratios, sr_ratios) of the upstream @register_model functions
UPSTREAM_CONFIGS = {
    "transnext_micro": ((48, 96, 192, 384), (2, 2, 15, 2), (2, 4, 8, 16), (8, 8, 4, 4), (8, 4, 2, 1)),
    "transnext_tiny": ((72, 144, 288, 576), (2, 2, 15, 2), (3, 6, 12, 24), (8, 8, 4, 4), (8, 4, 2, 1)),
    "transnext_small": ((72, 144, 288, 576), (5, 5, 22, 5), (3, 6, 12, 24), (8, 8, 4, 4), (8, 4, 2, 1)),
    "transnext_base": ((96, 192, 384, 768), (5, 5, 23, 5), (4, 8, 16, 32), (8, 8, 4, 4), (8, 4, 2, 1)),
}


def _linear(prefix: str, out_f: int, in_f: int) -> Shapes:
    return {f"{prefix}.weight": (out_f, in_f), f"{prefix}.bias": (out_f,)}


def _norm(prefix: str, dim: int) -> Shapes:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def authors_keys(embed_dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int], mlp_ratios: Sequence[float],
                 sr_ratios: Sequence[int], window_size: int = 3, in_chans: int = 3, num_classes: int = 1000) -> Shapes:
    local = window_size * window_size
    keys: Shapes = {}
    for i, (dim, depth, heads, ratio, sr) in enumerate(zip(embed_dims, depths, num_heads, mlp_ratios, sr_ratios), start=1):
        k, c_in = (7, in_chans) if i == 1 else (3, embed_dims[i - 2])
        keys[f"patch_embed{i}.proj.weight"] = (dim, c_in, k, k)
        keys[f"patch_embed{i}.proj.bias"] = (dim,)
        keys.update(_norm(f"patch_embed{i}.norm", dim))
        hd = dim // heads
        hidden = int(2 * int(dim * ratio) / 3)
        for j in range(depth):
            p = f"block{i}.{j}"
            keys.update(_norm(f"{p}.norm1", dim))
            a = f"{p}.attn"
            keys[f"{a}.temperature"] = (heads, 1, 1)
            keys[f"{a}.query_embedding"] = (heads, 1, hd)
            if sr > 1:
                keys.update(_linear(f"{a}.q", dim, dim))
                keys.update(_linear(f"{a}.kv", 2 * dim, dim))
                keys.update(_linear(f"{a}.proj", dim, dim))
                keys[f"{a}.sr.weight"] = (dim, dim, 1, 1)
                keys[f"{a}.sr.bias"] = (dim,)
                keys.update(_norm(f"{a}.norm", dim))
                keys[f"{a}.relative_pos_bias_local"] = (heads, local)
                keys[f"{a}.learnable_tokens"] = (heads, hd, local)
                keys[f"{a}.learnable_bias"] = (heads, 1, local)
            else:
                keys.update(_linear(f"{a}.qkv", 3 * dim, dim))
                keys.update(_linear(f"{a}.proj", dim, dim))
            keys.update(_linear(f"{a}.cpb_fc1", 512, 2))
            keys.update(_linear(f"{a}.cpb_fc2", heads, 512))
            keys.update(_norm(f"{p}.norm2", dim))
            keys.update(_linear(f"{p}.mlp.fc1", 2 * hidden, dim))
            keys[f"{p}.mlp.dwconv.dwconv.weight"] = (hidden, 1, 3, 3)
            keys[f"{p}.mlp.dwconv.dwconv.bias"] = (hidden,)
            keys.update(_linear(f"{p}.mlp.fc2", dim, hidden))
        keys.update(_norm(f"norm{i}", dim))
    keys.update(_linear("head", num_classes, embed_dims[-1]))
    return keys


def size_dependent_buffers(depths: Sequence[int], sr_ratios: Sequence[int], img_size: int = 224, window_size: int = 3) -> Shapes:
    """The non-persistent buffers upstream builds from ``img_size`` (float tables, int indices, bool masks)."""
    keys: Shapes = {}
    local = window_size * window_size
    for i, (depth, sr) in enumerate(zip(depths, sr_ratios), start=1):
        grid = img_size // 2 ** (i + 1)
        n, p = grid * grid, (grid // sr) ** 2
        keys[f"relative_pos_index{i}"] = (n * p,)
        keys[f"relative_coords_table{i}"] = (7, 2)  # its row count varies with the size; any shape is dropped
        for j in range(depth):
            if sr > 1:
                keys[f"block{i}.{j}.attn.seq_length_scale"] = (n, 1)
                keys[f"block{i}.{j}.attn.padding_mask"] = (n, local)
            else:
                keys[f"block{i}.{j}.attn.seq_length_scale"] = ()
    return keys
