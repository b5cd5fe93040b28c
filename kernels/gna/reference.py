"""Generalized neighborhood attention (GNA), reference implementation: the specification.

Layout is heads-last, as NATTEN's: ``q, k`` are ``[B, *spatial, heads, head_dim]`` and ``v`` is
``[B, *spatial, heads, v_dim]`` with 1, 2 or 3 spatial axes. The output has the shape of ``v``.

The math, per spatial axis of length ``L`` with kernel ``k``, stride ``s``, dilation ``d``:

* Dilation splits the axis into ``d`` groups (positions ``p`` with equal ``p % d``); group ``g``
  has ``L_g = ceil((L - g) / d)`` positions and a query only sees keys of its own group. Below,
  ``j`` is a position inside the group (``p = g + d * j``).
* Non-causal: queries form stride groups ``[s * (j // s), s * (j // s) + s)``; all share the
  window of the group's leader ``l = min(s * (j // s) + s // 2, L_g - 1)`` (the centre, the right
  one of two when ``s`` is even). The window is ``[c - k // 2, c - k // 2 + k)`` with the centre
  ``c = clamp(l, k // 2, L_g - 1 - (k - 1 - k // 2))``: at the borders it shifts inwards, it is
  never cut or zero-padded, so every query sees exactly ``k`` keys.
* Causal: the leader is the last query of the stride group ``l = min(s * (j // s) + s - 1, L_g - 1)``
  and the keys are ``[max(l - k + 1, 0), j]``: never later than the query itself.
* A query attends to the Cartesian product of its per-axis windows; ``stride == kernel_size``
  gives blocked (window) attention, ``stride == 1`` sliding-window neighborhood attention.
* With ``rpb`` (``[heads, 2k_1 - 1, ...]``), the logit of key ``i`` for query ``j`` gets
  ``rpb[h, i_1 - j_1 + k_1 - 1, ...]`` added (positions in group coordinates).

``out[b, j, h] = sum_i softmax_i(scale * q[b, j, h] . k[b, i, h] + rpb[h, i - j + k - 1]) v[b, i, h]``

Algorithm: queries are cut into tiles of ``T`` positions per axis inside each dilation group; the
keys any query of a tile can see lie in a halo of ``W`` positions. Each tile attends densely to its
gathered halo with a mask, in one batched ``scaled_dot_product_attention``. Memory is
``O(N * W^r)``, never ``O(N^2)``; for blocked patterns ``W == T == k`` and nothing is wasted.
Computation runs in float32 for float16 / bfloat16 / float32 inputs (float64 stays float64); the
result is cast back to the dtype of q.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ._params import GNAParams, check_gna_inputs

__all__ = ["gna_reference", "window_bounds", "attended_pairs"]


def window_bounds(j: torch.Tensor, group_len: torch.Tensor, kernel: int, stride: int, causal: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key window ``[start, end)`` of each query along one axis, in dilation-group coordinates.

    ``j`` and ``group_len`` are broadcastable integer tensors with ``0 <= j < group_len``.
    """
    if causal:
        leader = torch.minimum((j // stride) * stride + stride - 1, group_len - 1)
        return (leader - kernel + 1).clamp_min(0), j + 1
    left = kernel // 2
    right = kernel - 1 - left
    leader = torch.minimum((j // stride) * stride + stride // 2, group_len - 1)
    centre = torch.minimum(leader.clamp_min(left), group_len - 1 - right)
    start = centre - left
    return start, start + kernel


@dataclass(frozen=True)
class _AxisPlan:
    """Tiling of one spatial axis. ``n`` = dilation groups x query tiles along the axis."""

    tile: int  # T: queries per tile
    halo: int  # W: keys per tile
    q_index: torch.Tensor  # [n, T] input position of each tile query (clamped past the end)
    q_inverse: torch.Tensor  # [L] position -> flat index into (n, T)
    k_index: torch.Tensor  # [n, W] input position of each halo key (clamped past the end)
    mask: torch.Tensor  # [n, T, W] key inside the query's window
    rel: torch.Tensor  # [n, T, W] rpb index (key - query + k - 1), clamped where masked
    pairs: int  # sum over queries of the keys in their window along this axis
    # Blocked and divisible (L == d * n_tiles * T, every tile's keys are its own queries): the
    # tiling is a reshape of the axis into (n_tiles, T, d), so no gather is needed.
    reshape_only: bool


@functools.lru_cache(maxsize=512)
def _axis_plan(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> _AxisPlan:
    d = dilation
    groups = torch.arange(d)
    group_len = (length - groups + d - 1) // d  # [d]
    longest = int(group_len.max())
    # A tile holds whole stride groups so that the queries sharing a window stay together.
    tile = stride * math.ceil(kernel / stride)
    n_tiles = math.ceil(longest / tile)
    j = torch.arange(n_tiles * tile).view(1, n_tiles, tile)  # group coordinate of each tile query
    glen = group_len.view(d, 1, 1)
    jc = torch.minimum(j, glen - 1)  # queries past the group's end repeat its last query
    start, end = window_bounds(jc, glen, kernel, stride, causal)  # [d, n_tiles, T]
    tile_start = start.amin(-1)
    halo = int((end.amax(-1) - tile_start).max())
    key_start = torch.minimum(tile_start, glen.view(d, 1) - halo).clamp_min(0)  # [d, n_tiles]
    key = key_start.unsqueeze(-1) + torch.arange(halo)  # [d, n_tiles, W]
    mask = (key.unsqueeze(-2) >= start.unsqueeze(-1)) & (key.unsqueeze(-2) < end.unsqueeze(-1))
    rel = (key.unsqueeze(-2) - jc.unsqueeze(-1) + kernel - 1).clamp(0, 2 * kernel - 2)
    q_pos = groups.view(d, 1, 1) + d * jc
    k_pos = (groups.view(d, 1, 1) + d * key).clamp_max(length - 1)
    p = torch.arange(length)
    q_inverse = ((p % d) * n_tiles + (p // d) // tile) * tile + (p // d) % tile
    valid = j < glen
    pairs = int(((end - start) * valid).sum())
    n = d * n_tiles
    reshape_only = length == d * n_tiles * tile and halo == tile and bool((k_pos == q_pos).all())
    return _AxisPlan(
        tile, halo, q_pos.reshape(n, tile), q_inverse, k_pos.reshape(n, halo),
        mask.reshape(n, tile, halo), rel.reshape(n, tile, halo), pairs, reshape_only,
    )


def _plans(params: GNAParams) -> List[_AxisPlan]:
    return [
        _axis_plan(*args)
        for args in zip(params.spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)
    ]


def attended_pairs(params: GNAParams) -> int:
    """Number of (query, key) pairs the pattern contains, per batch element and head."""
    return math.prod(plan.pairs for plan in _plans(params))


@dataclass(frozen=True)
class _Layout:
    """Everything one gna call needs about its pattern, on the compute device."""

    q_index: List[torch.Tensor]  # per axis [n_a * T_a]
    q_inverse: List[torch.Tensor]  # per axis [L_a]
    k_index: List[torch.Tensor]  # per axis [n_a * W_a]
    q_tiles: List[Tuple[int, int]]  # per axis (n_a, T_a)
    k_tiles: List[Tuple[int, int]]  # per axis (n_a, W_a)
    mask: Optional[torch.Tensor]  # [N or 1, Tq, Wk] key in window; None when every entry is
    rel: torch.Tensor  # [N or 1, Tq, Wk] flat index into the rpb table of one head (1: same for every tile)
    dilation: Optional[Tuple[int, ...]]  # set when every axis is reshape_only: tile by view + permute


@torch.compiler.disable  # index bookkeeping, cached per pattern: keep it out of compiled graphs
@functools.lru_cache(maxsize=128)
def _layout(params: GNAParams, device: torch.device) -> _Layout:
    plans = _plans(params)
    r = len(plans)
    mask = None
    rel = None
    table = [2 * ks - 1 for ks in params.kernel_size]
    for a, plan in enumerate(plans):
        # place (n_a, T_a, W_a) at dims (a, r + a, 2r + a) of a 3r-dim broadcast
        shape = [1] * (3 * r)
        shape[a], shape[r + a], shape[2 * r + a] = plan.mask.shape
        m = plan.mask.view(shape)
        mask = m if mask is None else mask & m
        term = plan.rel.view(shape) * math.prod(table[a + 1 :])
        rel = term if rel is None else rel + term
    grid = [p.mask.shape[0] for p in plans] + [p.tile for p in plans] + [p.halo for p in plans]
    n, tq, wk = math.prod(grid[:r]), math.prod(grid[r : 2 * r]), math.prod(grid[2 * r :])
    mask = mask.expand(grid).reshape(n, tq, wk)
    rel = rel.expand(grid).reshape(n, tq, wk)
    if bool((rel == rel[:1]).all()) and bool((mask == mask[:1]).all()):
        rel, mask = rel[:1], mask[:1]  # every tile sees the same offsets (blocked, divisible): one bias for all
    return _Layout(
        q_index=[p.q_index.reshape(-1).to(device) for p in plans],
        q_inverse=[p.q_inverse.to(device) for p in plans],
        k_index=[p.k_index.reshape(-1).to(device) for p in plans],
        q_tiles=[(p.q_index.shape[0], p.tile) for p in plans],
        k_tiles=[(p.k_index.shape[0], p.halo) for p in plans],
        mask=None if bool(mask.all()) else mask.to(device),
        rel=rel.to(device),
        dilation=params.dilation if all(p.reshape_only for p in plans) else None,
    )


def _to_tiles_by_reshape(x: torch.Tensor, sizes: List[Tuple[int, int]], dilation: Tuple[int, ...]) -> torch.Tensor:
    """[B, *spatial, H, D] -> [B, N, H, prod(tile), D] when every axis is (n_tiles, T, d): one copy."""
    r = len(sizes)
    b, h, dim = x.shape[0], x.shape[-2], x.shape[-1]
    shape = [b]
    for (n, t), d in zip(sizes, dilation):
        shape += [n // d, t, d]
    x = x.view(shape + [h, dim])
    # axis a sits at dims (1 + 3a: tiles, 2 + 3a: T, 3 + 3a: d); tile index n = g * n_tiles + tile
    perm = [0] + [i for a in range(r) for i in (3 + 3 * a, 1 + 3 * a)] + [1 + 3 * r] + [2 + 3 * a for a in range(r)] + [2 + 3 * r]
    return x.permute(perm).reshape(b, math.prod(n for n, _ in sizes), h, math.prod(t for _, t in sizes), dim)


def _from_tiles_by_reshape(out: torch.Tensor, sizes: List[Tuple[int, int]], dilation: Tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``_to_tiles_by_reshape``: [B, N, H, Tq, Dv] -> [B, *spatial, H, Dv]."""
    r = len(sizes)
    b, h, dv = out.shape[0], out.shape[2], out.shape[-1]
    out = out.view([b] + [s for (n, _), d in zip(sizes, dilation) for s in (d, n // d)] + [h] + [t for _, t in sizes] + [dv])
    # [B, (d_a, tiles_a)..., H, T_a..., Dv] -> [B, (tiles_a, T_a, d_a)..., H, Dv]
    perm = [0] + [i for a in range(r) for i in (2 + 2 * a, 2 + 2 * r + a, 1 + 2 * a)] + [1 + 2 * r, 2 + 3 * r]
    return out.permute(perm).reshape([b] + [n * t for n, t in sizes] + [h, dv])


def _to_tiles(x: torch.Tensor, index: List[torch.Tensor], sizes: List[Tuple[int, int]]) -> torch.Tensor:
    """[B, *spatial, H, D] -> [B, N, H, prod(tile), D] by gathering ``index`` along each axis."""
    r = len(index)
    for a, idx in enumerate(index):
        x = x.index_select(1 + a, idx)
    b, h, dim = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.view([b] + [s for pair in sizes for s in pair] + [h, dim])
    # [B, n1, t1, ..., nr, tr, H, D] -> [B, n1..nr, H, t1..tr, D]
    perm = [0] + [1 + 2 * a for a in range(r)] + [1 + 2 * r] + [2 + 2 * a for a in range(r)] + [2 + 2 * r]
    x = x.permute(perm)
    return x.reshape(b, math.prod(n for n, _ in sizes), h, math.prod(t for _, t in sizes), dim)


def gna_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Generalized neighborhood attention in plain PyTorch (see the module docstring)."""
    params, scale = check_gna_inputs(q, k, v, kernel_size, stride, dilation, is_causal, rpb, scale)
    return _gna_reference(q, k, v, params, rpb, scale)


def _gna_reference(q, k, v, params: GNAParams, rpb: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    lay = _layout(params, q.device)
    r = params.rank
    compute = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation; float64 stays float64
    if lay.dilation is not None:
        qt, kt, vt = (_to_tiles_by_reshape(t.to(compute), lay.q_tiles, lay.dilation) for t in (q, k, v))
    else:
        qt = _to_tiles(q.to(compute), lay.q_index, lay.q_tiles)
        kt = _to_tiles(k.to(compute), lay.k_index, lay.k_tiles)
        vt = _to_tiles(v.to(compute), lay.k_index, lay.k_tiles)

    bias = None  # [N, H, Tq, Wk] additive logits, shared by the batch
    if rpb is not None:
        bias = rpb.to(compute).reshape(rpb.shape[0], -1)[:, lay.rel].transpose(0, 1)
    if lay.mask is not None:
        outside = torch.zeros(lay.mask.shape, dtype=compute, device=q.device)
        outside = outside.masked_fill_(~lay.mask, float("-inf")).unsqueeze(1)
        bias = outside if bias is None else bias + outside
    if bias is None or bias.shape[0] == 1:
        # 4-D inputs: torch's fused CPU / GPU SDPA kernels take those (5-D falls back to the math path)
        b, n = qt.shape[:2]
        out = F.scaled_dot_product_attention(qt.flatten(0, 1), kt.flatten(0, 1), vt.flatten(0, 1), attn_mask=bias, scale=scale)
        out = out.view(b, n, *out.shape[1:])  # [B, N, H, Tq, Dv]
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=scale)  # [B, N, H, Tq, Dv]

    if lay.dilation is not None:
        return _from_tiles_by_reshape(out, lay.q_tiles, lay.dilation).to(q.dtype)
    b, h, dv = out.shape[0], out.shape[2], out.shape[-1]
    out = out.view([b] + [n for n, _ in lay.q_tiles] + [h] + [t for _, t in lay.q_tiles] + [dv])
    # [B, n1..nr, H, t1..tr, Dv] -> [B, n1, t1, ..., nr, tr, H, Dv]
    perm = [0]
    for a in range(r):
        perm += [1 + a, 2 + r + a]
    perm += [1 + r, 2 + 2 * r]
    out = out.permute(perm).reshape([b] + [n * t for n, t in lay.q_tiles] + [h, dv])
    for a, inv in enumerate(lay.q_inverse):
        out = out.index_select(1 + a, inv)
    return out.to(q.dtype)
