"""Input checks for channel_attention, shared by every backend."""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["check_channel_attention_inputs"]


def check_channel_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]
) -> float:
    """Validates a channel_attention call; returns the scale (default ``head_dim ** -0.5``).

    Raises ValueError naming the argument and the accepted range.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
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
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")
    if q.numel() == 0:
        raise ValueError(f"every axis of q must be >= 1, got shape {tuple(q.shape)}")
    if scale is None:
        return q.shape[-1] ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be None or a finite float, got {scale!r}")
    return float(scale)
