"""Dense (global) softmax attention: ``dense_attention(q, k, v, scale=None)``.

Every query attends to every key (SHViT's single-head attention; any global multi-head or
cross-attention); see ``reference.py`` for the exact definition and layout.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _flops
from .._dispatch import Op
from ._params import check_dense_inputs
from .reference import _dense_reference, dense_reference

__all__ = ["dense_attention", "dense_reference", "dense_op", "dense_flops"]

dense_op = Op("dense", _dense_reference)
"""The dispatcher of dense attention; a Triton backend registers here with ``dense_op.register('triton', ...)``."""


def dense_flops(batch: int, heads: int, q_tokens: int, k_tokens: int, head_dim: int, v_dim: int) -> int:
    """FLOPs of the attention math (2 per multiply-add: q.k over head_dim, p.v over v_dim)."""
    return 2 * batch * heads * q_tokens * k_tokens * (head_dim + v_dim)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Dense softmax attention over all tokens.

    Args:
        q: ``[B, *spatial_q, heads, head_dim]`` with 1 to 3 spatial axes (flattened row-major).
        k: ``[B, *spatial_k, heads, head_dim]``; ``spatial_k`` may differ from ``spatial_q``.
        v: ``[B, *spatial_k, heads, v_dim]``.
        scale: softmax scale, default ``head_dim ** -0.5``.
        backend: None (best available), 'reference' or 'triton' (see ``attnzoo.kernels``).

    Returns:
        ``[B, *spatial_q, heads, v_dim]`` in the dtype of q.
    """
    scale = check_dense_inputs(q, k, v, scale)
    impl = dense_op.select(backend, q, k, v, scale)
    b, h, d = q.shape[0], q.shape[-2], q.shape[-1]
    return _flops.run_counted(
        "dense",
        lambda: dense_flops(b, h, math.prod(q.shape[1:-2]), math.prod(k.shape[1:-2]), d, v.shape[-1]),
        impl, q, k, v, scale,
    )
