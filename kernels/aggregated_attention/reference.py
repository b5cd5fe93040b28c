"""Aggregated (pixel-focused) attention (TransNeXt), reference implementation: the specification.

Layout is heads-last, as gna's: ``q, k`` are ``[B, H, W, heads, head_dim]``, ``v`` is
``[B, H, W, heads, v_dim]``; the pooled keys and values are ``k_pool: [B, P, heads, head_dim]``,
``v_pool: [B, P, heads, v_dim]`` (their spatial arrangement only matters through ``pool_bias``).

The math (Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR 2024,
as the authors' ``attention_native.py`` computes it), for query position ``n = (y, x)`` and head
``h`` with ``r = window_size // 2`` and ``L = window_size ** 2``:

* Cosine attention with a length scale. ``q^ = q / ||q||``, ``k^ = k / ||k||`` (L2 over
  head_dim, ``F.normalize``'s eps 1e-12) and

  ``s_n = (q^_n + query_embedding_h) * softplus(temperature_h) * log(L_n + P)``

  where ``L_n`` is the number of local window positions of ``n`` inside the grid (``L`` away
  from the borders). Without a local branch ``L_n = 0``: the scale is ``log(P)``.
* Local branch: window offsets ``(dy, dx)`` in ``[-r, r]^2``, flattened row-major to
  ``l = (dy + r) * window_size + (dx + r)``; position ``n + (dy, dx)`` is the key of slot ``l``.
  ``a_local[n, l] = s_n . k^_{n+(dy,dx)} + local_bias[h, l]``, and ``-inf`` (masked) where
  ``n + (dy, dx)`` falls outside the grid.
* Pooled branch: ``a_pool[n, p] = s_n . (k_pool_p / ||k_pool_p||) + pool_bias[h, n, p]``.
* One softmax over the ``L + P`` logits ``[a_local | a_pool]`` gives ``w_local, w_pool``.
* Output: ``out_n = sum_l (w_local[n, l] + q^_n . learnable_tokens[h, :, l] + learnable_bias[h, l]) v_{n+(dy,dx)}
  + sum_p w_pool[n, p] v_pool_p``; window slots outside the grid have zero values, so they add
  nothing (the learnable terms included), as upstream's zero-padded unfold gives.

Without a local branch (``window_size=None``) this is TransNeXt's stage-4 full attention, with
``k_pool, v_pool`` the full-resolution keys and values and ``pool_bias`` its ``[heads, N, N]``
position bias. ``pool_bias``, ``local_bias``, ``learnable_tokens`` and ``learnable_bias`` may be
None (zeros).

Algorithm: zero-pad k^ and v by ``r`` and unfold ``window_size^2`` windows per position (memory
``O(N L (head_dim + v_dim))``), dense ``N x P`` pooled logits. Computation runs in float32
(float64 for float64 inputs) and the result is cast back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._params import AggregatedParams, check_aggregated_inputs

__all__ = ["aggregated_attention_reference", "local_window_mask", "length_scale"]


def local_window_mask(height: int, width: int, window_size: int, device=None) -> torch.Tensor:
    """``[H, W, window_size ** 2]`` bool: True where window slot ``l`` of position ``(y, x)`` lies inside the grid."""
    r = window_size // 2
    offsets = torch.arange(-r, r + 1, device=device)
    ys = torch.arange(height, device=device)[:, None] + offsets  # [H, ws]
    xs = torch.arange(width, device=device)[:, None] + offsets  # [W, ws]
    in_y = (ys >= 0) & (ys < height)
    in_x = (xs >= 0) & (xs < width)
    return (in_y[:, None, :, None] & in_x[None, :, None, :]).reshape(height, width, window_size * window_size)


def length_scale(params: AggregatedParams, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[H, W]`` ``log(L_n + P)``: the per-query length scale (``log(P)`` without a local branch)."""
    h, w = params.spatial
    if params.window_size is None:
        local = torch.zeros(h, w, device=device, dtype=dtype)
    else:
        local = local_window_mask(h, w, params.window_size, device=device).sum(-1).to(dtype)
    return torch.log(local + params.pool_len)


