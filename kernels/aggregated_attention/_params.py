"""Argument checks for aggregated_attention, shared by every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._checks import check_like, check_small_params, check_tensors

__all__ = ["AggregatedParams", "check_aggregated_inputs"]


@dataclass(frozen=True)
class AggregatedParams:
    """Geometry of one aggregated_attention call."""

    spatial: Tuple[int, int]  # (H, W) of the query grid (and of the local keys)
    window_size: Optional[int]  # odd side of the local window; None: no local branch
    pool_len: int  # P, number of pooled (global) keys

    @property
    def local_len(self) -> int:
        """Keys in one local window (``window_size ** 2``), 0 without a local branch."""
        return 0 if self.window_size is None else self.window_size ** 2


# The optional small learned tensors (cast to q's dtype by the op, never refused for their dtype).
_SMALL = ("pool_bias", "local_bias", "learnable_tokens", "learnable_bias")


def _shape(name: str, t: Optional[torch.Tensor], expected: Tuple[int, ...], layout: str) -> None:
    if t is None:
        return
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must be {layout} = {expected}, got shape {tuple(t.shape)}")


def check_aggregated_inputs(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    v: Optional[torch.Tensor],
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    pool_bias: Optional[torch.Tensor],
    local_bias: Optional[torch.Tensor],
    query_embedding: torch.Tensor,
    temperature: torch.Tensor,
    learnable_tokens: Optional[torch.Tensor],
    learnable_bias: Optional[torch.Tensor],
    window_size,
) -> AggregatedParams:
    """Validates an aggregated_attention call and returns its geometry.

    Raises ValueError naming the argument and the accepted range.
    """
    check_tensors(q=q, k_pool=k_pool, v_pool=v_pool, query_embedding=query_embedding, temperature=temperature)
    optional = dict(k=k, v=v, pool_bias=pool_bias, local_bias=local_bias,
                    learnable_tokens=learnable_tokens, learnable_bias=learnable_bias)
    check_tensors(**{n: t for n, t in optional.items() if t is not None})
    if window_size is not None and (
        isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0
    ):
        raise ValueError(f"window_size must be None (no local branch) or an odd int >= 1, got {window_size!r}")

    if q.dim() != 5:
        raise ValueError(f"q must be [batch, H, W, heads, head_dim] (5 dims), got shape {tuple(q.shape)}")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating point tensor, got dtype {q.dtype}")
    b, h, w, heads, head_dim = q.shape
    if any(n < 1 for n in (h, w, heads, head_dim)):  # not min(): it orders symbolic sizes (a guard)
        raise ValueError(f"q must have every dim but the batch >= 1, got shape {tuple(q.shape)}")

    if k_pool.dim() != 4 or tuple(k_pool.shape[:1]) != (b,) or tuple(k_pool.shape[2:]) != (heads, head_dim) or k_pool.shape[1] < 1:
        raise ValueError(
            f"k_pool must be [batch, P, heads, head_dim] = ({b}, P >= 1, {heads}, {head_dim}), got shape {tuple(k_pool.shape)}"
        )
    pool_len = k_pool.shape[1]
    if v_pool.dim() != 4 or tuple(v_pool.shape[:3]) != (b, pool_len, heads) or v_pool.shape[3] < 1:
        raise ValueError(
            f"v_pool must be [batch, P, heads, v_dim] = ({b}, {pool_len}, {heads}, v_dim >= 1), got shape {tuple(v_pool.shape)}"
        )
    v_dim = v_pool.shape[3]
    _shape("pool_bias", pool_bias, (heads, h * w, pool_len), "[heads, H * W, P]")
    _shape("query_embedding", query_embedding, (heads, head_dim), "[heads, head_dim]")
    _shape("temperature", temperature, (heads,), "[heads]")

    if window_size is None:
        given = [n for n in ("k", "v", "local_bias", "learnable_tokens", "learnable_bias") if optional[n] is not None]
        if given:
            raise ValueError(f"{', '.join(given)} must be None when window_size is None (no local branch)")
    else:
        if k is None or v is None:
            raise ValueError("k and v (the local keys and values) are required when window_size is set")
        local = window_size * window_size
        _shape("k", k, (b, h, w, heads, head_dim), "[batch, H, W, heads, head_dim] like q")
        _shape("v", v, (b, h, w, heads, v_dim), "[batch, H, W, heads, v_dim] with v_pool's v_dim")
        _shape("local_bias", local_bias, (heads, local), "[heads, window_size ** 2]")
        _shape("learnable_tokens", learnable_tokens, (heads, head_dim, local), "[heads, head_dim, window_size ** 2]")
        _shape("learnable_bias", learnable_bias, (heads, local), "[heads, window_size ** 2]")

    # Activations share q's dtype; the small learned tensors may be in another floating dtype
    # (fp32 parameters under autocast): the op casts them to q's dtype.
    activations = dict(k_pool=k_pool, v_pool=v_pool, **{n: optional[n] for n in ("k", "v") if optional[n] is not None})
    for name, t in activations.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
    check_like("q", q, **activations)
    small = dict(query_embedding=query_embedding, temperature=temperature,
                 **{n: optional[n] for n in _SMALL if optional[n] is not None})
    check_small_params("q", q, **small)
    return AggregatedParams((h, w), window_size, pool_len)
