"""halo_attention's cases for ``attnzoo bench-ops`` (tools/bench_ops.py drives every op's case
module alike).

Cases: the halo-attention layers of halonet50ts (block 8, halo 3: 14x14 key windows; stage 2:
4 heads, head_dim 32; stage 3: 8 heads, 32; stage 4: 8 heads, 64; all at query stride 1, the
strided first blocks of its stages are bottlenecks) at three input sizes:

* 256 px classification (the published resolution), batch 64 per GPU (there is no HaloNet recipe
  in train/recipes; 64 is a typical per-GPU share);
* 512x512 segmentation (configs/halonet/upernet_az_halonet50ts_*: batch 16 over 8 GPUs, 2 each);
* 800x1216 detection (configs/halonet/mask-rcnn_az_halonet50ts_*: batch 2 per GPU); the stage maps
  (100x152, 50x76, 25x38) padded to multiples of 8 as HaloAttention2d pads them.

Backends, each computing the same function from q, k, v and the two relative tables:

* ``triton``: ``halo_attention(..., backend='triton')``, the fused kernels;
* ``reference``: ``halo_attention(..., backend='reference')``, the specification (pad, unfold,
  dense per-block attention);
* ``flex``: ``torch.nn.attention.flex_attention``. It can express the op, at a cost: zero keys
  must exist as keys, so k and v are zero-padded by the halo (a copy inside the step) and
  flattened; queries are put in block-major order so that a query tile sees few key tiles; a
  ``mask_mod`` keeps the ``win x win`` window of the query's block, and a ``score_mod`` adds the
  relative logits from the per-query tables ``RH, RW [B, heads, queries, win]`` computed (as the
  Triton backend does) with two small matmuls inside the step. Compiled on CUDA, eager on the CPU
  (forward only there: FlexAttention has no CPU backward).

Each backend gets its native layout (heads-last for the first two, ``[B, heads, tokens, d]`` with
block-major queries for flex), prepared outside the timed region.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from attnzoo.kernels.halo_attention import HaloParams, halo_attention, halo_attention_op
from attnzoo.kernels.halo_attention.reference import relative_index
from attnzoo.tools.bench_ops import make_step

__all__ = ["OP", "BACKENDS", "NOTES", "CASES", "SMALL_CASES", "HaloCase", "min_bytes", "attention_flops", "runner",
           "block_major", "from_block_major"]

OP = "halo_attention"
BACKENDS = ("triton", "reference", "flex")
NOTES = (
    "every step starts from q, k, v, height_rel, width_rel; scale head_dim ** -0.5; zero-padded "
    "border keys take part in the softmax",
    "flex: FlexAttention over k / v zero-padded by the halo (the copy is in the step), block-major "
    "queries, a window mask_mod and the relative logits in a score_mod (per-query tables computed "
    "in the step)",
)


@dataclass(frozen=True)
class HaloCase:
    name: str
    batch: int
    h: int  # key grid after the mixer's padding (a multiple of block)
    w: int
    heads: int
    head_dim: int
    block: int = 8
    halo: int = 3
    stride: int = 1

    @property
    def params(self) -> HaloParams:
        return HaloParams((self.h, self.w), self.block, self.halo, self.stride)

    @property
    def queries(self) -> int:
        return (self.h // self.stride) * (self.w // self.stride)

    def describe(self) -> str:
        win = self.block + 2 * self.halo
        stride = f", query stride {self.stride}" if self.stride > 1 else ""
        return (f"{self.h}x{self.w}, blocks {self.block}, halo {self.halo} ({win}x{win} windows){stride}, "
                f"B {self.batch} x H {self.heads}, d {self.head_dim}")


def _stages(prefix: str, sizes, batch: int):
    # halonet50ts's halo layers: (heads, head_dim) per stage 2, 3, 4
    return [HaloCase(f"{prefix}-s{i + 2}", batch, h, w, heads, d)
            for i, ((h, w), (heads, d)) in enumerate(zip(sizes, [(4, 32), (8, 32), (8, 64)]))]


CASES = {c.name: c for c in [
    *_stages("cls256", [(32, 32), (16, 16), (8, 8)], 64),
    *_stages("seg512", [(64, 64), (32, 32), (16, 16)], 2),
    *_stages("det800x1216", [(104, 152), (56, 80), (32, 40)], 2),  # 100x152, 50x76, 25x38 padded
]}

# Tiny versions of the same regimes: a second on the CPU with reference / flex, tens of seconds
# under Triton's interpreter.
SMALL_CASES = {c.name: c for c in [
    HaloCase("small-b8-h3-16x16", 1, 16, 16, 2, 16),  # 2x2 blocks, 14x14 windows
    HaloCase("small-b4-h2-s2-8x12", 1, 8, 12, 2, 16, block=4, halo=2, stride=2),  # strided, packed
    HaloCase("small-b2-h1-6x10", 1, 6, 10, 2, 16, block=2, halo=1),  # 2x2 blocks: packed, H != W
]}


# --- roofline ------------------------------------------------------------------------------------

def min_bytes(case: HaloCase, elem: int, backward: bool) -> int:
    """Bytes any implementation must move: read q, k, v and the two tables, write out; with the
    backward also write the float32 logsumexp, then read q, k, v, out, dout, logsumexp and the
    tables, and write dq, dk, dv and the table gradients."""
    kv = case.batch * case.h * case.w * case.heads * case.head_dim * elem  # k (or v)
    qo = case.batch * case.queries * case.heads * case.head_dim * elem  # q (or out)
    tables = 2 * (2 * case.params.window - 1) * case.head_dim * elem
    lse = case.batch * case.queries * case.heads * 4
    fwd = 2 * qo + 2 * kv + tables
    if not backward:
        return fwd
    return fwd + lse + (3 * qo + 2 * kv + lse + tables) + (qo + 2 * kv + tables)


def attention_flops(case: HaloCase, backward: bool) -> int:
    """FLOPs of the attention (2 per multiply-add, every query against its ``win^2`` keys,
    zero-padded ones included): QK^T and PV; the backward adds FlashAttention-2's five products.
    The relative logits (``2 win`` dot products a query) are left out: under 10% at win 14, and
    the same in every backend."""
    pairs = case.batch * case.heads * case.queries * case.params.window ** 2
    d = case.head_dim
    return 2 * pairs * (2 * d + (5 * d if backward else 0))


# --- flex's layout -------------------------------------------------------------------------------

def block_major(t: torch.Tensor, query_block: int) -> torch.Tensor:
    """``[B, Hq, Wq, heads, c]`` -> contiguous ``[B, heads, Hq*Wq, c]`` with the queries of each
    block contiguous (blocks row-major, row-major inside a block)."""
    b, h, w, heads, c = t.shape
    bq = query_block
    t = t.reshape(b, h // bq, bq, w // bq, bq, heads, c).permute(0, 5, 1, 3, 2, 4, 6)
    return t.reshape(b, heads, h * w, c).contiguous()


def from_block_major(t: torch.Tensor, h: int, w: int, query_block: int) -> torch.Tensor:
    """The inverse of ``block_major``: ``[B, heads, Hq*Wq, c]`` -> ``[B, Hq, Wq, heads, c]``."""
    b, heads, _, c = t.shape
    bq = query_block
    t = t.reshape(b, heads, h // bq, w // bq, bq, bq, c).permute(0, 2, 4, 3, 5, 1, 6)
    return t.reshape(b, h, w, heads, c)


def _flex_tables(q: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor, bq: int, win: int):
    """Per-query relative logits on block-major ``q [B, heads, N, d]``: ``RH[.., jy]`` and
    ``RW[.., jx]``, each ``[B, heads, N, win]``."""
    b, heads, n, d = q.shape
    qb = q.reshape(b, heads, n // (bq * bq), bq, bq, d)
    idx = relative_index(bq, win, device=q.device)
    rh = torch.einsum("bhnyxd,yjd->bhnyxj", qb, height_rel[idx]).reshape(b, heads, n, win)
    rw = torch.einsum("bhnyxd,xjd->bhnyxj", qb, width_rel[idx]).reshape(b, heads, n, win)
    return rh, rw


# --- one case ------------------------------------------------------------------------------------

def _inputs(case: HaloCase, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    s, d, win = case.stride, case.head_dim, case.params.window
    qshape = (case.batch, case.h // s, case.w // s, case.heads, d)
    kshape = (case.batch, case.h, case.w, case.heads, d)
    q, grad = (torch.randn(*qshape, generator=g) for _ in range(2))
    k, v = (torch.randn(*kshape, generator=g) for _ in range(2))
    hr, wr = (torch.randn(2 * win - 1, d, generator=g) * d ** -0.5 for _ in range(2))
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, hr, wr, grad))


def runner(backend: str, case: HaloCase, device: torch.device, dtype: torch.dtype, backward: bool,
           cache: Dict[Tuple, Callable]) -> Tuple[Optional[Callable[[], object]], Optional[str]]:
    """(a closure running one forward [+ backward], None) or (None, why the backend cannot run).
    The forward-only step returns the output in the backend's layout (``from_block_major`` turns
    flex's into the others')."""
    q, k, v, hr, wr, grad = _inputs(case, device, dtype)
    bs, halo, s = case.block, case.halo, case.stride
    scale = case.head_dim ** -0.5
    if backend in ("triton", "reference"):
        reason = halo_attention_op.why_not(backend, q, k, v, hr, wr, case.params, scale)
        if reason is not None:
            return None, reason

        def call():
            return halo_attention(q, k, v, hr, wr, bs, halo, s, scale=scale, backend=backend)
    elif backend == "flex":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            return None, f"torch {torch.__version__} has no flex_attention ({e})"
        if backward and device.type != "cuda":
            return None, f"FlexAttention has no backward on {device.type} (torch {torch.__version__})"
        bq, win = case.params.query_block, case.params.window
        nbx = case.w // bs
        wp = case.w + 2 * halo
        n_q, n_kv = case.queries, (case.h + 2 * halo) * wp
        q, grad = block_major(q, bq), block_major(grad, bq)
        k, v = (t.permute(0, 3, 1, 2, 4).contiguous() for t in (k, v))  # [B, heads, H, W, d]
        qb = bq * bq

        def window_pos(q_idx, kv_idx):
            blk = q_idx // qb
            jy = kv_idx // wp - (blk // nbx) * bs
            jx = kv_idx % wp - (blk % nbx) * bs
            return jy, jx

        def mask_mod(b, h, q_idx, kv_idx):
            jy, jx = window_pos(q_idx, kv_idx)
            return (jy >= 0) & (jy < win) & (jx >= 0) & (jx < win)

        if device.type == "cuda":
            key = ("flex",)
            if key not in cache:
                cache[key] = torch.compile(flex_attention, dynamic=False)
            attend = cache[key]
            block_mask = create_block_mask(mask_mod, None, None, n_q, n_kv, device=str(device), _compile=True)
        else:
            def attend(*a, **kw):
                with warnings.catch_warnings():  # "use torch.compile": deliberately not on the CPU
                    warnings.simplefilter("ignore", UserWarning)
                    return flex_attention(*a, **kw)

            block_mask = create_block_mask(mask_mod, None, None, n_q, n_kv, device=str(device))

        def call():
            kp, vp = (F.pad(t, (0, 0, halo, halo, halo, halo)).flatten(2, 3) for t in (k, v))
            rh, rw = _flex_tables(q, hr, wr, bq, win)

            def score_mod(score, b, h, q_idx, kv_idx):
                jy, jx = window_pos(q_idx, kv_idx)
                jy = torch.clamp(jy, 0, win - 1)
                jx = torch.clamp(jx, 0, win - 1)
                return score + rh[b, h, q_idx, jy] + rw[b, h, q_idx, jx]

            return attend(q, kp, vp, score_mod=score_mod, block_mask=block_mask, scale=scale)
    else:
        return None, f"unknown backend {backend!r} (this op has: {', '.join(BACKENDS)})"

    leaves = [q, k, v, hr, wr]
    return make_step(call, leaves, grad, backward), None
