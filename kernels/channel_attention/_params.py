"""Input checks for channel_attention, shared by every backend."""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_like, check_tensors, softmax_scale

__all__ = ["check_channel_attention_inputs"]


def check_channel_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]
) -> float:
    """Validates a channel_attention call; returns the scale (default ``head_dim ** -0.5``).

    Raises ValueError naming the argument and the accepted range.
    """
    check_tensors(q=q, k=k, v=v)
    if q.dim() < 4:
        raise ValueError(
            "q must be [batch, *spatial, heads, head_dim] with at least one spatial axis "
            f"(>= 4 dims), got shape {tuple(q.shape)}"
        )
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating point tensor, got dtype {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    check_like("q", q, k=k, v=v)
    if any(n < 1 for n in q.shape[1:]):  # not min(): it orders symbolic sizes (a guard)
        raise ValueError(f"every axis of q but the batch must be >= 1, got shape {tuple(q.shape)}")
    return softmax_scale(scale, q.shape[-1])
