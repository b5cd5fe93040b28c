"""Fused Triton kernels for aggregated (pixel-focused) attention, TransNeXt (forward and backward).

Same semantics, layout and arguments as ``reference.py`` (the specification): heads-last
``q, k: [B, H, W, heads, head_dim]``, ``v: [B, H, W, heads, v_dim]``, pooled
``k_pool: [B, P, heads, head_dim]``, ``v_pool: [B, P, heads, v_dim]``, small tensors cast to q's
dtype by the op. ``window_size=None`` (``length_scaled_attention``, TransNeXt's stage 4) runs the
same kernels without the local branch, ``k_pool, v_pool`` then being the full-resolution keys.

Structure (one program = ``BLOCK_M`` consecutive row-major query positions of one (batch, head)):

* Forward, one kernel: the program L2-normalises its queries, forms
  ``s = (q^ + query_embedding) * softplus(temperature) * log(L_n + P)`` in float32, then
  - local branch: a static loop over the ``window_size ** 2`` slots; slot ``l`` gathers the key
    and value rows of position ``n + offset_l`` (masked outside the grid), normalises the key and
    forms the logit as a row dot product (``L`` is 9 in TransNeXt: too narrow for ``tl.dot``).
    The ``L`` logits are kept as a ``[BLOCK_M, BLOCK_L]`` register tile, so their softmax starts
    from an exact row maximum; the learnable-token term ``q^ . learnable_tokens[:, l] +
    learnable_bias[l]`` multiplies the same value rows into a second accumulator that the softmax
    never rescales;
  - pooled branch: blocks of ``BLOCK_P`` pooled keys, normalised as loaded, ``tl.dot`` logits
    plus ``pool_bias``, online softmax (base 2, float32 accumulators) continuing from the local
    maximum and sum.
  It stores the output and the per-query base-2 logsumexp over [local | pooled]. No
  ``[H * W, L + P]`` tensor exists anywhere.
* Backward, two kernels:
  - per query tile (``_bwd_query_kernel``): recomputes the weights from the logsumexp,
    ``delta = sum_j w_j dO . v_j = dO . out - sum_l t_l dO . v_l`` (``out`` minus its learnable-token
    part), ``dS = w (dO . v - delta)``, and from it ``dq`` (through the normalisation, the
    temperature scale and the learnable-token term), ``pool_bias``'s gradient, and the pooled key
    and value gradients. Those two sum over every query tile of the (batch, head): the program adds
    its ``[BLOCK_P, D]`` products into float32 buffers with atomics (one add per tile and pooled
    block; a deterministic alternative, a pooled-key-major kernel looping over all ``H * W``
    queries, would leave B * heads * ceil(P / BLOCK_P) programs, too few to fill a GPU at
    detection batch sizes). ``pool_bias`` is ``[heads, H * W, P]``: each entry gets one add per
    batch element (atomics again, no contention beyond the batch). The small parameters
    (query_embedding, temperature, local_bias, learnable_tokens, learnable_bias) get one
    per-program partial sum each, written to a ``[programs, ...]`` float32 buffer and summed by
    torch afterwards: deterministic, a few KiB per program.
  - per key tile (``_bwd_key_kernel``, local branch only): each local key position is slot ``l``
    of exactly one query (``n = m - offset_l``), so the program loops over the ``L`` slots,
    recomputes that query's ``s``, weight and ``dS`` from its saved logsumexp and delta, and
    accumulates ``dk`` (through the key normalisation) and ``dv = (w + t) dO``: no atomics, no
    scatter.
  The pooled keys' normalisation backward (``[B, P, heads, D]``, tiny) is done with torch ops on
  the kernel-produced gradient of the normalised keys.

Atomics make ``k_pool``'s, ``v_pool``'s and ``pool_bias``'s gradients vary in their last bits
from run to run on a GPU (summation order), as FlashAttention's dq does.

Precision: float32 inputs use IEEE dot products (``input_precision="ieee"``, no TF32); float16 /
bfloat16 inputs feed ``tl.dot`` in their own dtype (s, the normalised pooled keys, the softmax
weights and dS rounded to it, as FlashAttention does) with float32 accumulation. Local logits,
normalisations and every accumulator are float32.

Under Triton's interpreter (``TRITON_INTERPRET=1`` when this module is first imported) the kernels
run on CPU tensors with a fixed 16-query / 16-pooled-key tile (tests). On CUDA the tiles are
autotuned for large problems (``_autotune.py``; ``ATTNZOO_AUTOTUNE=0`` or
``ATTNZOO_AGGREGATED_AUTOTUNE=0``: one default config). TRITON_INTERPRET must be set before the
process imports triton.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

import triton
import triton.language as tl

from .._triton.flash import dq_step, load_rows, softmax_step, store_rows
from .._triton.host import INTERPRETER, contiguous, refusal
from .._triton.launch import launch
from . import _autotune
from ._params import AggregatedParams

__all__ = ["step_launches", "aggregated_forward", "aggregated_backward", "can_run_triton", "INTERPRETER",
           "MAX_WINDOW"]

_LOG2E = 1.4426950408889634
_EPS = 1e-12  # F.normalize's
MAX_WINDOW = 7
"""Largest local window side the kernels take: the slot loop is unrolled (49 slots at 7)."""


def can_run_triton(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                   learnable_tokens, learnable_bias, params: AggregatedParams) -> Optional[str]:
    """None when the Triton backend can run these (already validated) inputs, else why not,
    naming the argument and the accepted range. Both public functions dispatch here:
    ``length_scaled_attention`` (``params.window_size is None``) runs the same kernels without the
    local branch."""
    b, h, w, heads, _ = q.shape
    reason = refusal([("q", q), ("pool_bias", pool_bias), ("local_bias", local_bias),
                      ("query_embedding", query_embedding), ("temperature", temperature),
                      ("learnable_tokens", learnable_tokens), ("learnable_bias", learnable_bias)],
                     [("head_dim", q.shape[-1]), ("v_dim", v_pool.shape[-1])], [("batch * heads", b * heads)])
    if reason is not None:
        return reason
    if params.window_size is not None and params.window_size > MAX_WINDOW:
        return f"window_size {params.window_size} is not supported (odd, 1 to {MAX_WINDOW})"
    if heads * h * w * params.pool_len >= 2**31:
        return f"heads * H * W * P = {heads * h * w * params.pool_len} >= 2**31 (int32 offsets into pool_bias)"
    return None


# --- device helpers ------------------------------------------------------------------------------

@triton.jit
def _softplus(t):
    return tl.maximum(t, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(t)))


@triton.jit
def _length_scale(y, x, HH, WW, P, R: tl.constexpr, LOCAL: tl.constexpr):
    """``log(L_n + P)`` of query positions (y, x): L_n window slots inside the grid."""
    if LOCAL:
        # clamped to 1: lanes past the grid (masked everywhere) must stay finite
        ny = tl.maximum(tl.minimum(y + R, HH - 1) - tl.maximum(y - R, 0) + 1, 1)
        nx = tl.maximum(tl.minimum(x + R, WW - 1) - tl.maximum(x - R, 0) + 1, 1)
        count = (ny * nx + P).to(tl.float32)
    else:
        count = (y * 0 + P).to(tl.float32)
    return tl.log(count)


@triton.jit
def _query_state(Q, QE, TEMP, row, q_ok, y, x, h, HH, WW, P, od,
                 D: tl.constexpr, R: tl.constexpr, LOCAL: tl.constexpr):
    """``(q^, ||q||, c, qe, s)``: normalised queries, their norms, the scale
    ``c = softplus(T) log(L_n + P)`` per row, the query embedding and ``s = (q^ + qe) c``."""
    dmask = od < D
    q = load_rows(Q, row, q_ok, od, D).to(tl.float32)
    qn = tl.sqrt(tl.sum(q * q, 1))
    q_hat = q / tl.maximum(qn, 1e-12)[:, None]
    qe = tl.load(QE + h * D + od, mask=dmask, other=0.0).to(tl.float32)
    c = _softplus(tl.load(TEMP + h).to(tl.float32)) * _length_scale(y, x, HH, WW, P, R, LOCAL)
    s = (q_hat + qe[None, :]) * c[:, None]
    return q_hat, qn, c, qe, s


@triton.jit
def _pool_keys(KP, VP, b, h, NH, P, p0, od, ov, D: tl.constexpr, DV: tl.constexpr, BLOCK_P: tl.constexpr):
    """Block ``p0`` of pooled keys (normalised, float32) and values (input dtype), and its lane mask."""
    pp = p0 + tl.arange(0, BLOCK_P)
    p_ok = pp < P
    prow = (b.to(tl.int64) * P + pp) * NH + h
    kp = load_rows(KP, prow, p_ok, od, D).to(tl.float32)
    kp_hat = kp / tl.maximum(tl.sqrt(tl.sum(kp * kp, 1)), 1e-12)[:, None]
    vp = load_rows(VP, prow, p_ok, ov, DV)
    return pp, p_ok, prow, kp_hat, vp


# --- forward -------------------------------------------------------------------------------------

@triton.jit
def _fwd_kernel(
    Q, K, V, KP, VP, PB, LB, QE, TEMP, LT, LBIAS, O, LSE,
    NH, HH, WW, P, size_bucket,  # size_bucket: autotune key only
    LOCAL: tl.constexpr, WS: tl.constexpr, HAS_PB: tl.constexpr, HAS_LB: tl.constexpr,
    HAS_LT: tl.constexpr, HAS_LBIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    N = HH * WW
    R: tl.constexpr = WS // 2
    L: tl.constexpr = WS * WS

    m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = m < N
    y = m // WW
    x = m % WW
    row = (b.to(tl.int64) * N + m) * NH + h
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    dmask = od < D
    q_hat, qn, c, qe, s = _query_state(Q, QE, TEMP, row, q_ok, y, x, h, HH, WW, P, od, D, R, LOCAL)

    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    if LOCAL:
        lidx = tl.arange(0, BLOCK_L)
        logits = tl.full([BLOCK_M, BLOCK_L], float("-inf"), tl.float32)
        for l in tl.static_range(L):
            yy = y + (l // WS - R)
            xx = x + (l % WS - R)
            inside = q_ok & (yy >= 0) & (yy < HH) & (xx >= 0) & (xx < WW)
            krow = (b.to(tl.int64) * N + yy * WW + xx) * NH + h
            k = load_rows(K, krow, inside, od, D).to(tl.float32)
            a = tl.sum(s * k, 1) / tl.maximum(tl.sqrt(tl.sum(k * k, 1)), 1e-12)
            if HAS_LB:
                a += tl.load(LB + h * L + l).to(tl.float32)
            a = tl.where(inside, a * 1.4426950408889634, float("-inf"))
            logits = tl.where(lidx[None, :] == l, a[:, None], logits)
        m_i = tl.max(logits, 1)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)  # rows past the end see no slot
        w_loc = tl.exp2(logits - m_i[:, None])
        l_i = tl.sum(w_loc, 1)
        acc_lt = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
        for l in tl.static_range(L):
            yy = y + (l // WS - R)
            xx = x + (l % WS - R)
            inside = q_ok & (yy >= 0) & (yy < HH) & (xx >= 0) & (xx < WW)
            krow = (b.to(tl.int64) * N + yy * WW + xx) * NH + h
            v = load_rows(V, krow, inside, ov, DV).to(tl.float32)
            w = tl.sum(tl.where(lidx[None, :] == l, w_loc, 0.0), 1)
            acc += w[:, None] * v
            if HAS_LT or HAS_LBIAS:
                t = tl.full([BLOCK_M], 0.0, tl.float32)
                if HAS_LT:
                    lt = tl.load(LT + (h * D + od) * L + l, mask=dmask, other=0.0).to(tl.float32)
                    t += tl.sum(q_hat * lt[None, :], 1)
                if HAS_LBIAS:
                    t += tl.load(LBIAS + h * L + l).to(tl.float32)
                acc_lt += t[:, None] * v
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, tl.float32)

    s_dot = s.to(Q.dtype.element_ty)
    for p0 in range(0, P, BLOCK_P):
        pp, p_ok, prow, kp_hat, vp = _pool_keys(KP, VP, b, h, NH, P, p0, od, ov, D, DV, BLOCK_P)
        # names of the local branch above are not reused with another shape here: Triton's
        # compiler takes a name bound before a loop and rebound inside it as loop-carried
        ap = tl.dot(s_dot, tl.trans(kp_hat.to(Q.dtype.element_ty)), input_precision=DOT_PRECISION)
        if HAS_PB:
            pb_off = (h * N + m).to(tl.int64)[:, None] * P + pp[None, :]
            ap += tl.load(PB + pb_off, mask=q_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        ap = tl.where(p_ok[None, :], ap * 1.4426950408889634, float("-inf"))
        m_i, l_i, acc = softmax_step(ap, m_i, l_i, acc, vp, DOT_PRECISION)

    # softmax_epilogue's arithmetic, written out: the learnable-token term joins between the
    # normalisation and the store, and through the shared epilogue's tuple the compiler kept up to
    # 3 more registers (sm_90 bf16, compile gate)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    if LOCAL:
        out += acc_lt
    store_rows(O, row, q_ok, ov, out, DV)
    tl.store(LSE + row, m_i + tl.log2(l_safe), mask=q_ok)


# --- backward ------------------------------------------------------------------------------------

@triton.jit
def _bwd_query_kernel(
    Q, K, V, KP, VP, PB, LB, QE, TEMP, LT, LBIAS, O, DO, LSE,
    DQ, DELTA, DKP, DVP, DPB, PART,
    NH, HH, WW, P, PART_ROWS, size_bucket,
    LOCAL: tl.constexpr, WS: tl.constexpr, HAS_PB: tl.constexpr, HAS_LB: tl.constexpr,
    HAS_LT: tl.constexpr, HAS_LBIAS: tl.constexpr, PB_GRAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per query tile: dq, delta, pool_bias / pooled key / pooled value gradients (atomics), and
    this program's partial sums of the small parameters' gradients (PART, see ``_part_width``)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    N = HH * WW
    R: tl.constexpr = WS // 2
    L: tl.constexpr = WS * WS

    m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = m < N
    y = m // WW
    x = m % WW
    row = (b.to(tl.int64) * N + m) * NH + h
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    dmask = od < D
    vmask = ov < DV
    q_hat, qn, c, qe, s = _query_state(Q, QE, TEMP, row, q_ok, y, x, h, HH, WW, P, od, D, R, LOCAL)
    do = load_rows(DO, row, q_ok, ov, DV)
    g = do.to(tl.float32)
    o = load_rows(O, row, q_ok, ov, DV).to(tl.float32)
    lse = tl.load(LSE + row, mask=q_ok, other=0.0)
    delta = tl.sum(g * o, 1)

    # the row layout of _part_width; without a local branch it holds query_embedding and temperature only
    if LOCAL:
        part = PART + (bh.to(tl.int64) * PART_ROWS + pid) * (D + 1 + 2 * L + D * L)
    else:
        part = PART + (bh.to(tl.int64) * PART_ROWS + pid) * (D + 1)
    dq_hat = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    ds = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    if LOCAL:
        lidx = tl.arange(0, BLOCK_L)
        w_loc = tl.full([BLOCK_M, BLOCK_L], 0.0, tl.float32)
        gv_loc = tl.full([BLOCK_M, BLOCK_L], 0.0, tl.float32)
        wgk = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)  # sum_l w_l (dO . v_l) k^_l
        wk = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)  # sum_l w_l k^_l
        tgv = tl.full([BLOCK_M], 0.0, tl.float32)  # sum_l t_l (dO . v_l): out's learnable-token part . dO
        s_k = tl.full([BLOCK_M, BLOCK_L], 0.0, tl.float32)  # s . k^_l, the logits without bias
        for l in tl.static_range(L):
            yy = y + (l // WS - R)
            xx = x + (l % WS - R)
            inside = q_ok & (yy >= 0) & (yy < HH) & (xx >= 0) & (xx < WW)
            krow = (b.to(tl.int64) * N + yy * WW + xx) * NH + h
            k = load_rows(K, krow, inside, od, D).to(tl.float32)
            k_hat = k / tl.maximum(tl.sqrt(tl.sum(k * k, 1)), 1e-12)[:, None]
            a = tl.sum(s * k_hat, 1)
            s_k = tl.where(lidx[None, :] == l, a[:, None], s_k)
            if HAS_LB:
                a += tl.load(LB + h * L + l).to(tl.float32)
            w = tl.where(inside, tl.exp2(a * 1.4426950408889634 - lse), 0.0)
            v = load_rows(V, krow, inside, ov, DV).to(tl.float32)
            gv = tl.sum(g * v, 1)  # 0 outside the grid
            wgk += (w * gv)[:, None] * k_hat
            wk += w[:, None] * k_hat
            w_loc = tl.where(lidx[None, :] == l, w[:, None], w_loc)
            gv_loc = tl.where(lidx[None, :] == l, gv[:, None], gv_loc)
            if HAS_LT or HAS_LBIAS:
                t = tl.full([BLOCK_M], 0.0, tl.float32)
                if HAS_LT:
                    lt = tl.load(LT + (h * D + od) * L + l, mask=dmask, other=0.0).to(tl.float32)
                    t += tl.sum(q_hat * lt[None, :], 1)
                    dq_hat += gv[:, None] * lt[None, :]
                    # d learnable_tokens[h, :, l] = sum_n q^_n (dO . v_l)
                    tl.store(part + D + 1 + 2 * L + od * L + l, tl.sum(q_hat * gv[:, None], 0), mask=dmask)
                if HAS_LBIAS:
                    t += tl.load(LBIAS + h * L + l).to(tl.float32)
                tgv += t * gv
        delta -= tgv
        ds = wgk - delta[:, None] * wk
        da_loc = w_loc * (gv_loc - delta[:, None])
        dc_c = tl.sum(da_loc * s_k, 1)
        tl.store(part + D + 1 + lidx, tl.sum(da_loc, 0), mask=lidx < L)  # local_bias
        tl.store(part + D + 1 + L + lidx, tl.sum(gv_loc, 0), mask=lidx < L)  # learnable_bias
    else:
        dc_c = tl.full([BLOCK_M], 0.0, tl.float32)
    tl.store(DELTA + row, delta, mask=q_ok)

    s_dot = s.to(Q.dtype.element_ty)
    for p0 in range(0, P, BLOCK_P):
        pp, p_ok, prow, kp_hat, vp = _pool_keys(KP, VP, b, h, NH, P, p0, od, ov, D, DV, BLOCK_P)
        kp_dot = kp_hat.to(Q.dtype.element_ty)
        # pooled-branch names differ from the local branch's (s_k, a, w, da have other shapes
        # there): Triton's compiler would take them as loop-carried and refuse the shape change
        sp = tl.dot(s_dot, tl.trans(kp_dot), input_precision=DOT_PRECISION)
        valid = q_ok[:, None] & p_ok[None, :]
        ap = sp
        if HAS_PB:
            pb_off = (h * N + m).to(tl.int64)[:, None] * P + pp[None, :]
            ap += tl.load(PB + pb_off, mask=valid, other=0.0).to(tl.float32)
        ds, wp, dap = dq_step(ap * 1.4426950408889634, valid, lse, delta, do, kp_dot, vp, ds, DOT_PRECISION)
        dc_c += tl.sum(dap * sp, 1)
        dkp = tl.dot(tl.trans(dap.to(s_dot.dtype)), s_dot, input_precision=DOT_PRECISION)  # d k_pool^ [P, D]
        tl.atomic_add(DKP + prow[:, None] * D + od[None, :], dkp, mask=p_ok[:, None] & dmask[None, :])
        dvp = tl.dot(tl.trans(wp.to(do.dtype)), do, input_precision=DOT_PRECISION)
        tl.atomic_add(DVP + prow[:, None] * DV + ov[None, :], dvp, mask=p_ok[:, None] & vmask[None, :])
        if PB_GRAD:
            tl.atomic_add(DPB + pb_off, dap, mask=valid)

    # s = (q^ + qe) c: d qe = sum_n c ds; d c = ds . (q^ + qe) = sum_j dS_j (s . k^_j) / c, and
    # d T = sum_n d c log(L_n + P) sigmoid(T) = sigmoid(T) / softplus(T) sum_n sum_j dS_j (s . k^_j).
    # The last form (dc_c, from float32 dS and logits) avoids ds, whose float16-rounded dS terms
    # cancel in the temperature's gradient (10x its error on bias-free float16 inputs).
    tl.store(part + od, tl.sum(ds * c[:, None], 0), mask=dmask)
    temp = tl.load(TEMP + h).to(tl.float32)
    sigmoid = 1.0 / (1.0 + tl.exp(-temp))
    tl.store(part + D, tl.sum(dc_c, 0) * sigmoid / _softplus(temp))
    dq_hat += ds * c[:, None]
    # through q^ = q / max(||q||, eps)
    radial = tl.where(qn > 1e-12, tl.sum(q_hat * dq_hat, 1), 0.0)
    dq = (dq_hat - q_hat * radial[:, None]) / tl.maximum(qn, 1e-12)[:, None]
    store_rows(DQ, row, q_ok, od, dq, D)


@triton.jit
def _bwd_key_kernel(
    Q, K, V, LB, QE, TEMP, LT, LBIAS, DO, LSE, DELTA, DK, DV_OUT,
    NH, HH, WW, P, size_bucket,
    WS: tl.constexpr, HAS_LB: tl.constexpr, HAS_LT: tl.constexpr, HAS_LBIAS: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Per tile of local key positions: key m is slot l of query m - offset_l, for each l."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    N = HH * WW
    R: tl.constexpr = WS // 2
    L: tl.constexpr = WS * WS

    m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    k_ok = m < N
    y = m // WW
    x = m % WW
    krow = (b.to(tl.int64) * N + m) * NH + h
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    dmask = od < D
    k = load_rows(K, krow, k_ok, od, D).to(tl.float32)
    kn = tl.sqrt(tl.sum(k * k, 1))
    k_hat = k / tl.maximum(kn, 1e-12)[:, None]
    v = load_rows(V, krow, k_ok, ov, DV).to(tl.float32)
    dk_hat = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    # a loop, not unrolled: each slot reloads a query state of [BLOCK_M, D] tiles, and unrolling
    # the 9 slots of a 3x3 window kept several live at once (1280 B of spills at BLOCK_M=64, sm_90)
    for l in range(L):
        yq = y - (l // WS - R)
        xq = x - (l % WS - R)
        seen = k_ok & (yq >= 0) & (yq < HH) & (xq >= 0) & (xq < WW)
        qrow = (b.to(tl.int64) * N + yq * WW + xq) * NH + h
        q_hat, qn, c, qe, s = _query_state(Q, QE, TEMP, qrow, seen, yq, xq, h, HH, WW, P, od, D, R, True)
        a = tl.sum(s * k_hat, 1)
        if HAS_LB:
            a += tl.load(LB + h * L + l).to(tl.float32)
        lse = tl.load(LSE + qrow, mask=seen, other=0.0)
        w = tl.where(seen, tl.exp2(a * 1.4426950408889634 - lse), 0.0)
        g = load_rows(DO, qrow, seen, ov, DV).to(tl.float32)
        delta = tl.load(DELTA + qrow, mask=seen, other=0.0)
        da = w * (tl.sum(g * v, 1) - delta)
        dk_hat += da[:, None] * s
        t = w
        if HAS_LT:
            lt = tl.load(LT + (h * D + od) * L + l, mask=dmask, other=0.0).to(tl.float32)
            t += tl.where(seen, tl.sum(q_hat * lt[None, :], 1), 0.0)
        if HAS_LBIAS:
            t += tl.where(seen, tl.load(LBIAS + h * L + l).to(tl.float32), 0.0)
        dv += t[:, None] * g
    radial = tl.where(kn > 1e-12, tl.sum(k_hat * dk_hat, 1), 0.0)
    dk = (dk_hat - k_hat * radial[:, None]) / tl.maximum(kn, 1e-12)[:, None]
    store_rows(DK, krow, k_ok, od, dk, D)
    store_rows(DV_OUT, krow, k_ok, ov, dv, DV)


# --- host side -----------------------------------------------------------------------------------

_KERNELS = {"fwd": _fwd_kernel, "bwd_q": _bwd_query_kernel, "bwd_k": _bwd_key_kernel}


def _part_width(d: int, local: int) -> int:
    """Floats of one program's partial sums, in this order: query_embedding [D], temperature [1],
    local_bias [L], learnable_bias [L], learnable_tokens [D, L] (row-major)."""
    return d + 1 + 2 * local + d * local


class _Launch:
    """What the kernels of one call share: sizes, flags and meta-parameters."""

    def __init__(self, q: torch.Tensor, v_pool: torch.Tensor, window_size: Optional[int], flags: dict):
        self.batch, self.height, self.width, self.heads, self.d = q.shape
        self.pool = v_pool.shape[1]
        self.dv = v_pool.shape[-1]
        self.local = window_size is not None
        ws = window_size if window_size is not None else 1
        self.runtime = dict(NH=self.heads, HH=self.height, WW=self.width, P=self.pool,
                            size_bucket=_autotune.size_bucket(self.height * self.width, self.pool))
        common = dict(WS=ws, D=self.d, DV=self.dv, BLOCK_D=max(16, triton.next_power_of_2(self.d)),
                      BLOCK_DV=max(16, triton.next_power_of_2(self.dv)), HAS_LB=flags["HAS_LB"],
                      HAS_LT=flags["HAS_LT"], HAS_LBIAS=flags["HAS_LBIAS"])
        query = dict(common, LOCAL=self.local, HAS_PB=flags["HAS_PB"], BLOCK_L=max(16, triton.next_power_of_2(ws * ws)),
                     DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
        self.meta = {"fwd": query, "bwd_q": query, "bwd_k": common}

    def grid(self, meta) -> Tuple[int, int]:
        return (triton.cdiv(self.height * self.width, meta["BLOCK_M"]), self.batch * self.heads)

    def launch(self, which: str, *args, **extra) -> None:
        kwargs = dict(self.runtime, **self.meta[which], **extra)
        launch(_KERNELS[which], self.grid, args, kwargs, space=_autotune.SPACES[which],
               rows=self.batch * self.heads * self.height * self.width)


def _flags(pool_bias, local_bias, learnable_tokens, learnable_bias) -> dict:
    return dict(HAS_PB=pool_bias is not None, HAS_LB=local_bias is not None, HAS_LT=learnable_tokens is not None,
                HAS_LBIAS=learnable_bias is not None)


def aggregated_forward(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                       learnable_tokens, learnable_bias, window_size: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ``(out [B, H, W, heads, v_dim] in q's dtype, lse [B, H, W, heads] float32,
    base 2)``. Inputs validated by ``check_aggregated_inputs``, small tensors in q's dtype."""
    q, k, v, k_pool, v_pool = contiguous(q, k, v, k_pool, v_pool)
    pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias = contiguous(
        pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias)
    run = _Launch(q, v_pool, window_size, _flags(pool_bias, local_bias, learnable_tokens, learnable_bias))
    out = torch.empty((*q.shape[:4], v_pool.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:4], dtype=torch.float32, device=q.device)
    if out.numel():
        # q stands in for the absent tensors: the flags keep the kernels from reading them
        k, v, pool_bias, local_bias, learnable_tokens, learnable_bias = (
            q if t is None else t for t in (k, v, pool_bias, local_bias, learnable_tokens, learnable_bias))
        run.launch("fwd", q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                   learnable_tokens, learnable_bias, out, lse)
    return out, lse


