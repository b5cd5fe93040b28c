"""Bi-level routing attention (BiFormer), reference implementation: the specification.

Layout is heads-last, as gna's: ``q, k`` are ``[B, H, W, heads, head_dim]`` and ``v`` is
``[B, H, W, heads, v_dim]``; ``H`` and ``W`` are multiples of the number of regions per side ``S``.

The math (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023,
as the authors' ``ops/bra_legacy.py`` computes it):

* The grid is cut into ``S x S`` regions of ``rh x rw = (H / S) x (W / S)`` tokens; region
  ``r = i * S + j`` (row-major) holds the tokens ``(i rh + a, j rw + b)``.
* Region-level routing: ``q_r, k_r`` are the means of q and k over the tokens of region ``r``, over
  all heads at once (``heads * head_dim`` channels, as upstream, which routes on the full qk_dim
  before splitting heads). The affinity ``A[r, s] = q_r . k_s``; query region ``r`` is routed to the
  ``topk`` regions ``s`` of largest ``A[r, s]`` (``index[b, r, :]``). Routing is not differentiated:
  gradients flow through the token attention only (the paper's hard, non-differentiable routing;
  a positive scale of ``A`` does not change the selection, so none is applied).
* Token-to-token attention: every query token of region ``r`` attends, per head, to every key token
  of the union of its routed regions (``topk * rh * rw`` keys):
  ``out_i = sum_j softmax_j(scale * q_i . k_j) v_j`` with ``scale = head_dim ** -0.5`` by default
  (BiFormer itself passes ``qk_dim ** -0.5``, the full qk width; its mixer does so explicitly).

With ``topk = S * S`` every query sees every key: plain softmax attention.

Algorithm: one copy of q, k, v into region-major ``[B, heads, S*S, rh*rw, dim]`` order, one
``index_select`` that gathers the ``topk`` routed regions of k and v for every query region
(``topk`` copies of k and v, as upstream's gather, but through an index on the flattened region
axis, so the backward is an ``index_add`` into a k-sized buffer rather than upstream's
``gather`` backward into a ``S*S``-times expanded one), and one ``scaled_dot_product_attention``
over ``[B, heads * S*S, tokens, dim]`` views, so torch's fused kernels (CPU flash attention
included) run and the ``topk * rh * rw``-wide score matrix is not materialised where they do.

Precision: the routing affinities are computed in float32 (float64 for float64 inputs). The
token attention keeps the input dtype for storage, so float16/bfloat16 inputs gather
float16/bfloat16 copies (as many bytes as upstream under autocast, half of a float32 copy), and
accumulates in float32: ``scaled_dot_product_attention`` does for these dtypes in its fused
kernels, and its math path upcasts them (torch >= 2.5). The result has the dtype of q.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._params import RoutedParams, check_route_inputs, check_routed_inputs

__all__ = ["routed_attention_reference", "route_regions_reference"]


def _routing_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _route(q: torch.Tensor, k: torch.Tensor, params: RoutedParams) -> torch.Tensor:
    """``[B, S*S, topk]`` int64 region ids (checked inputs; no gradient)."""
    b, h, w = q.shape[:3]
    s = params.num_regions
    rh, rw = params.region_size
    compute = _routing_dtype(q)
    with torch.no_grad():
        def pooled(t: torch.Tensor) -> torch.Tensor:
            # [B, H, W, heads, d] -> [B, S*S, heads*d]: mean over the tokens of each region
            c = t.shape[-2] * t.shape[-1]
            t = t.detach().to(compute).reshape(b, s, rh, s, rw, c)
            return t.mean(dim=(2, 4)).reshape(b, s * s, c)

        affinity = pooled(q) @ pooled(k).transpose(-1, -2)  # [B, S*S (query region), S*S (key region)]
        return affinity.topk(params.topk, dim=-1).indices


def _region_major(t: torch.Tensor, params: RoutedParams) -> torch.Tensor:
    """[B, H, W, heads, c] -> [B, heads, S*S, rh*rw, c] (contiguous)."""
    b, _, _, heads, c = t.shape
    s = params.num_regions
    rh, rw = params.region_size
    t = t.reshape(b, s, rh, s, rw, heads, c).permute(0, 5, 1, 3, 2, 4, 6)
    return t.reshape(b, heads, s * s, rh * rw, c)


def _routed_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: RoutedParams,
    scale: float,
    index: Optional[torch.Tensor],
) -> torch.Tensor:
    """The reference for already checked inputs (the dispatcher's entry point)."""
    if index is None:
        index = _route(q, k, params)
    b, h, w, heads, d = q.shape
    dv = v.shape[-1]
    s, topk = params.num_regions, params.topk
    regions = s * s
    rh, rw = params.region_size
    tokens = rh * rw

    qr = _region_major(q, params).reshape(b, heads * regions, tokens, d)
    kr = _region_major(k, params).reshape(b * heads * regions, tokens, d)
    vr = _region_major(v, params).reshape(b * heads * regions, tokens, dv)
    # flat id of (batch, head, routed region) in the [B * heads * S*S] axis: [B, heads, S*S, topk]
    base = (torch.arange(b, device=q.device)[:, None] * heads + torch.arange(heads, device=q.device)[None, :]) * regions
    flat = (base[:, :, None, None] + index[:, None, :, :]).reshape(-1)
    ks = kr.index_select(0, flat).view(b, heads * regions, topk * tokens, d)
    vs = vr.index_select(0, flat).view(b, heads * regions, topk * tokens, dv)

    out = F.scaled_dot_product_attention(qr, ks, vs, scale=scale)  # [B, heads * S*S, tokens, dv]
    out = out.view(b, heads, s, s, rh, rw, dv).permute(0, 2, 4, 3, 5, 1, 6)
    return out.reshape(b, h, w, heads, dv)


def route_regions_reference(q: torch.Tensor, k: torch.Tensor, num_regions: int, topk: int) -> torch.Tensor:
    """The routing step alone (see the module docstring): ``[B, S*S, topk]`` int64 region ids,
    most affine first."""
    params = check_route_inputs(q, k, num_regions, topk)
    return _route(q, k, params)


def routed_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: int,
    topk: int,
    scale: Optional[float] = None,
    index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Bi-level routing attention, reference implementation (see the module docstring for the math).

    Returns ``[B, H, W, heads, v_dim]`` in the dtype of q.
    """
    params, scale, index = check_routed_inputs(q, k, v, num_regions, topk, scale, index)
    return _routed_reference(q, k, v, params, scale, index)
