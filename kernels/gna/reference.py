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

Plans: for int sizes (eager, torch.compile) the tiling is decided in Python and cached as
constant index tensors. Under ``torch.export`` with a dynamic size the spatial sizes are
symbolic and the plan is computed in the graph from them (``_symbolic_layout``): a halo bound
``W = T - s + k`` for every size, masked, and at least two tiles, so the exported program takes
any size without a guard on the example's.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .._trace_cache import size_key, trace_cached
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


def _window_py(j: int, group_len: int, kernel: int, stride: int, causal: bool) -> Tuple[int, int]:
    """``window_bounds`` for one query, in plain Python (used for the shape-level plan)."""
    if causal:
        leader = min((j // stride) * stride + stride - 1, group_len - 1)
        return max(leader - kernel + 1, 0), j + 1
    left = kernel // 2
    leader = min((j // stride) * stride + stride // 2, group_len - 1)
    start = min(max(leader, left), group_len - 1 - (kernel - 1 - left)) - left
    return start, start + kernel


@dataclass(frozen=True)
class _AxisShape:
    """Tiling of one spatial axis, decided from its sizes alone (plain Python ints and bools).

    ``torch.compile`` / ``torch.export`` evaluate it at trace time (it reads no tensor), so the
    branches it drives are static in the graph."""

    length: int
    kernel: int
    stride: int
    dilation: int
    causal: bool
    tile: int  # T: queries per tile
    n_tiles: int  # tiles per dilation group
    halo: int  # W: keys per tile
    pairs: int  # sum over queries of the keys in their window along this axis
    full: bool  # every tile query sees every halo key (no mask along this axis)
    uniform: bool  # every tile has the same mask and relative offsets along this axis
    # Blocked and divisible (L == d * n_tiles * T, every tile's keys are its own queries): the
    # tiling is a reshape of the axis into (n_tiles, T, d), so no gather is needed.
    reshape_only: bool
    n: int  # dilation groups x query tiles along the axis


def _axis_shape(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> _AxisShape:
    d = dilation
    tile = stride * math.ceil(kernel / stride)  # whole stride groups: queries sharing a window stay together
    n_tiles = math.ceil(math.ceil(length / d) / tile)  # group 0 is the longest
    windows = []  # per tile: (key start, [(start, end, query) relative to the key start, ...])
    halo = 0
    pairs = 0
    for g in range(d):
        glen = (length - g + d - 1) // d
        for t in range(n_tiles):
            rows = []
            for j in range(t * tile, t * tile + tile):
                jc = min(j, glen - 1)  # queries past the group's end repeat its last query
                start, end = _window_py(jc, glen, kernel, stride, causal)
                rows.append((start, end, jc))
                if j < glen:
                    pairs += end - start
            halo = max(halo, max(e for _, e, _ in rows) - min(s for s, _, _ in rows))
            windows.append((g, glen, rows))
    full = True
    uniform = True
    reshape_only = length == d * n_tiles * tile and halo == tile
    first = None
    for g, glen, rows in windows:
        key_start = max(min(min(s for s, _, _ in rows), glen - halo), 0)
        rel_rows = tuple((s - key_start, e - key_start, j - key_start) for s, e, j in rows)
        full = full and all(s <= 0 and e >= halo for s, e, _ in rel_rows)
        first = rel_rows if first is None else first
        uniform = uniform and rel_rows == first
        reshape_only = reshape_only and all(j == i for i, (_, _, j) in enumerate(rel_rows))
    return _AxisShape(length, kernel, stride, dilation, causal, tile, n_tiles, halo, pairs, full, uniform, reshape_only, d * n_tiles)


@functools.lru_cache(maxsize=512)
def _cached_axis_shapes(spatial: tuple, kernel_size: tuple, stride: tuple, dilation: tuple, is_causal: tuple) -> Tuple[_AxisShape, ...]:
    return tuple(_axis_shape(*args) for args in zip(spatial, kernel_size, stride, dilation, is_causal))


@torch._dynamo.assume_constant_result  # plain Python over sizes: a constant of the traced graph
def _axis_shapes_of(spatial: tuple, kernel_size: tuple, stride: tuple, dilation: tuple, is_causal: tuple) -> Tuple[_AxisShape, ...]:
    return _cached_axis_shapes(spatial, kernel_size, stride, dilation, is_causal)


def _axis_shapes(params: GNAParams) -> Tuple[_AxisShape, ...]:
    """Per-axis plans, cached; under ``torch.compile`` / ``torch.export`` evaluated once at trace
    time and baked in as constants (the spatial sizes are static: ``check_gna_inputs``)."""
    return _axis_shapes_of(params.spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)


def attended_pairs(params: GNAParams) -> int:
    """Number of (query, key) pairs the pattern contains, per batch element and head."""
    return math.prod(a.pairs for a in _axis_shapes(params))


def _axis_tensors(a: _AxisShape, device: torch.device):
    """Index tensors of one axis (torch ops on ``arange``, no value read back into Python):
    query / key input positions ``[n, T]`` / ``[n, W]``, the inverse query map ``[L]``, the
    in-window mask and the rpb offsets ``[n, T, W]``."""
    d, kernel, tile, n_tiles, halo = a.dilation, a.kernel, a.tile, a.n_tiles, a.halo
    groups = torch.arange(d, device=device)
    glen = ((a.length - groups + d - 1) // d).view(d, 1, 1)
    j = torch.arange(n_tiles * tile, device=device).view(1, n_tiles, tile)
    jc = torch.minimum(j, glen - 1)
    start, end = window_bounds(jc, glen, kernel, a.stride, a.causal)  # [d, n_tiles, T]
    key_start = torch.minimum(start.amin(-1), glen.view(d, 1) - halo).clamp_min(0)  # [d, n_tiles]
    key = key_start.unsqueeze(-1) + torch.arange(halo, device=device)  # [d, n_tiles, W]
    mask = (key.unsqueeze(-2) >= start.unsqueeze(-1)) & (key.unsqueeze(-2) < end.unsqueeze(-1))
    rel = (key.unsqueeze(-2) - jc.unsqueeze(-1) + kernel - 1).clamp(0, 2 * kernel - 2)
    q_pos = groups.view(d, 1, 1) + d * jc
    k_pos = (groups.view(d, 1, 1) + d * key).clamp_max(a.length - 1)
    p = torch.arange(a.length, device=device)
    q_inverse = ((p % d) * n_tiles + (p // d) // tile) * tile + (p // d) % tile
    n = d * n_tiles
    return q_pos.reshape(n, tile), q_inverse, k_pos.reshape(n, halo), mask.reshape(n, tile, halo), rel.reshape(n, tile, halo)


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


def _build_layout(params: GNAParams, device: torch.device, shapes: Optional[Tuple[_AxisShape, ...]] = None) -> _Layout:
    shapes = _axis_shapes(params) if shapes is None else shapes
    tensors = [_axis_tensors(a, device) for a in shapes]
    r = len(shapes)
    uniform = all(a.uniform for a in shapes)  # blocked, divisible: one bias for every tile
    mask = None
    rel = None
    table = [2 * ks - 1 for ks in params.kernel_size]
    for a, (axis, (_, _, _, m, rl)) in enumerate(zip(shapes, tensors)):
        if uniform:
            m, rl = m[:1], rl[:1]
        # place (n_a, T_a, W_a) at dims (a, r + a, 2r + a) of a 3r-dim broadcast
        shape = [1] * (3 * r)
        shape[a], shape[r + a], shape[2 * r + a] = m.shape
        m = m.view(shape)
        mask = m if mask is None else mask & m
        term = rl.view(shape) * math.prod(table[a + 1 :])
        rel = term if rel is None else rel + term
    grid = [1 if uniform else a.n for a in shapes] + [a.tile for a in shapes] + [a.halo for a in shapes]
    n, tq, wk = math.prod(grid[:r]), math.prod(grid[r : 2 * r]), math.prod(grid[2 * r :])
    return _Layout(
        q_index=[t[0].reshape(-1) for t in tensors],
        q_inverse=[t[1] for t in tensors],
        k_index=[t[2].reshape(-1) for t in tensors],
        q_tiles=[(a.n, a.tile) for a in shapes],
        k_tiles=[(a.n, a.halo) for a in shapes],
        mask=None if all(a.full for a in shapes) else mask.expand(grid).reshape(n, tq, wk),
        rel=rel.expand(grid).reshape(n, tq, wk),
        dilation=params.dilation if all(a.reshape_only for a in shapes) else None,
    )


def _symbolic_axis_shape(length, kernel: int, stride: int, dilation: int, causal: bool) -> _AxisShape:
    """``_axis_shape`` for a symbolic ``length`` (``torch.export`` with a dynamic size): every
    field that depends on the length is a SymInt expression or a bound that holds for every length,
    so nothing specialises the exported graph to the example size.

    The leaders of one tile's queries span at most ``T - s`` positions and a window start moves
    no faster than its leader, so every tile's keys lie in ``W = T - s + k`` consecutive
    positions; ``_axis_tensors`` masks what each query does not see (at sizes where the plan of
    ``_axis_shape`` has a smaller halo, the extra keys are masked). A blocked pattern
    (``stride == kernel``) on a length that is provably a multiple of ``dilation * kernel`` and
    at least two tiles long (the mixers pad to that: ``layers._padding.padded_blocks``) is a
    reshape, as in the static plan."""
    d = dilation
    tile = stride * -(-kernel // stride)
    n_tiles = (length + d * tile - 1) // (d * tile)  # ceil(ceil(L / d) / T)
    blocked = (stride == kernel and statically_known_true(length % (d * tile) == 0)
               and statically_known_true(n_tiles >= 2))
    if not blocked:
        # At least two tiles (a second one of repeated queries and masked keys at sizes that
        # need one): a tile count provably >= 2 spares the exported graph torch's shape
        # decisions "is this axis of size 1?", each of which would be a guard on the example.
        n_tiles = torch.sym_max(n_tiles, 2)
    halo = tile if blocked else tile - stride + kernel
    # pairs is only read by FLOP counting (attended_pairs), which runs eagerly on static sizes
    return _AxisShape(length, kernel, stride, dilation, causal, tile, n_tiles, halo, 0, blocked, blocked, blocked, d * n_tiles)


def _symbolic_layout(params: GNAParams, device: torch.device) -> _Layout:
    """The layout of a pattern whose spatial sizes are symbolic, built from tensor arithmetic on
    those sizes: under ``torch.export`` it becomes part of the graph (a few ``arange`` and index
    ops on the sizes), so the exported program computes the plan of whatever size it is given.
    Static sizes keep the cached constant plan of ``_layout``."""
    def build() -> _Layout:
        shapes = tuple(
            _axis_shape(*args) if all(isinstance(x, (int, bool)) for x in args) else _symbolic_axis_shape(*args)
            for args in zip(params.spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)
        )
        return _build_layout(params, device, shapes)

    # the blocks of a stage share the pattern: one layout per trace (kernels/_trace_cache.py)
    key = ("gna", tuple(size_key(n) for n in params.spatial), params.kernel_size, params.stride, params.dilation,
           params.is_causal, device)
    return trace_cached(key, build)


@functools.lru_cache(maxsize=128)
def _cached_layout(params: GNAParams, device: torch.device) -> _Layout:
    # real tensors even when first asked for inside a trace (non-strict torch.export runs this
    # under a fake-tensor mode): the cache outlives the trace, and a trace keeps them as constants
    with unset_fake_temporarily():
        return _build_layout(params, device)


@torch._dynamo.assume_constant_result
def _layout_of(spatial: tuple, kernel_size: tuple, stride: tuple, dilation: tuple, is_causal: tuple,
               device: torch.device) -> _Layout:
    return _cached_layout(GNAParams(spatial, kernel_size, stride, dilation, is_causal), device)


def _layout(params: GNAParams, device: torch.device) -> _Layout:
    """The pattern's index tensors, cached per (pattern, device). ``torch.compile`` and
    ``torch.export`` call this once at trace time and keep its tensors as constants of the graph
    (nothing of it is traced, nothing is read back at run time)."""
    return _layout_of(params.spatial, params.kernel_size, params.stride, params.dilation, params.is_causal, device)


def _to_tiles_by_reshape(x: torch.Tensor, sizes: List[Tuple[int, int]], dilation: Tuple[int, ...]) -> torch.Tensor:
    """[B, *spatial, H, D] -> [B, N, H, prod(tile), D] when every axis is (n_tiles, T, d): one copy."""
    r = len(sizes)
    b, h, dim = x.shape[0], x.shape[-2], x.shape[-1]
    shape = [b]
    for a in range(r):
        shape = shape + [sizes[a][0] // dilation[a], sizes[a][1], dilation[a]]
    x = x.view(shape + [h, dim])
    # axis a sits at dims (1 + 3a: tiles, 2 + 3a: T, 3 + 3a: d); tile index n = g * n_tiles + tile
    perm = [0] + [i for a in range(r) for i in (3 + 3 * a, 1 + 3 * a)] + [1 + 3 * r] + [2 + 3 * a for a in range(r)] + [2 + 3 * r]
    return x.permute(perm).reshape(b, math.prod([n for n, _ in sizes]), h, math.prod([t for _, t in sizes]), dim)


def _from_tiles_by_reshape(out: torch.Tensor, sizes: List[Tuple[int, int]], dilation: Tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``_to_tiles_by_reshape``: [B, N, H, Tq, Dv] -> [B, *spatial, H, Dv]."""
    r = len(sizes)
    b, h, dv = out.shape[0], out.shape[2], out.shape[-1]
    grouped = []
    for a in range(r):
        grouped = grouped + [dilation[a], sizes[a][0] // dilation[a]]
    out = out.view([b] + grouped + [h] + [t for _, t in sizes] + [dv])
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
    return x.reshape(b, math.prod([n for n, _ in sizes]), h, math.prod([t for _, t in sizes]), dim)


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
    symbolic = any(isinstance(n, torch.SymInt) for n in params.spatial)
    lay = _symbolic_layout(params, q.device) if symbolic else _layout(params, q.device)
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
    poisoned = None  # [B, N, H, Tq, 1]: queries whose window holds a non-finite key or value
    if lay.mask is not None:
        outside = torch.zeros(lay.mask.shape, dtype=compute, device=q.device)
        outside = outside.masked_fill_(~lay.mask, float("-inf")).unsqueeze(1)
        bias = outside if bias is None else bias + outside
    if lay.mask is not None and not symbolic:
        # A tile attends to keys outside some of its queries' windows under a -inf mask; a NaN or
        # Inf there would still reach those queries (NaN + -inf = NaN, 0 * Inf = NaN). Zero the
        # non-finite keys / values and mark exactly the queries whose window holds one. (Not in an
        # exported graph: there a non-finite key or value makes its whole tile NaN instead of the
        # queries that see it; its thirteen ops were a fifth of DiNAT's tracing time.)
        k_bad = ~torch.isfinite(kt).all(-1, keepdim=True)  # [B, N, H, Wk, 1]
        v_bad = ~torch.isfinite(vt).all(-1, keepdim=True)
        kt = kt.masked_fill(k_bad, 0.0)
        vt = vt.masked_fill(v_bad, 0.0)
        in_window = lay.mask.to(compute).unsqueeze(1)  # [N or 1, 1, Tq, Wk]
        poisoned = (in_window @ (k_bad | v_bad).to(compute)) > 0
    # one bias for every tile (a tile count that is symbolic is never taken to be 1)
    if bias is None or (isinstance(bias.shape[0], int) and bias.shape[0] == 1):
        # 4-D inputs: torch's fused CPU / GPU SDPA kernels take those (5-D falls back to the math path)
        b, n = qt.shape[:2]
        out = F.scaled_dot_product_attention(qt.flatten(0, 1), kt.flatten(0, 1), vt.flatten(0, 1), attn_mask=bias, scale=scale)
        out = out.view(b, n, *out.shape[1:])  # [B, N, H, Tq, Dv]
    else:
        # a bias per tile: tiles and heads share one axis, the bias broadcasts over the batch
        # (4-D as well: the fused kernels and ONNX's attention take only 4-D inputs)
        b, n, h = qt.shape[:3]
        out = F.scaled_dot_product_attention(
            qt.flatten(1, 2), kt.flatten(1, 2), vt.flatten(1, 2), attn_mask=bias.expand(n, h, -1, -1).flatten(0, 1), scale=scale,
        ).view(b, n, h, qt.shape[3], vt.shape[-1])  # [B, N, H, Tq, Dv]
    if torch.compiler.is_exporting():
        # torch.export records the views below for the output layout of SDPA it traced; ONNX
        # export later swaps SDPA for a kernel with another layout and re-checks those views.
        # A real copy to the contiguous layout keeps them valid for every SDPA implementation.
        out = out.clone(memory_format=torch.contiguous_format)
    if poisoned is not None:
        out = out.masked_fill(poisoned, float("nan"))

    if lay.dilation is not None:
        out = _from_tiles_by_reshape(out, lay.q_tiles, lay.dilation)
        return out if out.dtype == q.dtype else out.to(q.dtype)
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
    return out if out.dtype == q.dtype else out.to(q.dtype)
