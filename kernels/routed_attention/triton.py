"""Fused Triton kernels for bi-level routing attention (BiFormer), forward and backward.

Same semantics, layout and arguments as ``reference.py`` (the specification): ``q, k`` are
``[B, H, W, heads, head_dim]``, ``v`` is ``[B, H, W, heads, v_dim]``, H and W multiples of the
regions per side ``S``, regions of ``RH x RW = (H / S) x (W / S)`` tokens (``T = RH * RW``), and a
routing index ``[B, S*S, topk]`` of key regions per query region. Routing (region means, a small
matmul, top-k) stays in PyTorch (``reference._route``); these kernels do the token attention.

Structure (flash-attention style):

* Work is cut into *groups*: one group is one (region, head) pair of one batch element, the flat
  group id being ``region * heads + head``. Every query of a group sees the same keys: the tokens
  of the ``topk`` regions its region is routed to, read in place from k and v through the index
  (token addresses computed from the region id; nothing is gathered into a copy).
* Packing. Regions of ``T >= BLOCK_M`` tokens are cut into query tiles of ``BLOCK_M`` tokens, one
  group per program. Small regions (BiFormer's stage 3 at 224 px has 2x2 tokens, detection
  inputs can have 1-token regions) would leave most lanes of a program idle, so when two or more
  fit, ``G = min(BLOCK_M, BLOCK_N) // T`` *consecutive groups* share one program: the heads of
  one region first (they share their routing row, and in the heads-last layout their q / k / v
  rows are adjacent in memory, so the packed loads stay contiguous), then the next regions. The
  score tile of a packed program is block-diagonal (a row sees only the columns of its own
  group, masked); it wastes MMA lanes, not memory traffic, which is what these small tiles are
  bound by. Along the key axis each step covers ``RG`` routed regions of every packed group at
  once (``RG = BLOCK_N // (G * T)`` when whole regions fit, else key tiles of ``BLOCK_N`` tokens
  of one region), so a short region does not mean a short inner step either. The packing is
  derived from the region size and the two block sizes (``_packing``) by ``triton.heuristics``,
  so it also follows the autotuner's block choice (``_autotune.py``).
* Forward: online softmax in base 2 with float32 accumulators; it stores the output and the
  per-query logsumexp (base 2, float32, ``[B, H, W, heads]``) for the backward.
* Backward: ``delta = rowsum(dO * O)`` (float32), then two kernels as in FlashAttention-2: one over
  query groups (dq; the forward's structure, P recomputed from the logsumexp) and one over key
  groups (dk, dv).
* dk / dv through a reverse index, not atomics. A key region receives gradient from every query
  region routed to it: any number from 0 to ``S*S``. Once per backward call the routing index is
  inverted in PyTorch into a CSR list (per batch element and key region: how many query regions
  route to it and which, ``torch.sort`` of the flattened index plus a ``scatter_add`` count;
  ``B * S*S * topk`` integers), and the dk/dv kernel walks each key group's list. Against the
  alternative, float32 atomics from the query-side kernel into k- and v-sized buffers: the
  gradients are written once, in the input dtype, with no float32 scratch of the size of k and v
  (for float16 / bfloat16 that scratch alone is twice the memory of the gradients) and no
  final cast pass; they are deterministic (same bits every run, no summation order set by the
  scheduler); and popular key regions, which upstream's routing produces (one region can be in
  every query region's top-k), cost a longer loop in one program instead of atomic contention.
  The price: programs of popular regions run longer than others (load imbalance), and the list
  is rebuilt at each backward (a sort of ``B * S*S * topk`` ints, negligible next to the
  attention).

Under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment when this module is first
imported, which must come before the process imports triton) the kernels run on the CPU, on CPU
tensors, with 16-lane blocks; tests use that. On CUDA the block sizes, warps and stages are autotuned
(``_autotune.py``, ``ATTNZOO_AUTOTUNE=0`` or ``ATTNZOO_ROUTED_AUTOTUNE=0`` for one default config)
for problems of at least 2**18 (batch * heads * tokens); smaller ones take the default config.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

import triton
import triton.language as tl

from .._triton.flash import dkdv_step, dq_step, load_rows, softmax_epilogue, softmax_step, store_rows
from .._triton.host import INTERPRETER, contiguous, refusal
from .._triton.launch import launch
from . import _autotune
from ._autotune import packing
from ._params import RoutedParams

__all__ = ["step_launches", "routed_forward", "routed_backward", "reverse_index", "can_run_triton", "INTERPRETER"]

_LOG2E = 1.4426950408889634


def can_run_triton(q, k, v, params: RoutedParams, scale: float, index: Optional[torch.Tensor]) -> Optional[str]:
    """None when ``routed_triton`` can run these (already validated) inputs, else the reason why not."""
    reason = refusal([("q", q)], [("head_dim", q.shape[-1]), ("v_dim", v.shape[-1])], [("batch", q.shape[0])])
    if reason is not None:
        return reason
    rh, rw = params.region_size
    groups = params.regions * q.shape[-2]
    if groups * rh * rw >= 2**31:
        return "one batch element has >= 2**31 (token, head) rows"
    return None


# --- device helpers ------------------------------------------------------------------------------

@triton.jit
def _rows(b, region, head, t, S, RH, RW, NH):
    """Row of token ``t`` (row-major inside its region) of ``region`` and ``head`` in the
    ``[B * H * W * heads]`` row space of a heads-last tensor (int64: ``b`` is)."""
    y = (region // S) * RH + t // RW
    x = (region % S) * RW + t % RW
    return ((b * (S * RH) + y) * (S * RW) + x) * NH + head


@triton.jit
def _own_lanes(pid, n_groups, T, BLOCK_M: tl.constexpr, OT: tl.constexpr, G: tl.constexpr):
    """The program's own lanes: (packed group of each lane, group id, token, valid)."""
    n_tiles = (T + OT - 1) // OT
    gb = pid // n_tiles
    m = tl.arange(0, BLOCK_M)
    g = m // OT
    gid = gb * G + g
    t = (pid % n_tiles) * OT + m % OT
    ok = (m < G * OT) & (gid < n_groups) & (t < T)
    # invalid lanes address a valid row (never stored): no out-of-range pointer even if masked
    return g, tl.minimum(gid, n_groups - 1), tl.minimum(t, T - 1), ok, gb


