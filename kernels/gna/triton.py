"""Fused Triton kernels for generalized neighborhood attention (forward and backward).

Same semantics, layout and arguments as ``reference.py`` (the specification): ``q, k`` are
``[B, *spatial, heads, head_dim]``, ``v`` is ``[B, *spatial, heads, v_dim]``, 1 to 3 spatial
axes, per-axis kernel / stride / dilation / causal, optional ``rpb [heads, 2k-1 per axis]``.

Structure (flash-attention style, one rank-generic implementation):

* Every call is mapped onto a canonical 3-D problem: rank-1 and rank-2 inputs get size-1 leading
  axes with kernel, stride and dilation 1 (index arithmetic only: the kernels address contiguous
  ``[B, tokens, heads, dim]`` memory), so one kernel of each kind serves every rank.
* Queries are cut into multi-dimensional tiles of ``T0 x T1 x T2`` positions inside one dilation
  group per axis (group coordinates ``j``, input position ``g + d * j``). Window starts and ends are
  non-decreasing in ``j`` (``window_bounds``), so the keys that some query of a tile can see form
  one contiguous box (the halo): ``[start(first query), end(last query))`` per axis. The kernel
  walks that halo in key blocks of ``U0 x U1 x U2`` and masks each (query, key) pair with the same
  window formulas as the reference; no key outside the halo is ever loaded.
* Forward: online softmax in base 2 with float32 accumulators, no score matrix in memory; it
  stores the output and the per-query logsumexp (base 2) for the backward.
* Backward: ``delta = rowsum(dO * O)`` (float32), then two kernels as in FlashAttention-2: one over
  query tiles (dq, plus d_rpb) and one over key tiles (dk, dv). A key tile's queries are again one
  contiguous box: per axis, the queries whose window ends after the tile's first key and starts at
  or before its last one, found by a binary search over the monotone window bounds.
* d_rpb: the gradient of a bias entry sums ``dS`` over the batch and over every (query, key) pair
  with that offset, i.e. over many programs. The dq kernel adds each pair's ``dS`` into a float32
  ``[heads, table]`` buffer with atomics (cast to the dtype of rpb at the end). A separate
  reduction kernel would have to re-read or store the full ``dS`` (the score-sized tensor the
  fused kernels exist to avoid); atomics cost contention on a table of at most a few hundred
  entries per head but no extra memory traffic. Summation order, hence the last bits of d_rpb,
  varies from run to run on a GPU.
* Blocked patterns (``stride == kernel_size``, not causal, every axis a multiple of
  ``kernel * dilation``, at most 128 positions per window: MaxViT block / grid, window attention)
  use tiles of exactly one window: a query tile's halo is the tile itself, every (query, key)
  pair of it is in the window, and the kernels skip the window mask (``WINDOW_MASK=False``); only
  the lanes padding ``prod(kernel)`` to a power of two are masked, none when ``prod(kernel)``
  already is a power of two of at least 16 (4x4, 8x8 windows).

Under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment when this module is first
imported; Triton decides at decoration time, so the variable must be set before the process
imports triton: the interpreter tests run in a process of their own) the kernels run on the CPU,
on CPU tensors, with one fixed small tile per rank. On CUDA the tiles, warps and stages are
autotuned per pattern (``_autotune.py``) for problems of at least 2**18 (batch * heads *
positions); smaller ones, and every launch under ``ATTNZOO_AUTOTUNE=0`` (or
``ATTNZOO_GNA_AUTOTUNE=0``), take the first config that survives pruning. The dk/dv kernel runs
with one stage (see ``_autotune.configs``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

import triton
import triton.language as tl

from .._triton.flash import dkdv_step, dq_step, load_rows, softmax_epilogue, softmax_step, store_rows
from .._triton.host import INTERPRETER, contiguous, refusal
from .._triton.launch import launch
from . import _autotune
from ._params import GNAParams

__all__ = ["step_launches", "can_run_triton", "INTERPRETER"]

_LOG2E = 1.4426950408889634


def can_run_triton(q, k, v, params: GNAParams, rpb: Optional[torch.Tensor], scale: float) -> Optional[str]:
    """None when ``gna_triton`` can run these (already validated) inputs, else the reason why not."""
    reason = refusal([("q", q), ("rpb", rpb)], [("head_dim", q.shape[-1]), ("v_dim", v.shape[-1])],
                     [("batch * heads", q.shape[0] * q.shape[-2])])
    if reason is not None:
        return reason
    if math.prod(params.spatial) * q.shape[-2] * max(q.shape[-1], v.shape[-1]) >= 2**31:
        return "one batch element has >= 2**31 elements (int32 offsets inside a batch element)"
    return None


# --- device helpers ------------------------------------------------------------------------------

@triton.jit
def _window(j, glen, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    """Key window [start, end) of group coordinate(s) ``j`` along one axis (reference.window_bounds)."""
    if CAUSAL:
        leader = tl.minimum((j // S) * S + S - 1, glen - 1)
        start = tl.maximum(leader - K + 1, 0)
        end = j + 1
    else:
        leader = tl.minimum((j // S) * S + S // 2, glen - 1)
        centre = tl.minimum(tl.maximum(leader, K // 2), glen - 1 - (K - 1 - K // 2))
        start = centre - K // 2
        end = start + K
    return start, end




@triton.jit
def _tile_of_axis(idx, L, DIL, T: tl.constexpr):
    """Tile index along one axis (dilation group major) -> (group, tile in group, group length)."""
    n_tiles = ((L + DIL - 1) // DIL + T - 1) // T
    g = idx // n_tiles
    glen = (L - g + DIL - 1) // DIL
    return g, idx % n_tiles, glen


@triton.jit
def _tiles_along(L, DIL, T: tl.constexpr):
    return DIL * (((L + DIL - 1) // DIL + T - 1) // T)


@triton.jit
def _first_after(x, glen, steps, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr, USE_END: tl.constexpr):
    """Smallest j in [0, glen] with end(j) > x (USE_END) or start(j) > x: binary search, both monotone."""
    lo = glen * 0
    hi = glen
    for _ in range(steps):
        mid = (lo + hi) // 2
        start, end = _window(mid, glen, K, S, CAUSAL)
        if USE_END:
            bound = end
        else:
            bound = start
        active = lo < hi
        hi = tl.where(active & (bound > x), mid, hi)
        lo = tl.where(active & (bound <= x), mid + 1, lo)
    return lo


@triton.jit
def _in_window(i, ws, we, OWN_IS_QUERY: tl.constexpr):
    """[own, other] mask: key ``i`` in the window [ws, we) of the query, along one axis."""
    if OWN_IS_QUERY:  # own lanes are queries (rows), other lanes are keys (columns)
        return (ws[:, None] <= i[None, :]) & (i[None, :] < we[:, None])
    else:  # own lanes are keys (rows), other lanes are queries (columns)
        return (ws[None, :] <= i[:, None]) & (i[:, None] < we[None, :])


@triton.jit
def _and_window(mask, i, ws, we, K: tl.constexpr, T: tl.constexpr, OWN_IS_QUERY: tl.constexpr):
    """``mask`` and the in-window test along one axis. None is needed where the kernel and the
    own tile both span one position (the size-1 axes of a canonical 1-D / 2-D problem): the halo
    along that axis is then exactly the window."""
    if K > 1 or T > 1:
        mask = mask & _in_window(i, ws, we, OWN_IS_QUERY)
    return mask


@triton.jit
def _rel_term(p0, p1, p2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr):
    """A position's share of an rpb offset: the offset of (query j, key i) is
    ``sum_a (i_a - j_a + K_a - 1) * stride_a = term(i) - term(j) + term(K - 1)``. One subtraction
    of two vectors per score tile, no clamp: an in-window pair has ``|i_a - j_a| <= K_a - 1``
    (stride <= kernel), and every other pair's load is masked. Axes with a kernel of 1 add
    nothing (``i_a == j_a`` in the window), so the size-1 axes of 1-D / 2-D problems cost nothing."""
    r = p2 * 0
    if K2 > 1:
        r = p2
    if K1 > 1:
        r = r + p1 * (2 * K2 - 1)
    if K0 > 1:
        r = r + p0 * ((2 * K1 - 1) * (2 * K2 - 1))
    return r


@triton.jit
def _query_tile(pid, bh, H, L0, L1, L2, DIL0, DIL1, DIL2,
                K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
                T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, BLOCK_M: tl.constexpr):
    """The query tile of program ``(pid, bh)`` in the forward and dq kernels: its rows, the key
    window of each query and the halo box of the whole tile. Returns ``(h, base, q_ok, q_row,
    q_rel, (g0, g1, g2), (ws0, we0, ws1, we1, ws2, we2), (hs0, he0, hs1, he1, hs2, he2))``."""
    b = bh // H
    h = bh % H
    n_tok = L0 * L1 * L2
    nt2 = _tiles_along(L2, DIL2, T2)
    nt1 = _tiles_along(L1, DIL1, T1)
    g0, t0, glen0 = _tile_of_axis(pid // (nt2 * nt1), L0, DIL0, T0)
    g1, t1, glen1 = _tile_of_axis((pid // nt2) % nt1, L1, DIL1, T1)
    g2, t2, glen2 = _tile_of_axis(pid % nt2, L2, DIL2, T2)

    m = tl.arange(0, BLOCK_M)
    j0 = t0 * T0 + m // (T1 * T2)
    j1 = t1 * T1 + (m // T2) % T1
    j2 = t2 * T2 + m % T2
    q_ok = (m < T0 * T1 * T2) & (j0 < glen0) & (j1 < glen1) & (j2 < glen2)
    # queries past a group's end (lanes of a partial tile) take the window of its last query, as
    # in the reference: their rows stay finite and are never stored
    j0 = tl.minimum(j0, glen0 - 1)
    j1 = tl.minimum(j1, glen1 - 1)
    j2 = tl.minimum(j2, glen2 - 1)
    ws0, we0 = _window(j0, glen0, K0, S0, C0)
    ws1, we1 = _window(j1, glen1, K1, S1, C1)
    ws2, we2 = _window(j2, glen2, K2, S2, C2)
    hs0, _ = _window(tl.minimum(t0 * T0, glen0 - 1), glen0, K0, S0, C0)
    hs1, _ = _window(tl.minimum(t1 * T1, glen1 - 1), glen1, K1, S1, C1)
    hs2, _ = _window(tl.minimum(t2 * T2, glen2 - 1), glen2, K2, S2, C2)
    _, he0 = _window(tl.minimum(t0 * T0 + T0 - 1, glen0 - 1), glen0, K0, S0, C0)
    _, he1 = _window(tl.minimum(t1 * T1 + T1 - 1, glen1 - 1), glen1, K1, S1, C1)
    _, he2 = _window(tl.minimum(t2 * T2 + T2 - 1, glen2 - 1), glen2, K2, S2, C2)

    q_rel = _rel_term(j0, j1, j2, K0, K1, K2) - _rel_term(K0 - 1, K1 - 1, K2 - 1, K0, K1, K2)
    base = b.to(tl.int64) * n_tok * H + h  # row of (b, token 0, h) in the [B * tokens * H] row space
    q_row = base + (((g0 + DIL0 * j0) * L1 + g1 + DIL1 * j1) * L2 + g2 + DIL2 * j2) * H
    return (h, base, q_ok, q_row, q_rel, (g0, g1, g2), (ws0, we0, ws1, we1, ws2, we2),
            (hs0, he0, hs1, he1, hs2, he2))


@triton.jit
def _key_block(kb, nb1, nb2, base, g, halo, H, L1, L2, DIL0, DIL1, DIL2,
               U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key block ``kb`` of a query tile's halo (``nb1 x nb2`` blocks per outer index): each lane's
    key coordinates ``i0, i1, i2``, whether it is a key of the halo, and its row."""
    g0, g1, g2 = g
    hs0, he0, hs1, he1, hs2, he2 = halo
    n = tl.arange(0, BLOCK_N)
    i0 = hs0 + (kb // (nb2 * nb1)) * U0 + n // (U1 * U2)
    i1 = hs1 + ((kb // nb2) % nb1) * U1 + (n // U2) % U1
    i2 = hs2 + (kb % nb2) * U2 + n % U2
    k_ok = (n < U0 * U1 * U2) & (i0 < he0) & (i1 < he1) & (i2 < he2)
    k_row = base + (((g0 + DIL0 * i0) * L1 + g1 + DIL1 * i1) * L2 + g2 + DIL2 * i2) * H
    return i0, i1, i2, k_ok, k_row


@triton.jit
def _scores(q, k, qk_scale, mask, i0, i1, i2, win, q_rel, RPB, h,
            K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
            T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
            HAS_RPB: tl.constexpr, WINDOW_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The base-2 scores ``[queries, keys]`` of a query tile and a key block with the bias
    added, and ``mask`` narrowed to the in-window pairs; ``rel``: each pair's rpb offset."""
    ws0, we0, ws1, we1, ws2, we2 = win
    TABLE: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)  # rpb entries per head
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if WINDOW_MASK:
        mask = _and_window(mask, i0, ws0, we0, K0, T0, True)
        mask = _and_window(mask, i1, ws1, we1, K1, T1, True)
        mask = _and_window(mask, i2, ws2, we2, K2, T2, True)
    rel = q_rel
    if HAS_RPB:
        rel = _rel_term(i0, i1, i2, K0, K1, K2)[None, :] - q_rel[:, None]
        s += tl.load(RPB + h * TABLE + rel, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    return s, mask, rel


# --- forward -------------------------------------------------------------------------------------

@triton.jit
def _gna_fwd_kernel(
    Q, K, V, RPB, O, LSE,
    qk_scale,  # softmax scale * log2(e)
    H, L0, L1, L2, DIL0, DIL1, DIL2, size_bucket,  # size_bucket: autotune key only
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    HAS_RPB: tl.constexpr, WINDOW_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    q_tile = _query_tile(tl.program_id(0), tl.program_id(1), H, L0, L1, L2, DIL0, DIL1, DIL2,
                         K0, K1, K2, S0, S1, S2, C0, C1, C2, T0, T1, T2, BLOCK_M)
    h, base, q_ok, q_row, q_rel, g, win, halo = q_tile
    hs0, he0, hs1, he1, hs2, he2 = halo
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)

    nb0 = (he0 - hs0 + U0 - 1) // U0
    nb1 = (he1 - hs1 + U1 - 1) // U1
    nb2 = (he2 - hs2 + U2 - 1) // U2
    for kb in range(0, nb0 * nb1 * nb2):
        i0, i1, i2, k_ok, k_row = _key_block(kb, nb1, nb2, base, g, halo, H, L1, L2, DIL0, DIL1, DIL2,
                                             U0, U1, U2, BLOCK_N)
        k = load_rows(K, k_row, k_ok, od, D)
        v = load_rows(V, k_row, k_ok, ov, DV)
        mask = k_ok[None, :] & (tl.arange(0, BLOCK_M)[:, None] >= 0)  # [queries, keys]
        s, mask, _ = _scores(q, k, qk_scale, mask, i0, i1, i2, win, q_rel, RPB, h, K0, K1, K2, T0, T1, T2,
                             HAS_RPB, WINDOW_MASK, DOT_PRECISION)
        if WINDOW_MASK or (U0 * U1 * U2 != BLOCK_N):
            s = tl.where(mask, s, float("-inf"))
        m_i, l_i, acc = softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    out, lse = softmax_epilogue(m_i, l_i, acc)
    store_rows(O, q_row, q_ok, ov, out, DV)
    tl.store(LSE + q_row, lse, mask=q_ok)


# --- backward ------------------------------------------------------------------------------------

@triton.jit
def _gna_bwd_dq_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DQ, DRPB,
    qk_scale, scale,
    H, L0, L1, L2, DIL0, DIL1, DIL2, size_bucket,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr, WINDOW_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per query tile: dq = scale * sum_keys dS k, and d_rpb += dS (atomics), dS = P (dP - delta)."""
    q_tile = _query_tile(tl.program_id(0), tl.program_id(1), H, L0, L1, L2, DIL0, DIL1, DIL2,
                         K0, K1, K2, S0, S1, S2, C0, C1, C2, T0, T1, T2, BLOCK_M)
    h, base, q_ok, q_row, q_rel, g, win, halo = q_tile
    hs0, he0, hs1, he1, hs2, he2 = halo
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)
    do = load_rows(DO, q_row, q_ok, ov, DV)
    lse = tl.load(LSE + q_row, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + q_row, mask=q_ok, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    TABLE: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)  # rpb entries per head
    nb0 = (he0 - hs0 + U0 - 1) // U0
    nb1 = (he1 - hs1 + U1 - 1) // U1
    nb2 = (he2 - hs2 + U2 - 1) // U2
    for kb in range(0, nb0 * nb1 * nb2):
        i0, i1, i2, k_ok, k_row = _key_block(kb, nb1, nb2, base, g, halo, H, L1, L2, DIL0, DIL1, DIL2,
                                             U0, U1, U2, BLOCK_N)
        k = load_rows(K, k_row, k_ok, od, D)
        v = load_rows(V, k_row, k_ok, ov, DV)
        # invalid query lanes carry lse = 0 and would give huge p: mask them too
        mask = q_ok[:, None] & k_ok[None, :]
        s, mask, rel = _scores(q, k, qk_scale, mask, i0, i1, i2, win, q_rel, RPB, h, K0, K1, K2, T0, T1, T2,
                               HAS_RPB, WINDOW_MASK, DOT_PRECISION)
        dq, p, ds = dq_step(s, mask, lse, delta, do, k, v, dq, DOT_PRECISION)
        if RPB_GRAD:
            tl.atomic_add(DRPB + h * TABLE + rel, ds, mask=mask)

    store_rows(DQ, q_row, q_ok, od, dq * scale, D)


@triton.jit
def _gna_bwd_dkdv_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DK, DV_OUT,
    qk_scale, scale,
    H, L0, L1, L2, DIL0, DIL1, DIL2, size_bucket, search_steps,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    HAS_RPB: tl.constexpr, WINDOW_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per key tile (T0 x T1 x T2 keys): dv = sum_queries P^T dO, dk = scale * sum_queries dS^T q."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n_tok = L0 * L1 * L2
    nt2 = _tiles_along(L2, DIL2, T2)
    nt1 = _tiles_along(L1, DIL1, T1)
    g0, t0, glen0 = _tile_of_axis(pid // (nt2 * nt1), L0, DIL0, T0)
    g1, t1, glen1 = _tile_of_axis((pid // nt2) % nt1, L1, DIL1, T1)
    g2, t2, glen2 = _tile_of_axis(pid % nt2, L2, DIL2, T2)

    m = tl.arange(0, BLOCK_M)
    i0 = t0 * T0 + m // (T1 * T2)
    i1 = t1 * T1 + (m // T2) % T1
    i2 = t2 * T2 + m % T2
    k_ok = (m < T0 * T1 * T2) & (i0 < glen0) & (i1 < glen1) & (i2 < glen2)
    # the queries that see some key of the tile: a contiguous range per axis (monotone windows)
    qs0 = _first_after(tl.minimum(t0 * T0, glen0 - 1), glen0, search_steps, K0, S0, C0, True)
    qs1 = _first_after(tl.minimum(t1 * T1, glen1 - 1), glen1, search_steps, K1, S1, C1, True)
    qs2 = _first_after(tl.minimum(t2 * T2, glen2 - 1), glen2, search_steps, K2, S2, C2, True)
    qe0 = _first_after(tl.minimum(t0 * T0 + T0 - 1, glen0 - 1), glen0, search_steps, K0, S0, C0, False)
    qe1 = _first_after(tl.minimum(t1 * T1 + T1 - 1, glen1 - 1), glen1, search_steps, K1, S1, C1, False)
    qe2 = _first_after(tl.minimum(t2 * T2 + T2 - 1, glen2 - 1), glen2, search_steps, K2, S2, C2, False)

    TABLE: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)  # rpb entries per head
    k_rel = _rel_term(i0, i1, i2, K0, K1, K2) + _rel_term(K0 - 1, K1 - 1, K2 - 1, K0, K1, K2)
    base = b.to(tl.int64) * n_tok * H + h
    k_row = base + (((g0 + DIL0 * i0) * L1 + g1 + DIL1 * i1) * L2 + g2 + DIL2 * i2) * H
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    k = load_rows(K, k_row, k_ok, od, D)
    v = load_rows(V, k_row, k_ok, ov, DV)
    dk = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)

    n = tl.arange(0, BLOCK_N)
    nb0 = (qe0 - qs0 + U0 - 1) // U0
    nb1 = (qe1 - qs1 + U1 - 1) // U1
    nb2 = (qe2 - qs2 + U2 - 1) // U2
    for qb in range(0, nb0 * nb1 * nb2):
        j0 = qs0 + (qb // (nb2 * nb1)) * U0 + n // (U1 * U2)
        j1 = qs1 + ((qb // nb2) % nb1) * U1 + (n // U2) % U1
        j2 = qs2 + (qb % nb2) * U2 + n % U2
        q_ok = (n < U0 * U1 * U2) & (j0 < qe0) & (j1 < qe1) & (j2 < qe2)
        q_row = base + (((g0 + DIL0 * j0) * L1 + g1 + DIL1 * j1) * L2 + g2 + DIL2 * j2) * H
        q = load_rows(Q, q_row, q_ok, od, D)
        do = load_rows(DO, q_row, q_ok, ov, DV)
        lse = tl.load(LSE + q_row, mask=q_ok, other=0.0)
        delta = tl.load(DELTA + q_row, mask=q_ok, other=0.0)
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # [keys, queries]
        mask = k_ok[:, None] & q_ok[None, :]
        if WINDOW_MASK:
            ws0, we0 = _window(j0, glen0, K0, S0, C0)
            ws1, we1 = _window(j1, glen1, K1, S1, C1)
            ws2, we2 = _window(j2, glen2, K2, S2, C2)
            mask = _and_window(mask, i0, ws0, we0, K0, T0, False)
            mask = _and_window(mask, i1, ws1, we1, K1, T1, False)
            mask = _and_window(mask, i2, ws2, we2, K2, T2, False)
        if HAS_RPB:
            rel = k_rel[:, None] - _rel_term(j0, j1, j2, K0, K1, K2)[None, :]
            s += tl.load(RPB + h * TABLE + rel, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
        dk, dv = dkdv_step(s, mask, lse, delta, q, do, v, dk, dv, DOT_PRECISION)

    store_rows(DK, k_row, k_ok, od, dk * scale, D)
    store_rows(DV_OUT, k_row, k_ok, ov, dv, DV)


# --- host side -----------------------------------------------------------------------------------

def _canonical(params: GNAParams) -> Tuple[tuple, tuple, tuple, tuple, tuple]:
    """The pattern as a 3-D one: size-1 leading axes with kernel, stride and dilation 1."""
    pad = 3 - params.rank
    return (
        (1,) * pad + params.spatial,
        (1,) * pad + params.kernel_size,
        (1,) * pad + params.stride,
        (1,) * pad + params.dilation,
        (False,) * pad + params.is_causal,
    )


class _Launch:
    """Everything the three kernels share for one call: canonical pattern and launch arguments."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, params: GNAParams, has_rpb: bool, scale: float):
        spatial, kernel, stride, dilation, causal = _canonical(params)
        self.batch, self.heads, self.d, self.dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
        self.spatial, self.kernel, self.dilation = spatial, kernel, dilation
        self.blocked = _autotune.is_blocked(spatial, kernel, stride, dilation, causal)
        self.rank = params.rank
        self.runtime = dict(H=self.heads, L0=spatial[0], L1=spatial[1], L2=spatial[2],
                            DIL0=dilation[0], DIL1=dilation[1], DIL2=dilation[2],
                            size_bucket=_autotune.size_bucket(spatial))
        self.meta = dict(
            K0=kernel[0], K1=kernel[1], K2=kernel[2], S0=stride[0], S1=stride[1], S2=stride[2],
            C0=causal[0], C1=causal[1], C2=causal[2], HAS_RPB=has_rpb, WINDOW_MASK=not self.blocked,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            D=self.d, DV=self.dv, BLOCK_D=max(16, triton.next_power_of_2(self.d)),
            BLOCK_DV=max(16, triton.next_power_of_2(self.dv)),
        )
        self.qk_scale = scale * _LOG2E
        self.scale = scale
        self.search_steps = max(math.ceil(n / d) for n, d in zip(spatial, dilation)).bit_length() + 1

    def grid(self, meta) -> Tuple[int, int]:
        tiles = 1
        for n, d, t in zip(self.spatial, self.dilation, (meta["T0"], meta["T1"], meta["T2"])):
            tiles *= d * triton.cdiv(triton.cdiv(n, d), t)
        return (tiles, self.batch * self.heads)

    def launch(self, which: str, *args, **extra) -> None:
        kwargs = dict(self.runtime, **extra, **self.meta)
        config = None  # the kernel's autotune space chooses (own tile = keys in the dk/dv kernel)
        if self.blocked:
            config = dict(_autotune.blocked_config(self.kernel), _blocked=True)
        elif INTERPRETER:
            config = _autotune.interpreter_config(self.rank)
        launch(_KERNELS[which], self.grid, args, kwargs, config, space=_autotune.SPACES[which],
               rows=self.batch * self.heads * math.prod(self.spatial))


_KERNELS = {"fwd": _gna_fwd_kernel, "dq": _gna_bwd_dq_kernel, "dkdv": _gna_bwd_dkdv_kernel}


def gna_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor],
                params: GNAParams, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ``(out [B, *spatial, H, Dv], lse [B, *spatial, H] fp32, base 2)``."""
    q, k, v, rpb_c = contiguous(q, k, v, rpb)
    run = _Launch(q, v, params, rpb is not None, scale)
    out = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel():
        run.launch("fwd", q, k, v, rpb_c if rpb_c is not None else q, out, lse, run.qk_scale)
    return out, lse


def gna_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 rpb: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, params: GNAParams,
                 scale: float, rpb_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The two backward kernels: ``(dq, dk, dv, drpb)``; drpb is None unless ``rpb_grad``."""
    q, k, v, out, grad_out, rpb = contiguous(q, k, v, out, grad_out, rpb)
    rpb_grad = rpb_grad and rpb is not None
    run = _Launch(q, v, params, rpb is not None, scale)
    delta = (grad_out.float() * out.float()).sum(-1)  # [B, *spatial, H]
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    drpb = torch.zeros(rpb.shape, dtype=torch.float32, device=q.device) if rpb_grad else None
    if q.numel():
        rpb_arg = rpb if rpb is not None else q
        # without an rpb gradient DRPB is never written; a 1-element stand-in (not q: autotuning
        # zeroes DRPB before each timed run)
        drpb_arg = drpb if rpb_grad else torch.zeros(1, dtype=torch.float32, device=q.device)
        run.launch("dq", q, k, v, rpb_arg, grad_out, lse, delta, dq, drpb_arg,
                   run.qk_scale, run.scale, RPB_GRAD=rpb_grad)
        run.launch("dkdv", q, k, v, rpb_arg, grad_out, lse, delta, dk, dv,
                   run.qk_scale, run.scale, search_steps=run.search_steps)
    return dq, dk, dv, (drpb.to(rpb.dtype) if rpb_grad else None)


def step_launches(q, k, v, params: GNAParams, rpb: Optional[torch.Tensor], scale: float, backward: bool = True) -> None:
    """Every kernel launch of one training step for the dispatcher's arguments (those of
    ``can_run_triton``): the forward, then the backward when ``backward``. Inside an
    ``aot.compile_session``, on meta tensors, this compiles them (the compile gate and the
    compile probe call it); anywhere else it runs them."""
    out, lse = gna_forward(q, k, v, rpb, params, scale)
    if backward:
        gna_backward(out, q, k, v, rpb, out, lse, params, scale, rpb is not None)
