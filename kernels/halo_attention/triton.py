"""Fused Triton kernels for halo attention (HaloNet), forward and backward.

Same semantics, layout and arguments as ``reference.py`` (the specification): heads-last
``q: [B, H/s, W/s, heads, head_dim]``, ``k: [B, H, W, heads, head_dim]``, ``v: [B, H, W, heads,
v_dim]``, relative tables ``height_rel, width_rel: [2 win - 1, head_dim]`` shared by the heads;
blocks of ``b x b`` keys own ``bq x bq`` queries (``bq = b / s``) and see a ``win x win`` key
window (``win = b + 2h``) whose positions outside the grid are zero keys and values that take
part in the softmax (content logit 0 plus their relative logits), never masked.

Structure (flash-attention style):

* Work is cut into *groups*: one group is one (block, head) pair of one batch element, group id
  ``block * heads + head`` (blocks row-major). Every query of a group sees the same window, read
  in place from k and v with masked loads (``other=0``: the zero padding costs no memory).
* A key step covers ``ROWS`` whole window rows: lane ``n`` of a step is window column
  ``jx = n % WINP`` (``WINP`` = win rounded up to a power of two; lanes ``jx >= win`` are
  masked) of row ``step * ROWS + (n // WINP) % ROWS``. Whole rows keep the lane -> (row, column)
  map a shift and a mask, and make the relative-logit gradients plain reductions (below).
* Packing. Small query blocks (halonet's strided blocks are 4x4 queries, block sizes 1-2 give 1-4)
  would leave most lanes of a program idle, so when two or more fit, ``G`` consecutive groups
  share one program (the heads of one block first: their q / k / v rows are adjacent in the
  heads-last layout), and a key step covers ``ROWS`` rows of each packed group's window. The
  score tile of a packed program is block-diagonal (a query sees only its own group's key
  lanes). Blocks of more queries than the own lanes take several programs, one query tile each.
  ``_autotune.packing`` derives ``OT, G, ROWS`` from the block sizes (``triton.heuristics``), so
  it follows the autotuner's choice.
* Relative logits. ``q_i . height_rel[jy - iy + win - 1]`` depends on the query and the key's
  window row only: per query a ``win``-entry table ``RH[i, jy]`` (``RW[i, jx]`` likewise). Both are
  computed in PyTorch before the kernels (``[B, H/s, W/s, heads, win]`` float32 each: two small
  batched matmuls, ``2 win`` floats a query next to the ``win^2`` keys the kernel reads) and the
  kernels add ``RH[i, jy(n)] + RW[i, jx(n)]`` to the score tile from L1-resident gathers. The
  backward's kernel returns ``dRH[i, jy] = sum_jx dS[i, (jy, jx)]`` and ``dRW[i, jx] = sum_jy dS``
  (a reshape of the dS tile to ``[queries, row slots, WINP]`` and a sum over either axis), and
  PyTorch chains them to dq and to the tables (small matmuls again; the table gradient sums the
  ``(iy, jy)`` pairs of each offset through a one-hot matrix, deterministically).
* Forward: online softmax in base 2 (``log2 e`` folded into the scale) with float32 accumulators;
  it stores the output and the per-query base-2 logsumexp (float32, ``[B, H/s, W/s, heads]``).
* Backward, one kernel per query tile: ``delta = rowsum(dO * O)`` (float32, PyTorch), then per key
  step P from the logsumexp, ``dS = P (dO v^T - delta)``, ``dq += dS k``, and the step's
  contribution to the window's dk and dv, ``dS^T q`` and ``P^T dO``.
* dk / dv through per-window partials folded in PyTorch, not atomics and not a key-major pass.
  Each window position of a group is one lane of exactly one step of one program (groups of up to
  64 queries are never split in the backward, ``_autotune.bwd_block_m``), so the program writes
  the window's complete dk / dv contribution, ``[win, win, d]`` float32 per group; overlapping
  windows (a key lies in up to 4 of them when ``h < b``, more when the halo exceeds the block)
  are summed afterwards by ``F.fold`` (col2im: the adjoint of the reference's unfold), which
  also drops the out-of-grid positions. Against fp32 atomics into k-sized buffers: deterministic
  (same bits every run), no contention or zero-fill. Against a key-major dk / dv kernel (routed's
  choice): no second pass recomputing P, and no masked work: a key block's programs would loop
  over the ``(2 ceil(h / b) + 1)^2`` query blocks around it, of whose (key, query) pairs only
  ``((b + 2h) / (3b))^2``, a third at halonet's b = 8, h = 3, are in a window. The price is
  memory: the partials are ``(win / b)^2`` (3x at b = 8, h = 3) float32 copies of k and of v,
  written once and read once by the fold.

Under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment when this module is first
imported, which must come before the process imports triton) the kernels run on the CPU, on CPU
tensors, with one fixed block configuration; tests use that. On CUDA the block sizes, warps and
stages are autotuned (``_autotune.py``; ``ATTNZOO_AUTOTUNE=0`` or ``ATTNZOO_HALO_AUTOTUNE=0``: the
default config) for problems of at least 2**18 (batch * heads * queries); smaller ones take the
default config.

Precision: float32 inputs use IEEE dot products (no TF32); float16 / bfloat16 inputs feed
``tl.dot`` in their own dtype (P and dS rounded to it for the P V, dS K, dS^T Q and P^T dO
products, as FlashAttention does) with float32 accumulation. The relative tables, the softmax
statistics, dS for the relative gradients and every accumulator are float32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

import triton
import triton.language as tl

from .._triton.flash import dq_step, load_rows, softmax_epilogue, softmax_step, store_rows
from .._triton.host import INTERPRETER, contiguous, refusal
from .._triton.launch import launch
from . import _autotune
from ._autotune import MAX_WINDOW, bwd_block_m, packing, window_lanes
from ._params import HaloParams
from .reference import relative_index

__all__ = ["step_launches", "halo_forward", "halo_backward", "relative_tables", "can_run_triton", "INTERPRETER"]

_LOG2E = 1.4426950408889634


def can_run_triton(q, k, v, height_rel, width_rel, params: HaloParams, scale: float) -> Optional[str]:
    """None when ``halo_triton`` can run these (already validated) inputs, else the reason why not."""
    reason = refusal([("q", q), ("height_rel", height_rel), ("width_rel", width_rel)],
                     [("head_dim", q.shape[-1]), ("v_dim", v.shape[-1])], [("batch", k.shape[0])])
    if reason is not None:
        return reason
    if params.window > MAX_WINDOW:
        return (f"window block_size + 2 * halo_size = {params.window} is not supported (at most {MAX_WINDOW}: "
                "one window row per key step)")
    _, h, w, heads, d = k.shape
    nby, nbx = params.num_blocks
    per_batch = max(h * w * heads * max(d, v.shape[-1]),
                    nby * nbx * heads * params.window ** 2 * max(d, v.shape[-1]))
    if per_batch >= 2**31:
        return f"one batch element has {per_batch} >= 2**31 elements (key rows or window partials)"
    return None


# --- device helpers ------------------------------------------------------------------------------

@triton.jit
def _own_lanes(pid, n_groups, QB, NH, BQ, NBX, HQ, WQ, b,
               BLOCK_M: tl.constexpr, OT: tl.constexpr, G: tl.constexpr):
    """The program's own query lanes: (packed group of each lane, query row in the ``[B * H/s * W/s
    * heads]`` row space (int64), valid, first packed group id, query tile)."""
    n_tiles = (QB + OT - 1) // OT
    gb = pid // n_tiles
    tile = pid % n_tiles
    m = tl.arange(0, BLOCK_M)
    g = m // OT
    gid = gb * G + g
    t = tile * OT + m % OT
    ok = (m < G * OT) & (gid < n_groups) & (t < QB)
    # invalid lanes address a valid row (never stored): no out-of-range pointer even if masked
    gid = tl.minimum(gid, n_groups - 1)
    t = tl.minimum(t, QB - 1)
    block = gid // NH
    y = (block // NBX) * BQ + t // BQ
    x = (block % NBX) * BQ + t % BQ
    row = ((b * HQ + y) * WQ + x) * NH + gid % NH
    return g, row, ok, gb, tile


@triton.jit
def _key_lanes(gb, n_groups, NH, NBX, BS, HALO, WIN,
               BLOCK_N: tl.constexpr, WINP: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr):
    """The key lanes of every step: (packed group, group id, head, window row offset in the step,
    window column, key-grid row and column of window position (0, jx), valid)."""
    n = tl.arange(0, BLOCK_N)
    slot = n // WINP
    cg = slot // ROWS
    r = slot % ROWS
    jx = n % WINP
    cgid = gb * G + cg
    ok = (cg < G) & (cgid < n_groups) & (jx < WIN)
    cgid = tl.minimum(cgid, n_groups - 1)
    block = cgid // NH
    y0 = (block // NBX) * BS - HALO
    x = (block % NBX) * BS - HALO + jx
    return cg, cgid, cgid % NH, r, tl.minimum(jx, WIN - 1), y0, x, ok


@triton.jit
def _window_step(K, V, RH, b, step, q_row, q_ok, chead, r, jx, y0, kx, c_ok, HH, WW, NH, WIN, od, ov,
                 D: tl.constexpr, DV: tl.constexpr, ROWS: tl.constexpr):
    """One key step: the keys and values of its window positions (zeros outside the grid), their
    window rows, validity, flat window index and the RH gathers ``[queries, keys]``."""
    jy = step * ROWS + r
    ok = c_ok & (jy < WIN)
    jy = tl.minimum(jy, WIN - 1)
    ky = y0 + jy
    inside = ok & (ky >= 0) & (ky < HH) & (kx >= 0) & (kx < WW)
    k_row = ((b * HH + tl.minimum(tl.maximum(ky, 0), HH - 1)) * WW + tl.minimum(tl.maximum(kx, 0), WW - 1)) * NH + chead
    k = load_rows(K, k_row, inside, od, D)
    v = load_rows(V, k_row, inside, ov, DV)
    rh = tl.load(RH + q_row[:, None] * WIN + jy[None, :], mask=q_ok[:, None] & ok[None, :], other=0.0)
    return k, v, rh, jy, ok


# --- forward -------------------------------------------------------------------------------------

@triton.jit
def _halo_fwd_kernel(
    Q, K, V, RH, RW, O, LSE,
    qk_scale,  # softmax scale * log2(e)
    NH, HQ, WQ, HH, WW, NBX, n_groups, BQ, BS, HALO, WIN,
    DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, WINP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OT: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g, q_row, q_ok, gb, tile = _own_lanes(pid, n_groups, BQ * BQ, NH, BQ, NBX, HQ, WQ, b, BLOCK_M, OT, G)
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)

    cg, cgid, chead, r, jx, y0, kx, c_ok = _key_lanes(gb, n_groups, NH, NBX, BS, HALO, WIN, BLOCK_N, WINP, G, ROWS)
    # RW[i, jx(n)]: the same for every step (a step holds whole rows)
    rw = tl.load(RW + q_row[:, None] * WIN + jx[None, :], mask=q_ok[:, None] & c_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    for step in range(0, (WIN + ROWS - 1) // ROWS):
        k, v, rh, jy, ok = _window_step(K, V, RH, b, step, q_row, q_ok, chead, r, jx, y0, kx, c_ok, HH, WW, NH, WIN,
                                        od, ov, D, DV, ROWS)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale + (rh + rw) * 1.4426950408889634
        if G > 1:  # packed groups: a query sees its own group's keys only
            mask = ok[None, :] & (g[:, None] == cg[None, :])
        else:
            mask = ok[None, :] & (g[:, None] >= 0)
        s = tl.where(mask, s, float("-inf"))
        m_i, l_i, acc = softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    out, lse = softmax_epilogue(m_i, l_i, acc)
    store_rows(O, q_row, q_ok, ov, out, DV)
    tl.store(LSE + q_row, lse, mask=q_ok)


# --- backward ------------------------------------------------------------------------------------

@triton.jit
def _halo_bwd_kernel(
    Q, K, V, RH, RW, DO, LSE, DELTA, DQ, DRH, DRW, DKP, DVP,
    qk_scale, scale,
    NH, HQ, WQ, HH, WW, NBX, n_groups, BQ, BS, HALO, WIN,
    DOT_PRECISION: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, WINP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OT: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr,
):
    """Per query tile: dq's content part (float32, scaled), dRH, dRW (float32) and the window's
    partial dk (scaled) and dv, ``DKP / DVP [B, groups, query tiles, win, win, d]`` float32."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    QB = BQ * BQ
    g, q_row, q_ok, gb, tile = _own_lanes(pid, n_groups, QB, NH, BQ, NBX, HQ, WQ, b, BLOCK_M, OT, G)
    od = tl.arange(0, BLOCK_D)
    ov = tl.arange(0, BLOCK_DV)
    q = load_rows(Q, q_row, q_ok, od, D)
    do = load_rows(DO, q_row, q_ok, ov, DV)
    lse = tl.load(LSE + q_row, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + q_row, mask=q_ok, other=0.0)

    cg, cgid, chead, r, jx, y0, kx, c_ok = _key_lanes(gb, n_groups, NH, NBX, BS, HALO, WIN, BLOCK_N, WINP, G, ROWS)
    rw = tl.load(RW + q_row[:, None] * WIN + jx[None, :], mask=q_ok[:, None] & c_ok[None, :], other=0.0)
    n_tiles = (QB + OT - 1) // OT
    part_base = ((b * n_groups + cgid) * n_tiles + tile) * (WIN * WIN)  # [BLOCK_N] int64
    NSLOT: tl.constexpr = BLOCK_N // WINP
    slots = tl.arange(0, NSLOT)
    slot_own = (slots[None, :] // ROWS == g[:, None]) & (slots[None, :] // ROWS < G) & q_ok[:, None]

    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    drw = tl.full([BLOCK_M, WINP], 0.0, tl.float32)
    for step in range(0, (WIN + ROWS - 1) // ROWS):
        k, v, rh, jy, ok = _window_step(K, V, RH, b, step, q_row, q_ok, chead, r, jx, y0, kx, c_ok, HH, WW, NH, WIN,
                                        od, ov, D, DV, ROWS)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale + (rh + rw) * 1.4426950408889634
        # invalid query lanes carry lse = 0 and would give huge p: mask them too
        mask = q_ok[:, None] & ok[None, :]
        if G > 1:
            mask = mask & (g[:, None] == cg[None, :])
        dq, p, ds = dq_step(s, mask, lse, delta, do, k, v, dq, DOT_PRECISION)
        dk_part = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
        dv_part = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        part_row = part_base + jy * WIN + jx
        store_rows(DKP, part_row, ok, od, dk_part * scale, D)
        store_rows(DVP, part_row, ok, ov, dv_part, DV)
        # relative logits: lanes are (row slot, column), slot = packed group * ROWS + row offset
        ds3 = tl.reshape(ds, [BLOCK_M, NSLOT, WINP])
        drw += tl.sum(ds3, 1)
        drh = tl.sum(ds3, 2)  # [BLOCK_M, NSLOT]; slots of other groups are zero (masked)
        slot_jy = step * ROWS + slots % ROWS
        tl.store(DRH + q_row[:, None] * WIN + slot_jy[None, :], drh, mask=slot_own & (slot_jy[None, :] < WIN))

    store_rows(DQ, q_row, q_ok, od, dq * scale, D)
    wj = tl.arange(0, WINP)
    store_rows(DRW, q_row, q_ok, wj, drw, WIN)


# --- host side -----------------------------------------------------------------------------------

def _with_packing(kernel):
    """The kernel with its packing meta-parameters (OT, G, ROWS) derived from the query block, the
    window and whatever BLOCK_M / BLOCK_N the launch (or the autotuner) chose."""
    def derive(name):
        return lambda args: packing(args["BQ"], args["WIN"], args["BLOCK_M"], args["BLOCK_N"])[name]

    return triton.heuristics({name: derive(name) for name in ("OT", "G", "ROWS")})(kernel)


_KERNELS = {"fwd": _with_packing(_halo_fwd_kernel), "bwd": _with_packing(_halo_bwd_kernel)}


class _Launch:
    """Everything the two kernels share for one call."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, halo_size: int,
                 query_stride: int, scale: float):
        b, h, w, heads, d = k.shape
        self.batch, self.heads = b, heads
        self.bq = block_size // query_stride
        self.window = block_size + 2 * halo_size
        nby, nbx = h // block_size, w // block_size
        self.n_groups = nby * nbx * heads
        self.runtime = dict(NH=heads, HQ=q.shape[1], WQ=q.shape[2], HH=h, WW=w, NBX=nbx, n_groups=self.n_groups,
                            BQ=self.bq, BS=block_size, HALO=halo_size, WIN=self.window)
        self.meta = dict(
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            D=d, DV=v.shape[-1], BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])), WINP=window_lanes(self.window),
        )
        self.qk_scale = scale * _LOG2E
        self.scale = scale

    def tiles(self, block_m: int) -> int:
        """Query tiles per group at ``block_m`` own lanes."""
        return triton.cdiv(self.bq * self.bq, min(self.bq * self.bq, block_m))

    def grid(self, meta) -> Tuple[int, int]:
        """Programs: per batch element, the query tiles of each block of ``G`` packed groups (``G``
        and the own queries per group ``OT`` as the kernel's packing heuristic chose them)."""
        return (triton.cdiv(self.n_groups, meta["G"]) * triton.cdiv(self.bq * self.bq, meta["OT"]), self.batch)

    def launch(self, which: str, *args, **extra) -> None:
        kwargs = dict(self.runtime, **extra, **self.meta)
        launch(_KERNELS[which], self.grid, args, kwargs, space=_autotune.SPACES[which],
               rows=self.batch * self.heads * self.runtime["HQ"] * self.runtime["WQ"])


def _rel_rows(table: torch.Tensor, bq: int, window: int) -> torch.Tensor:
    """``[bq, win, d]`` float32: the table row of each (query index, window index) pair of one axis."""
    return table.float()[relative_index(bq, window, device=table.device)]


def relative_tables(q: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor, block_size: int,
                    halo_size: int, query_stride: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-query relative logits of each axis: ``RH[.., jy] = q . height_rel[jy - iy + win - 1]`` and
    ``RW[.., jx] = q . width_rel[jx - ix + win - 1]``, each ``[B, H/s, W/s, heads, win]`` float32."""
    b, hq, wq, heads, d = q.shape
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    qf = q.float().reshape(b, hq // bq, bq, wq // bq, bq, heads, d)
    rh = torch.einsum("nYyXxhd,yjd->nYyXxhj", qf, _rel_rows(height_rel, bq, win))
    rw = torch.einsum("nYyXxhd,xjd->nYyXxhj", qf, _rel_rows(width_rel, bq, win))
    return rh.reshape(b, hq, wq, heads, win).contiguous(), rw.reshape(b, hq, wq, heads, win).contiguous()


def _table_grad(rows_grad: torch.Tensor, bq: int, window: int) -> torch.Tensor:
    """``[2 win - 1, d]`` from the gradient of each (query index, window index) row ``[bq, win, d]``:
    the pairs of one offset summed through a one-hot matrix (deterministic, unlike index_add_ on
    CUDA)."""
    idx = relative_index(bq, window, device=rows_grad.device).reshape(-1)
    onehot = (idx[:, None] == torch.arange(2 * window - 1, device=rows_grad.device)[None, :]).float()
    return onehot.t() @ rows_grad.reshape(bq * window, -1)


def _fold_windows(part: torch.Tensor, spatial: Tuple[int, int], block_size: int, halo_size: int) -> torch.Tensor:
    """Sums per-window partial gradients ``[B, groups, tiles, win, win, c]`` (groups = blocks x heads)
    into ``[B, H, W, heads, c]`` float32: F.fold, the adjoint of the reference's unfold; window
    positions outside the grid fall in the padding that is cropped."""
    b, _, _, win, _, c = part.shape
    h, w = spatial
    nby, nbx = h // block_size, w // block_size
    part = part.sum(2) if part.shape[2] > 1 else part[:, :, 0]
    heads = part.shape[1] // (nby * nbx)
    cols = part.reshape(b, nby, nbx, heads, win, win, c).permute(0, 3, 6, 4, 5, 1, 2)
    cols = cols.reshape(b, heads * c * win * win, nby * nbx)
    grid = F.fold(cols, (h + 2 * halo_size, w + 2 * halo_size), kernel_size=win, stride=block_size)
    grid = grid.reshape(b, heads, c, h + 2 * halo_size, w + 2 * halo_size)
    grid = grid[:, :, :, halo_size:halo_size + h, halo_size:halo_size + w]
    return grid.permute(0, 3, 4, 1, 2)


def halo_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor,
                 block_size: int, halo_size: int, query_stride: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ``(out [B, H/s, W/s, heads, v_dim], lse [B, H/s, W/s, heads] fp32, base 2)``."""
    q, k, v = contiguous(q, k, v)
    out = torch.empty((*q.shape[:4], v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:4], dtype=torch.float32, device=q.device)
    if out.numel():
        rh, rw = relative_tables(q, height_rel, width_rel, block_size, halo_size, query_stride)
        run = _Launch(q, k, v, block_size, halo_size, query_stride, scale)
        run.launch("fwd", q, k, v, rh, rw, out, lse, run.qk_scale)
    return out, lse


def halo_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor,
                  width_rel: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, block_size: int, halo_size: int,
                  query_stride: int, scale: float) -> Tuple[torch.Tensor, ...]:
    """The backward kernel and its PyTorch epilogue: ``(dq, dk, dv, d_height_rel, d_width_rel)`` in
    the dtypes of their inputs."""
    q, k, v, out, grad_out, lse = contiguous(q, k, v, out, grad_out, lse)
    if not q.numel():
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(height_rel),
                torch.zeros_like(width_rel))
    b, hq, wq, heads, d = q.shape
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    run = _Launch(q, k, v, block_size, halo_size, query_stride, scale)
    rh, rw = relative_tables(q, height_rel, width_rel, block_size, halo_size, query_stride)
    delta = (grad_out.float() * out.float()).sum(-1)  # [B, H/s, W/s, heads]
    f32 = dict(dtype=torch.float32, device=q.device)
    dq_content = torch.empty(q.shape, **f32)
    drh = torch.empty(rh.shape, **f32)
    drw = torch.empty(rw.shape, **f32)
    tiles = run.tiles(bwd_block_m(bq))
    dkp = torch.empty((b, run.n_groups, tiles, win, win, d), **f32)
    dvp = torch.empty((b, run.n_groups, tiles, win, win, v.shape[-1]), **f32)
    run.launch("bwd", q, k, v, rh, rw, grad_out, lse, delta, dq_content, drh, drw, dkp, dvp, run.qk_scale, run.scale)

    # chain dRH, dRW to q and the tables
    shape7 = (b, hq // bq, bq, wq // bq, bq, heads)
    drh7, drw7 = drh.reshape(*shape7, win), drw.reshape(*shape7, win)
    qf = q.float().reshape(*shape7, d)
    hr, wr = _rel_rows(height_rel, bq, win), _rel_rows(width_rel, bq, win)
    dq = dq_content.reshape(*shape7, d)
    dq = dq + torch.einsum("nYyXxhj,yjd->nYyXxhd", drh7, hr) + torch.einsum("nYyXxhj,xjd->nYyXxhd", drw7, wr)
    d_height = _table_grad(torch.einsum("nYyXxhj,nYyXxhd->yjd", drh7, qf), bq, win)
    d_width = _table_grad(torch.einsum("nYyXxhj,nYyXxhd->xjd", drw7, qf), bq, win)
    spatial = (k.shape[1], k.shape[2])
    dk = _fold_windows(dkp, spatial, block_size, halo_size)
    dv = _fold_windows(dvp, spatial, block_size, halo_size)
    return (dq.reshape(q.shape).to(q.dtype), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous(),
            d_height.to(height_rel.dtype), d_width.to(width_rel.dtype))


def step_launches(q, k, v, height_rel, width_rel, params: HaloParams, scale: float, backward: bool = True) -> None:
    """Every kernel launch of one training step for the dispatcher's arguments (those of
    ``can_run_triton``): the forward, then the backward when ``backward``. Inside an
    ``aot.compile_session``, on meta tensors, this compiles them (the compile gate and the
    compile probe call it); anywhere else it runs them."""
    sizes = (params.block_size, params.halo_size, params.query_stride)
    out, lse = halo_forward(q, k, v, height_rel, width_rel, *sizes, scale)
    if backward:
        halo_backward(out, q, k, v, height_rel, width_rel, out, lse, *sizes, scale)
