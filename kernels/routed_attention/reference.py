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


def _is_symbolic(params: RoutedParams) -> bool:
    return any(isinstance(n, torch.SymInt) for n in params.spatial)


def _mod(t: torch.Tensor, n) -> torch.Tensor:
    """``t % n`` for non-negative ``t`` and a size ``n`` that may be symbolic, written with a floor
    division: ONNX's exporter (onnxscript 0.7) fails on a remainder by a symbolic scalar."""
    return t - (t // n) * n


def _region_tokens(params: RoutedParams, region: torch.Tensor, token: torch.Tensor):
    """Row and column of token ``token`` (row-major in its region) of region ``region``
    (row-major id): broadcastable integer tensors."""
    s = params.num_regions
    rh, rw = params.region_size
    return (region // s) * rh + token // rw, (region % s) * rw + _mod(token, rw)


def _route_symbolic(q: torch.Tensor, k: torch.Tensor, params: RoutedParams) -> torch.Tensor:
    """``_route`` for symbolic sizes (``torch.export``): the region means are sums against 0/1
    region-membership matrices per axis (``[S, H]``, ``[S, W]``, built from ``arange``) divided
    by the region's token count, rather than a mean over a reshape that splits H into
    ``(S, rh)``: that split makes torch decide whether ``rh`` is 1, a guard on the example size.
    The same affinities up to the summation order."""
    b, h, w = q.shape[:3]
    s = params.num_regions
    rh, rw = params.region_size
    compute = _routing_dtype(q)
    region = torch.arange(s, device=q.device)[:, None]
    in_row = (torch.arange(h, device=q.device)[None, :] // rh == region).to(compute)  # [S, H]
    in_col = (torch.arange(w, device=q.device)[None, :] // rw == region).to(compute)  # [S, W]
    with torch.no_grad():
        def pooled(t: torch.Tensor) -> torch.Tensor:
            sums = torch.einsum("iy,jx,byxhd->bijhd", in_row, in_col, t.detach().to(compute))
            return (sums / (rh * rw)).reshape(b, s * s, -1)  # [B, S*S, heads*d]

        affinity = pooled(q) @ pooled(k).transpose(-1, -2)
        return affinity.topk(params.topk, dim=-1).indices


def _routed_reference_symbolic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: RoutedParams,
    scale: float,
    index: Optional[torch.Tensor],
) -> torch.Tensor:
    """The reference for symbolic spatial sizes (``torch.export`` with a dynamic height and
    width). The same math as ``_routed_reference``, but every tensor with a region-sized axis is
    made by a gather whose index is built from ``arange`` on the sizes (never by a reshape that
    splits or merges an axis that may be 1: each such reshape is a guard on the example size).
    The routed keys of a query region are ordered token-major (``rh*rw`` tokens x ``topk``
    regions), which the softmax does not see."""
    if index is None:
        index = _route_symbolic(q, k, params)
    b = q.shape[0]
    s, topk = params.num_regions, params.topk
    rh, rw = params.region_size
    dev = q.device
    regions = torch.arange(s * s, device=dev)[:, None]  # [S*S, 1]
    # one query slot more than a region has tokens (a repeat of its last token, never read back):
    # a query axis provably >= 2 long spares torch's "is it 1?" decisions in the matmuls
    tokens = torch.arange(rh * rw + 1, device=dev).clamp_max(rh * rw - 1)
    rows, cols = _region_tokens(params, regions, tokens[None, :])
    qr = q[:, rows, cols].permute(0, 3, 1, 2, 4)  # [B, heads, S*S, rh*rw + 1, d]
    slot = torch.arange(rh * rw * topk, device=dev)  # key slot j: token j // topk of routed region j % topk
    routed = index[:, :, slot % topk]  # [B, S*S, rh*rw*topk]
    k_rows, k_cols = _region_tokens(params, routed, (slot // topk)[None, None, :])
    batch = torch.arange(b, device=dev)[:, None, None]
    ks = k[batch, k_rows, k_cols].permute(0, 3, 1, 2, 4)  # [B, heads, S*S, rh*rw*topk, d]
    vs = v[batch, k_rows, k_cols].permute(0, 3, 1, 2, 4)
    # softmax attention written out: 5-D, which ONNX's scaled_dot_product_attention does not take;
    # float32 accumulation as the fused kernels of the static path
    compute = _routing_dtype(q)
    attn = ((qr.to(compute) @ ks.to(compute).transpose(-1, -2)) * scale).softmax(dim=-1)
    out = (attn @ vs.to(compute)).to(q.dtype)  # [B, heads, S*S, rh*rw + 1, dv]
    h, w = params.spatial
    y = torch.arange(h, device=dev)[:, None]
    x = torch.arange(w, device=dev)[None, :]
    region = (y // rh) * s + x // rw  # [H, W]
    token = _mod(y, rh) * rw + _mod(x, rw)
    return out[:, :, region, token].permute(0, 2, 3, 1, 4)  # [B, H, W, heads, dv]


def _routed_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: RoutedParams,
    scale: float,
    index: Optional[torch.Tensor],
) -> torch.Tensor:
    """The reference for already checked inputs (the dispatcher's entry point)."""
    if _is_symbolic(params):
        return _routed_reference_symbolic(q, k, v, params, scale, index)
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
    return _route_symbolic(q, k, params) if _is_symbolic(params) else _route(q, k, params)


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