def _windows(t: torch.Tensor, window_size: int) -> torch.Tensor:
    """``[B, H, W, heads, c]`` -> ``[B, H, W, heads, c, window_size ** 2]``, zeros outside the grid."""
    r = window_size // 2
    t = F.pad(t, (0, 0, 0, 0, r, r, r, r))
    return t.unfold(1, window_size, 1).unfold(2, window_size, 1).flatten(-2)


def _aggregated_reference(
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
    params: AggregatedParams,
) -> torch.Tensor:
    """The reference for already checked inputs (the dispatcher's entry point)."""
    out_dtype = q.dtype
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32

    def up(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(compute)

    q, k, v, k_pool, v_pool = up(q), up(k), up(v), up(k_pool), up(v_pool)
    pool_bias, local_bias, query_embedding = up(pool_bias), up(local_bias), up(query_embedding)
    temperature, learnable_tokens, learnable_bias = up(temperature), up(learnable_tokens), up(learnable_bias)
    b, h, w, heads, _ = q.shape

    q_hat = F.normalize(q, dim=-1)
    scale = F.softplus(temperature)[:, None] * length_scale(params, q.device, compute)[:, :, None, None]  # [H, W, heads, 1]
    s = (q_hat + query_embedding) * scale  # [B, H, W, heads, d]

    logits_pool = torch.einsum("byxhd,bphd->byxhp", s, F.normalize(k_pool, dim=-1))
    if pool_bias is not None:
        logits_pool = logits_pool + pool_bias.transpose(0, 1).reshape(h, w, heads, params.pool_len)
    if params.window_size is None:
        return torch.einsum("byxhp,bphv->byxhv", logits_pool.softmax(dim=-1), v_pool).to(out_dtype)

    ws = params.window_size
    k_win = _windows(F.normalize(k, dim=-1), ws)  # [B, H, W, heads, d, L]
    v_win = _windows(v, ws)  # [B, H, W, heads, v_dim, L]
    logits_local = torch.einsum("byxhd,byxhdl->byxhl", s, k_win)
    if local_bias is not None:
        logits_local = logits_local + local_bias
    inside = local_window_mask(h, w, ws, device=q.device)[:, :, None, :]  # [H, W, 1, L]
    logits_local = logits_local.masked_fill(~inside, float("-inf"))

    attn = torch.cat([logits_local, logits_pool], dim=-1).softmax(dim=-1)
    w_local, w_pool = attn.split([params.local_len, params.pool_len], dim=-1)
    if learnable_tokens is not None:
        w_local = w_local + torch.einsum("byxhd,hdl->byxhl", q_hat, learnable_tokens)
    if learnable_bias is not None:
        w_local = w_local + learnable_bias
    out = torch.einsum("byxhl,byxhvl->byxhv", w_local, v_win) + torch.einsum("byxhp,bphv->byxhv", w_pool, v_pool)
    return out.to(out_dtype)


def aggregated_attention_reference(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    v: Optional[torch.Tensor],
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    *,
    query_embedding: torch.Tensor,
    temperature: torch.Tensor,
    pool_bias: Optional[torch.Tensor] = None,
    local_bias: Optional[torch.Tensor] = None,
    learnable_tokens: Optional[torch.Tensor] = None,
    learnable_bias: Optional[torch.Tensor] = None,
    window_size: Optional[int] = 3,
) -> torch.Tensor:
    """Aggregated attention, reference implementation (see the module docstring for the math).

    Returns ``[B, H, W, heads, v_dim]`` in the dtype of q.
    """
    params = check_aggregated_inputs(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                                     learnable_tokens, learnable_bias, window_size)
    return _aggregated_reference(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                                 learnable_tokens, learnable_bias, params)
