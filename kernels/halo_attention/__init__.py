"""Halo attention (HaloNet): ``halo_attention(q, k, v, height_rel, width_rel, block_size, halo_size)``.

Blocked local attention whose key window extends a halo beyond the query block, zero-padded at the
borders (padded keys take part in the softmax), with factorised relative logits; see
``reference.py`` for the exact definition.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _flops
from .._dispatch import Op
from ._params import HaloParams, check_halo_inputs
from .reference import _halo_reference, halo_attention_reference

__all__ = ["halo_attention", "halo_attention_reference", "halo_attention_op", "halo_attention_flops", "HaloParams"]

halo_attention_op = Op("halo_attention", _halo_reference)
"""The dispatcher of halo_attention: the reference and the fused Triton kernels (``triton.py``,
registered at the end of this module)."""


def halo_attention_flops(params: HaloParams, batch: int, heads: int, head_dim: int, v_dim: int) -> int:
    """FLOPs of the attention math (2 per multiply-add): every query against its ``win^2`` keys
    (q.k over head_dim, p.v over v_dim; zero-padded keys count, they are in the softmax) plus
    its relative logits (q . rel over head_dim for ``win`` offsets on each axis)."""
    win = params.window
    queries = (params.spatial[0] // params.query_stride) * (params.spatial[1] // params.query_stride)
    return 2 * batch * heads * queries * (win * win * (head_dim + v_dim) + 2 * win * head_dim)


def halo_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size: int,
    halo_size: int,
    query_stride: int = 1,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Halo attention over 2-D heads-last inputs.

    Args:
        q: ``[B, H / query_stride, W / query_stride, heads, head_dim]``.
        k: ``[B, H, W, heads, head_dim]`` with H and W multiples of ``block_size``.
        v: ``[B, H, W, heads, v_dim]``.
        height_rel, width_rel: relative embeddings ``[2 * (block_size + 2 * halo_size) - 1, head_dim]``,
            shared by all heads.
        block_size: side of the non-overlapping key blocks (>= 1).
        halo_size: keys added on each side of a block (>= 0); outside the grid they are zeros.
        query_stride: the query grid is the key grid subsampled by this (divides ``block_size``).
        scale: scale of ``q . k`` (not of the relative logits), default ``head_dim ** -0.5``.
        backend: None (best available), 'reference' or 'triton' (fused kernels: CUDA, fp16 / bf16 /
            fp32, head_dim and v_dim multiples of 8 in [16, 128], window ``b + 2h`` at most 64; see
            ``attnzoo.kernels``).

    Returns:
        ``[B, H / query_stride, W / query_stride, heads, v_dim]`` in the dtype of q.
    """
    params, scale = check_halo_inputs(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride, scale)
    impl = halo_attention_op.select(backend, q, k, v, height_rel, width_rel, params, scale)
    return _flops.run_counted(
        "halo_attention",
        lambda: halo_attention_flops(params, k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]),
        impl, q, k, v, height_rel, width_rel, params, scale,
    )


def _triton_kernels():
    from . import triton

    return triton


def _triton_entry():
    from ._library import halo_triton

    return halo_triton


halo_attention_op.register_triton(_triton_kernels, _triton_entry, bench="attnzoo.tools.bench_ops_halo")
