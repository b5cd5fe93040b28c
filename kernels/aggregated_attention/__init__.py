"""Aggregated (pixel-focused) attention (TransNeXt): ``aggregated_attention(q, k, v, k_pool, v_pool, ...)``
and its no-local-branch form ``length_scaled_attention(q, k, v, ...)`` (TransNeXt's stage-4 full
attention).

Op boundary: the op takes the projected (not yet normalised) queries, local keys and values at
full resolution, the pooled keys and values, and the small learnable tensors; it does the L2
normalisation, the softplus temperature, the length scale ``log(L_n + P)``, the border masking,
the single softmax over [local | pooled] and the learnable-token aggregation. What depends on the
module and not on the attention math stays in the mixer (``attnzoo.layers.transnext_attn``): the
projections, the pooling that makes ``k_pool, v_pool``, and the continuous position bias MLP,
whose output reaches the op already evaluated as ``pool_bias: [heads, H * W, P]``. See
``reference.py`` for the exact definition.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _flops
from .._checks import cast_small_params, check_tensors
from .._dispatch import Op
from ._params import AggregatedParams, check_aggregated_inputs
from .reference import _aggregated_reference, aggregated_attention_reference, length_scale, local_window_mask

__all__ = [
    "aggregated_attention", "length_scaled_attention", "aggregated_attention_reference",
    "aggregated_attention_op", "aggregated_attention_flops", "AggregatedParams", "length_scale", "local_window_mask",
]

aggregated_attention_op = Op("aggregated_attention", _aggregated_reference)
"""The dispatcher of aggregated_attention (both public functions); a Triton backend registers here
with ``aggregated_attention_op.register('triton', ...)`` and receives the reference's arguments."""


def aggregated_attention_flops(params: AggregatedParams, batch: int, heads: int, head_dim: int, v_dim: int) -> int:
    """FLOPs of the attention math (2 per multiply-add), per query and head: the local branch's
    ``L`` logits (head_dim each), learnable-token weights ``q^ . learnable_tokens`` (head_dim each)
    and weighted sum of values (v_dim each), plus the pooled branch's ``P`` logits and values.
    Masked border slots count (they are in the window); normalisation and softmax are not counted."""
    h, w = params.spatial
    per_query = params.local_len * (2 * head_dim + v_dim) + params.pool_len * (head_dim + v_dim)
    return 2 * batch * heads * h * w * per_query


def _run(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
         learnable_bias, params: AggregatedParams, backend: Optional[str]) -> torch.Tensor:
    # Autocast: fp32 parameters meet bf16 / fp16 activations; they follow q's dtype.
    pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias = cast_small_params(
        q.dtype, pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias)
    args = (q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
            learnable_bias, params)
    impl = aggregated_attention_op.select(backend, *args)
    return _flops.run_counted(
        "aggregated_attention",
        lambda: aggregated_attention_flops(params, q.shape[0], q.shape[3], q.shape[4], v_pool.shape[3]),
        impl, *args,
    )


def aggregated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    *,
    query_embedding: torch.Tensor,
    temperature: torch.Tensor,
    pool_bias: Optional[torch.Tensor] = None,
    local_bias: Optional[torch.Tensor] = None,
    learnable_tokens: Optional[torch.Tensor] = None,
    learnable_bias: Optional[torch.Tensor] = None,
    window_size: int = 3,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Aggregated attention over 2-D heads-last inputs: each query attends, with one softmax, to
    its ``window_size x window_size`` neighbourhood (border-masked) and to ``P`` pooled tokens.

    Args:
        q: ``[B, H, W, heads, head_dim]`` queries as projected (the op L2-normalises them).
        k: ``[B, H, W, heads, head_dim]`` local keys as projected (L2-normalised in the op).
        v: ``[B, H, W, heads, v_dim]`` local values.
        k_pool: ``[B, P, heads, head_dim]`` pooled keys (L2-normalised in the op), P >= 1.
        v_pool: ``[B, P, heads, v_dim]`` pooled values.
        query_embedding: ``[heads, head_dim]``, added to the normalised queries.
        temperature: ``[heads]``, raw; the logits are scaled by ``softplus(temperature)``.
        pool_bias: ``[heads, H * W, P]`` position bias of the pooled logits (None: zero).
        local_bias: ``[heads, window_size ** 2]`` per-head bias of the local logits (None: zero).
        learnable_tokens: ``[heads, head_dim, window_size ** 2]``; ``q^ . learnable_tokens`` is
            added to the local attention weights (None: zero).
        learnable_bias: ``[heads, window_size ** 2]`` added to the local weights (None: zero).
        window_size: odd side of the local window (default 3).
        backend: None (best available), 'reference' or 'triton' (see ``attnzoo.kernels``).

    All tensors share q's device; the activations (q, k, v, k_pool, v_pool) share q's dtype, and the
    small learned tensors are cast to it (fp32 parameters under autocast). Returns ``[B, H, W, heads, v_dim]`` in q's dtype.
    """
    if window_size is None:
        raise ValueError("window_size must be an odd int >= 1; use length_scaled_attention for no local branch")
    params = check_aggregated_inputs(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                                     learnable_tokens, learnable_bias, window_size)
    return _run(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
                learnable_bias, params, backend)


def length_scaled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    query_embedding: torch.Tensor,
    temperature: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Full length-scaled cosine attention (TransNeXt stage 4): aggregated attention without the
    local branch, every position a key, scale ``softplus(temperature) * log(H * W)``.

    Args:
        q, k: ``[B, H, W, heads, head_dim]`` as projected (the op L2-normalises them).
        v: ``[B, H, W, heads, v_dim]``.
        query_embedding: ``[heads, head_dim]``; temperature: ``[heads]`` (raw).
        bias: ``[heads, H * W, H * W]`` position bias (None: zero).
        backend: None (best available), 'reference' or 'triton'.

    Returns ``[B, H, W, heads, v_dim]`` in q's dtype.
    """
    check_tensors(q=q, k=k, v=v)
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 5 or tuple(t.shape[:4]) != tuple(q.shape[:4]):
            raise ValueError(f"{name} must be [batch, H, W, heads, dim] matching q's {tuple(q.shape[:4])}, got {tuple(t.shape)}")
    k_flat, v_flat = k.flatten(1, 2), v.flatten(1, 2)
    params = check_aggregated_inputs(q, None, None, k_flat, v_flat, bias, None, query_embedding, temperature,
                                     None, None, None)
    return _run(q, None, None, k_flat, v_flat, bias, None, query_embedding, temperature, None, None, params, backend)


# Serves both public functions: ``length_scaled_attention`` (``window_size=None``) is not a dense SDPA
# call here but the same op without the local branch, and the kernels run it (no local slots,
# ``k_pool, v_pool`` = the full-resolution keys and values).
def _triton_kernels():
    from . import triton

    return triton


def _triton_entry():
    from ._library import aggregated_triton

    return aggregated_triton


aggregated_attention_op.register_triton(_triton_kernels, _triton_entry, bench="attnzoo.tools.bench_ops_aggregated")
