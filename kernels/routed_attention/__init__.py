"""Bi-level routing attention (BiFormer): ``routed_attention(q, k, v, num_regions, topk)``.

Queries and keys are grouped into ``S x S`` regions; each query region is routed to the ``topk``
regions whose mean key is most affine to its mean query, and its tokens attend to the tokens of
those regions only. ``route_regions`` exposes the routing step; see ``reference.py`` for the exact
definition.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _flops
from .._dispatch import Op
from ._params import RoutedParams, check_route_inputs, check_routed_inputs
from .reference import _is_symbolic, _route, _route_symbolic, _routed_reference, route_regions_reference, routed_attention_reference

__all__ = [
    "routed_attention", "route_regions", "routed_attention_reference", "route_regions_reference",
    "routed_attention_op", "routed_attention_flops", "RoutedParams",
]

routed_attention_op = Op("routed_attention", _routed_reference)
"""The dispatcher of routed_attention: the reference and the fused Triton kernels (``triton.py``,
registered at the end of this module)."""


def routed_attention_flops(
    params: RoutedParams, batch: int, heads: int, head_dim: int, v_dim: int, routed: bool = True
) -> int:
    """FLOPs of the math (2 per multiply-add): every query against the ``topk * rh * rw`` keys of
    its routed regions (q.k over head_dim, p.v over v_dim) plus, when the op routes itself
    (``routed``), the region affinity ``(S*S)^2`` dot products over ``heads * head_dim`` channels.
    Region means and the top-k selection are not multiply-adds."""
    rh, rw = params.region_size
    queries = params.spatial[0] * params.spatial[1]
    attention = batch * heads * queries * params.topk * rh * rw * (head_dim + v_dim)
    routing = batch * params.regions * params.regions * heads * head_dim if routed else 0
    return 2 * (attention + routing)


def route_regions(q: torch.Tensor, k: torch.Tensor, num_regions: int, topk: int) -> torch.Tensor:
    """The routing step of bi-level routing attention.

    Args:
        q, k: ``[B, H, W, heads, head_dim]``, H and W multiples of ``num_regions``.
        num_regions: regions per side ``S`` (``S * S`` regions, row-major ids).
        topk: regions kept per query region, ``1 <= topk <= S * S``.

    Returns:
        ``[B, S*S, topk]`` int64 ids of the routed key regions of each query region, most affine
        first (affinity: dot product of the region means of q and k over all heads). No gradient.
    """
    params = check_route_inputs(q, k, num_regions, topk)
    return _route_symbolic(q, k, params) if _is_symbolic(params) else _route(q, k, params)


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: int,
    topk: int,
    scale: Optional[float] = None,
    index: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Bi-level routing attention over 2-D heads-last inputs.

    Args:
        q, k: ``[B, H, W, heads, head_dim]`` with H and W multiples of ``num_regions``.
        v: ``[B, H, W, heads, v_dim]``.
        num_regions: regions per side ``S`` (>= 1).
        topk: routed regions per query region, ``1 <= topk <= S * S`` (``S * S``: full attention).
        scale: softmax scale of ``q . k``, default ``head_dim ** -0.5`` (BiFormer uses
            ``(heads * head_dim) ** -0.5``; its mixer passes that).
        index: optional ``[B, S*S, topk]`` int64/int32 routed region ids (distinct per row, in
            ``[0, S*S)``), e.g. from ``route_regions`` or shared between calls; computed from q and
            k when None.
        backend: None (best available), 'reference' or 'triton' (fused kernels: CUDA, fp16 / bf16 /
            fp32, head_dim and v_dim multiples of 8 in [16, 128]; see ``attnzoo.kernels``).

    Returns:
        ``[B, H, W, heads, v_dim]`` in the dtype of q.
    """
    params, scale, index = check_routed_inputs(q, k, v, num_regions, topk, scale, index)
    impl = routed_attention_op.select(backend, q, k, v, params, scale, index)
    routed = index is None
    return _flops.run_counted(
        "routed_attention",
        lambda: routed_attention_flops(params, q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1], routed),
        impl, q, k, v, params, scale, index,
    )


def _triton_kernels():
    from . import triton

    return triton


def _triton_entry():
    from ._library import routed_triton

    return routed_triton


routed_attention_op.register_triton(_triton_kernels, _triton_entry, bench="attnzoo.tools.bench_ops_routed")