def aggregated_backward(grad_out, q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                        learnable_tokens, learnable_bias, out, lse, window_size: Optional[int], pool_bias_grad: bool):
    """The backward kernels. Returns the gradients of ``(q, k, v, k_pool, v_pool, pool_bias,
    local_bias, query_embedding, temperature, learnable_tokens, learnable_bias)``, each in its
    input's dtype; None for an absent input, and for pool_bias unless ``pool_bias_grad``."""
    q, k, v, k_pool, v_pool, out, grad_out = contiguous(q, k, v, k_pool, v_pool, out, grad_out)
    pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias = contiguous(
        pool_bias, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias)
    given = (pool_bias, local_bias, learnable_tokens, learnable_bias)
    pool_bias_grad = pool_bias_grad and pool_bias is not None
    run = _Launch(q, v_pool, window_size, _flags(*given))
    b, hh, ww, heads, d = q.shape
    local = 0 if window_size is None else window_size * window_size
    f32 = dict(dtype=torch.float32, device=q.device)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k) if k is not None else None
    dv = torch.empty_like(v) if v is not None else None
    dkp_hat = torch.zeros(k_pool.shape, **f32)  # the gradient of the normalised pooled keys
    dvp = torch.zeros(v_pool.shape, **f32)
    dpb = torch.zeros(pool_bias.shape, **f32) if pool_bias_grad else None
    width = _part_width(d, local)
    # one row of partial sums per program; the grid depends on the (possibly tuned) BLOCK_M, so
    # rows are sized for the smallest one and the rows of absent programs stay zero
    part_rows = triton.cdiv(hh * ww, _autotune.MIN_BLOCK_M)
    part = torch.zeros((b * heads, part_rows if q.numel() else 1, width), **f32)
    if q.numel():
        delta = torch.empty(q.shape[:4], **f32)
        k, v, pool_bias, local_bias, learnable_tokens, learnable_bias = (
            q if t is None else t for t in (k, v, pool_bias, local_bias, learnable_tokens, learnable_bias))
        run.launch("bwd_q", q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                   learnable_tokens, learnable_bias, out, grad_out, lse, dq, delta, dkp_hat, dvp,
                   dpb if dpb is not None else torch.zeros(1, **f32), part, PART_ROWS=part_rows, PB_GRAD=pool_bias_grad)
        if window_size is not None:
            run.launch("bwd_k", q, k, v, local_bias, query_embedding, temperature, learnable_tokens, learnable_bias,
                       grad_out, lse, delta, dk, dv)
    elif dk is not None:
        dk.zero_()
        dv.zero_()
    # pooled keys: back through k_pool^ = k_pool / max(||k_pool||, eps), on the small [B, P, heads, D]
    kp = k_pool.float()
    norm = kp.norm(dim=-1, keepdim=True)
    kp_hat = kp / norm.clamp_min(_EPS)
    radial = torch.where(norm > _EPS, (kp_hat * dkp_hat).sum(-1, keepdim=True), torch.zeros_like(norm))
    dkp = (dkp_hat - kp_hat * radial) / norm.clamp_min(_EPS)

    sums = part.sum((0, 1)).view(1, width) if b == 0 else part.view(b, heads, -1, width).sum((0, 2))
    sums = sums.expand(heads, width)
    dqe, dtemp = sums[:, :d], sums[:, d]
    dlb, dlbias = sums[:, d + 1:d + 1 + local], sums[:, d + 1 + local:d + 1 + 2 * local]
    dlt = sums[:, d + 1 + 2 * local:].reshape(heads, d, local)
    pool_bias, local_bias, learnable_tokens, learnable_bias = given

    def cast(grad, like):  # a fresh tensor: the slices of ``sums`` must not alias each other
        return None if like is None else grad.to(like.dtype, copy=True)

    return (dq, dk, dv, dkp.to(k_pool.dtype), dvp.to(v_pool.dtype), dpb.to(pool_bias.dtype) if pool_bias_grad else None,
            cast(dlb, local_bias), cast(dqe, query_embedding), cast(dtemp, temperature),
            cast(dlt, learnable_tokens), cast(dlbias, learnable_bias))


def step_launches(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
                  learnable_bias, params: AggregatedParams, backward: bool = True) -> None:
    """Every kernel launch of one training step for the dispatcher's arguments (those of
    ``can_run_triton``): the forward, then the backward when ``backward``. Inside an
    ``aot.compile_session``, on meta tensors, this compiles them (the compile gate and the
    compile probe call it); anywhere else it runs them."""
    tensors = (q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
               learnable_bias)
    out, lse = aggregated_forward(*tensors, params.window_size)
    if backward:
        aggregated_backward(out, *tensors, out, lse, params.window_size, pool_bias is not None)
