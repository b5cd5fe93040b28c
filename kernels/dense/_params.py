"""Input checks for dense attention, shared by every backend."""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_like, check_tensors, softmax_scale

__all__ = ["check_dense_inputs"]

MAX_SPATIAL_AXES = 3


def check_dense_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]) -> float:
    """Validates a dense attention call; returns the softmax scale.

    Raises ValueError naming the argument and the accepted range for anything the op cannot
    compute exactly.
    """
    check_tensors(q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k)):
        if not 4 <= t.dim() <= 3 + MAX_SPATIAL_AXES:
            raise ValueError(
                f"{name} must be [batch, *spatial, heads, head_dim] with 1 to {MAX_SPATIAL_AXES} spatial axes "
                f"(4 to {3 + MAX_SPATIAL_AXES} dims), got shape {tuple(t.shape)}"
            )
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating point tensor, got dtype {q.dtype}")
    if k.shape[0] != q.shape[0] or k.shape[-2:] != q.shape[-2:]:
        raise ValueError(
            f"k must be [batch, *key_spatial, heads, head_dim] with the batch, heads and head_dim of q "
            f"{tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if v.dim() != k.dim() or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"v must be [batch, *key_spatial, heads, v_dim] matching k {tuple(k.shape[:-1])} "
            f"in all but the last axis, got {tuple(v.shape)}"
        )
    check_like("q", q, k=k, v=v)
    if any(n < 1 for n in (*q.shape[1:], *k.shape[1:], v.shape[-1])):  # not min(): it orders symbolic sizes
        raise ValueError(
            f"spatial sizes, heads and head dims must be >= 1 (batch >= 0), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    return softmax_scale(scale, q.shape[-1])