@triton.jit
def _inner_lanes(gb, n_groups, BLOCK_N: tl.constexpr, IT: tl.constexpr, G: tl.constexpr, RG: tl.constexpr):
    """The inner (per step) lanes: (packed group, group id, region slot offset, token offset, valid)."""
    n = tl.arange(0, BLOCK_N)
    cg = n // (RG * IT)
    rem = n % (RG * IT)
    cgid = gb * G + cg
    ok = (n < G * RG * IT) & (cgid < n_groups)
    return cg, tl.minimum(cgid, n_groups - 1), rem // IT, rem % IT, ok


@triton.jit
def _listed_rows(LIST, slots, step, n_inner, cslot, ctok, c_ok, b, chead, S, RH, RW, NH,
                 IT: tl.constexpr, RG: tl.constexpr):
    """The inner lanes' rows at loop ``step``: lane slot ``cslot`` of step ``step // n_inner`` reads
    its region from ``LIST`` (the routing index row of the query region, or the reverse list of
    the key region; ``slots`` entries), token ``ctok`` of tile ``step % n_inner``. Returns
    ``(valid, row)``."""
    T = RH * RW
    slot = (step // n_inner) * RG + cslot
    t = (step % n_inner) * IT + ctok
    ok = c_ok & (slot < slots) & (t < T)
    region = tl.load(LIST + slot, mask=ok, other=0)
    return ok, _rows(b, region, chead, tl.minimum(t, T - 1), S, RH, RW, NH)


# --- forward -------------------------------------------------------------------------------------

@triton.jit
def _routed_fwd_kernel(
    Q, K, V, IDX, O, LSE,
    qk_scale,  # softmax scale * log2(e)
    NH, S, RH, RW, TOPK, n_groups,
    DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OT: tl.constexpr, G: tl.constexpr, IT: tl.constexpr, RG: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    T = RH * RW
    R = S * S
    g, gid, t, q_ok, gb = _own_lanes(pid, n_groups, T, BLOCK_M, OT, G)
    q_row = _rows(b, gid // NH, gid % NH, t, S, RH, RW, NH)
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)

    cg, cgid, cslot, ctok, c_ok = _inner_lanes(gb, n_groups, BLOCK_N, IT, G, RG)
    cregion = cgid // NH
    chead = cgid % NH
    n_inner = (T + IT - 1) // IT
    for step in range(0, ((TOPK + RG - 1) // RG) * n_inner):
        k_ok, k_row = _listed_rows(IDX + (b * R + cregion) * TOPK, TOPK, step, n_inner, cslot, ctok, c_ok, b, chead,
                                   S, RH, RW, NH, IT, RG)
        k = load_rows(K, k_row, k_ok, od, D)
        v = load_rows(V, k_row, k_ok, ov, DV)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if G > 1:  # packed groups: a row sees its own group's columns only
            mask = k_ok[None, :] & (g[:, None] == cg[None, :])
        else:
            mask = k_ok[None, :] & (g[:, None] >= 0)
        s = tl.where(mask, s, float("-inf"))
        m_i, l_i, acc = softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    out, lse = softmax_epilogue(m_i, l_i, acc)
    store_rows(O, q_row, q_ok, ov, out, DV)
    tl.store(LSE + q_row, lse, mask=q_ok)


# --- backward ------------------------------------------------------------------------------------

@triton.jit
def _routed_bwd_dq_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, DQ,
    qk_scale, scale,
    NH, S, RH, RW, TOPK, n_groups,
    DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OT: tl.constexpr, G: tl.constexpr, IT: tl.constexpr, RG: tl.constexpr,
):
    """Per query group tile: dq = scale * sum_keys dS k, dS = P (dP - delta)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    T = RH * RW
    R = S * S
    g, gid, t, q_ok, gb = _own_lanes(pid, n_groups, T, BLOCK_M, OT, G)
    q_row = _rows(b, gid // NH, gid % NH, t, S, RH, RW, NH)
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)
    do = load_rows(DO, q_row, q_ok, ov, DV)
    lse = tl.load(LSE + q_row, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + q_row, mask=q_ok, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    cg, cgid, cslot, ctok, c_ok = _inner_lanes(gb, n_groups, BLOCK_N, IT, G, RG)
    cregion = cgid // NH
    chead = cgid % NH
    n_inner = (T + IT - 1) // IT
    for step in range(0, ((TOPK + RG - 1) // RG) * n_inner):
        k_ok, k_row = _listed_rows(IDX + (b * R + cregion) * TOPK, TOPK, step, n_inner, cslot, ctok, c_ok, b, chead,
                                   S, RH, RW, NH, IT, RG)
        k = load_rows(K, k_row, k_ok, od, D)
        v = load_rows(V, k_row, k_ok, ov, DV)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # invalid query lanes carry lse = 0 and would give huge p: mask them too
        mask = q_ok[:, None] & k_ok[None, :]
        if G > 1:
            mask = mask & (g[:, None] == cg[None, :])
        dq, p, ds = dq_step(s, mask, lse, delta, do, k, v, dq, DOT_PRECISION)

    store_rows(DQ, q_row, q_ok, od, dq * scale, D)


@triton.jit
def _routed_bwd_dkdv_kernel(
    Q, K, V, REV, REV_START, REV_COUNT, DO, LSE, DELTA, DK, DV_OUT,
    qk_scale, scale,
    NH, S, RH, RW, TOPK, n_groups,
    DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OT: tl.constexpr, G: tl.constexpr, IT: tl.constexpr, RG: tl.constexpr,
):
    """Per key group tile (own lanes = keys of (key region, head) groups): walks the query regions
    routed to each key region (the reverse index), dv = sum P^T dO, dk = scale * sum dS^T q."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    T = RH * RW
    R = S * S
    g, gid, t, k_ok, gb = _own_lanes(pid, n_groups, T, BLOCK_M, OT, G)
    k_row = _rows(b, gid // NH, gid % NH, t, S, RH, RW, NH)
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    k = load_rows(K, k_row, k_ok, od, D)
    v = load_rows(V, k_row, k_ok, ov, DV)
    dk = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    # the longest list of the program's key regions bounds its loop
    own_count = tl.load(REV_COUNT + b * R + gid // NH, mask=k_ok, other=0)
    most = tl.max(own_count, 0)

    cg, cgid, cslot, ctok, c_ok = _inner_lanes(gb, n_groups, BLOCK_N, IT, G, RG)
    ckreg = cgid // NH
    chead = cgid % NH
    start = tl.load(REV_START + b * R + ckreg, mask=c_ok, other=0)
    count = tl.load(REV_COUNT + b * R + ckreg, mask=c_ok, other=0)
    n_inner = (T + IT - 1) // IT
    for step in range(0, ((most + RG - 1) // RG) * n_inner):
        q_ok, q_row = _listed_rows(REV + b * R * TOPK + start, count, step, n_inner, cslot, ctok, c_ok, b, chead,
                                   S, RH, RW, NH, IT, RG)
        q = load_rows(Q, q_row, q_ok, od, D)
        do = load_rows(DO, q_row, q_ok, ov, DV)
        lse = tl.load(LSE + q_row, mask=q_ok, other=0.0)
        delta = tl.load(DELTA + q_row, mask=q_ok, other=0.0)
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # [keys, queries]
        mask = k_ok[:, None] & q_ok[None, :]
        if G > 1:
            mask = mask & (g[:, None] == cg[None, :])
        dk, dv = dkdv_step(s, mask, lse, delta, q, do, v, dk, dv, DOT_PRECISION)

    store_rows(DK, k_row, k_ok, od, dk * scale, D)
    store_rows(DV_OUT, k_row, k_ok, ov, dv, DV)


# --- host side -----------------------------------------------------------------------------------

def _with_packing(kernel, inner_slots: str):
    """The kernel with its packing meta-parameters (OT, G, IT, RG) derived from the region size and
    whatever BLOCK_M / BLOCK_N the launch (or the autotuner) chose. ``inner_slots``: the argument
    bounding the region slots of one inner step (TOPK in the query-side kernels; the key-side
    kernel's lists hold up to S*S query regions)."""
    def derive(name):
        def value(args):
            cap = args["TOPK"] if inner_slots == "TOPK" else args["S"] * args["S"]
            return packing(args["RH"] * args["RW"], args["BLOCK_M"], args["BLOCK_N"], cap)[name]
        return value

    return triton.heuristics({name: derive(name) for name in ("OT", "G", "IT", "RG")})(kernel)


_KERNELS = {
    "fwd": _with_packing(_routed_fwd_kernel, "TOPK"),
    "dq": _with_packing(_routed_bwd_dq_kernel, "TOPK"),
    "dkdv": _with_packing(_routed_bwd_dkdv_kernel, "S"),
}


class _Launch:
    """Everything the three kernels share for one call."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, num_regions: int, topk: int, scale: float):
        b, h, w, heads, d = q.shape
        s = num_regions
        self.batch, self.heads = b, heads
        self.region = (h // s, w // s)
        self.tokens = self.region[0] * self.region[1]
        self.n_groups = s * s * heads
        self.runtime = dict(NH=heads, S=s, RH=self.region[0], RW=self.region[1], TOPK=topk, n_groups=self.n_groups)
        self.meta = dict(
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            D=d, DV=v.shape[-1], BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
        )
        self.qk_scale = scale * _LOG2E
        self.scale = scale

    def grid(self, meta) -> Tuple[int, int]:
        """Programs: per batch element, the tiles of each block of ``G`` packed groups (``G`` and
        the own tokens per group ``OT`` as the kernel's packing heuristic chose them)."""
        return (triton.cdiv(self.n_groups, meta["G"]) * triton.cdiv(self.tokens, meta["OT"]), self.batch)

    def launch(self, which: str, *args, **extra) -> None:
        kwargs = dict(self.runtime, **extra, **self.meta)
        launch(_KERNELS[which], self.grid, args, kwargs, space=_autotune.SPACES[which],
               rows=self.batch * self.n_groups * self.tokens)


def reverse_index(index: torch.Tensor, regions: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The routing index inverted: for each batch element and key region, the query regions routed
    to it. ``index [B, S*S, topk]`` -> ``(rev [B, S*S * topk], start [B, S*S], count [B, S*S])``
    int32: the query regions of key region ``r`` are ``rev[b, start[b, r] : start[b, r] +
    count[b, r]]`` (ascending). Static shapes, no value read into Python."""
    b, _, topk = index.shape
    flat = index.reshape(b, regions * topk)
    _, order = torch.sort(flat, dim=1, stable=True)
    rev = torch.div(order, topk, rounding_mode="floor").to(torch.int32)
    count = torch.zeros(b, regions, dtype=torch.int32, device=index.device)
    count.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    start = torch.cumsum(count, dim=1, dtype=torch.int32) - count
    return rev.contiguous(), start.contiguous(), count.contiguous()


def routed_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, num_regions: int,
                   scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ``(out [B, H, W, heads, v_dim], lse [B, H, W, heads] fp32, base 2)``."""
    q, k, v, index = contiguous(q, k, v, index)
    out = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel():
        run = _Launch(q, v, num_regions, index.shape[-1], scale)
        run.launch("fwd", q, k, v, index, out, lse, run.qk_scale)
    return out, lse


def routed_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor, num_regions: int,
                    scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two backward kernels: ``(dq, dk, dv)`` in the dtypes of q, k, v."""
    q, k, v, out, grad_out, index, lse = contiguous(q, k, v, out, grad_out, index, lse)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel():
        run = _Launch(q, v, num_regions, index.shape[-1], scale)
        delta = (grad_out.float() * out.float()).sum(-1)  # [B, H, W, heads]
        rev, start, count = reverse_index(index, num_regions * num_regions)
        run.launch("dq", q, k, v, index, grad_out, lse, delta, dq, run.qk_scale, run.scale)
        run.launch("dkdv", q, k, v, rev, start, count, grad_out, lse, delta, dk, dv, run.qk_scale, run.scale)
    return dq, dk, dv


def step_launches(q, k, v, params: RoutedParams, scale: float, index: Optional[torch.Tensor],
                  backward: bool = True) -> None:
    """Every kernel launch of one training step for the dispatcher's arguments (those of
    ``can_run_triton``): the forward, then the backward when ``backward``. Inside an
    ``aot.compile_session``, on meta tensors, this compiles them (the compile gate and the
    compile probe call it); anywhere else it runs them."""
    from .reference import _route

    index = _route(q, k, params) if index is None else index
    out, lse = routed_forward(q, k, v, index, params.num_regions, scale)
    if backward:
        routed_backward(out, q, k, v, index, out, lse, params.num_regions, scale)
