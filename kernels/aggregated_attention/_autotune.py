"""Tile configurations of the aggregated_attention Triton kernels: the autotune search space, its
pruning rule, the untuned default and the interpreter's fixed tile.

Meta-parameters (``triton.py``): ``BLOCK_M`` query (or, in the ``bwd_k`` kernel, key) positions
per program, ``BLOCK_P`` pooled keys per inner step (``fwd`` and ``bwd_q`` only), ``num_warps``
and ``num_stages``.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence

import triton

from .._triton.autotune import Space, pow2 as _pow2

__all__ = ["SPACES", "MIN_BLOCK_M", "configs", "prune", "size_bucket"]

MIN_BLOCK_M = 16
"""The smallest BLOCK_M of any config (the interpreter's): sizes the backward's partial-sum rows."""

# Search axis 1, positions per program, preferred first: 64 rows of head_dim <= 64 fit the
# registers of 4 warps with the [BLOCK_M, BLOCK_P] score tile; 32 for large head dims, 128 to
# amortise the pooled keys' loads (each program reloads all P of them) on large maps.
_BLOCK_M = (64, 32, 128)
# Search axis 2, pooled keys per step: TransNeXt pools to P = 49 at 224 px (7x7), 256 at 512 px
# (16x16), 950 at 800x1216 (25x38); 64 covers 49 in one step, 32 wastes fewer lanes at 16 < P <= 32.
_BLOCK_P = (64, 32, 16)
_WARPS = (4, 8)
# Pipeline stages of the pooled loop's loads; the local slots are gathers, unpipelined. One stage
# first: the pooled loop is short (P = 49 at 224 px is one BLOCK_P = 64 step) and a second stage's
# buffers spill 8-16 B at the 64 x 64, 8-warp default on sm_80 (compile gate).
_STAGES = (1, 2)
# Register budget used in pruning: float32 tile elements per thread (of 255 32-bit registers).
_REGS_PER_THREAD = 160


@functools.lru_cache(maxsize=None)
def configs(which: str) -> tuple:
    """The full search space of kernel ``which`` ('fwd', 'bwd_q' or 'bwd_k'), before pruning.
    The backward kernels run with one stage: their loops also carry atomics (bwd_q) or only
    gathers (bwd_k), which software pipelining does not help."""
    out = []
    for m in _BLOCK_M:
        for p in (_BLOCK_P if which != "bwd_k" else (None,)):
            for w in _WARPS:
                for s in (_STAGES if which == "fwd" else (1,)):
                    meta = dict(BLOCK_M=m) if p is None else dict(BLOCK_M=m, BLOCK_P=p)
                    out.append(triton.Config(meta, num_warps=w, num_stages=s))
    return tuple(out)


def _live_tiles(which: str, m: int, p: int, d: int, dv: int, l: int) -> int:
    """float32 elements a program keeps live at once (rough): per kernel, the [BLOCK_M, *] rows
    (queries, s, accumulators), the score tiles and the pooled key / value block."""
    if which == "fwd":
        return 2 * m * d + 2 * m * dv + m * l + 2 * m * p + p * (d + dv)
    if which == "bwd_q":
        return 6 * m * d + 2 * m * dv + 2 * m * l + 4 * m * p + 2 * p * (d + dv)
    return 4 * m * d + 3 * m * dv


def prune(kernel: str, configs: Sequence[triton.Config], args: dict) -> List[triton.Config]:
    """Drop the configs of ``kernel`` ('fwd', 'bwd_q' or 'bwd_k') that cannot win on this problem:

    * ``BLOCK_P`` above the pooled length rounded up to a power of two (masked lanes only), and
      ``BLOCK_M`` above the map's positions rounded likewise;
    * configs whose live float32 tiles exceed ``_REGS_PER_THREAD`` per thread (spills);
    * 8 warps on fewer than 64 x 64 score elements (idle warps).

    When nothing survives (tiny inputs), the configs with the fewest lanes stay.
    """
    n = args["HH"] * args["WW"]
    pool = args["P"]
    d, dv = _pow2(args["D"]), _pow2(args["DV"])
    l = _pow2(args["WS"] ** 2)
    which = kernel

    def usable(c: triton.Config) -> bool:
        m, p = c.kwargs["BLOCK_M"], c.kwargs.get("BLOCK_P", 16)
        if m > _pow2(n) or p > _pow2(pool):
            return False
        if _live_tiles(which, m, p, d, dv, l) > _REGS_PER_THREAD * 32 * c.num_warps:
            return False
        # bwd_q's live state is its per-query rows (dq^, ds, the local slots' sums), not the
        # score tile: 8 warps share those even on small tiles
        return not (c.num_warps == 8 and which != "bwd_q" and m * max(p, d) < 64 * 64)

    kept = [c for c in configs if usable(c)]
    if kept:
        return kept
    fewest = min(c.kwargs["BLOCK_M"] * c.kwargs.get("BLOCK_P", 1) for c in configs)
    return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs.get("BLOCK_P", 1) == fewest and c.num_warps == 4]


# The untuned choice where the search order's first survivor does not fit: bwd_q at 32 x 32 and
# 4 warps sits at 255 registers and spills 8 B on sm_80 (float16, transnext_micro); 32 x 16 at 8
# warps needs 195 and spills nothing (compile gate, attnzoo kernels --configs all). bwd_k at 64
# rows spills 4 B under Triton 3.6 (168 registers, sm_90); 32 rows need 123 on 3.8.
_PREFERRED = {"bwd_q": dict(BLOCK_M=32, BLOCK_P=16, num_warps=8), "bwd_k": dict(BLOCK_M=32, num_warps=4)}


def _choose(which: str, kept: List[triton.Config], args: dict) -> triton.Config:
    """The untuned choice: the preferred config where it survives pruning (``_PREFERRED``), else
    the first survivor (preferred shapes first)."""
    preferred = _PREFERRED.get(which)
    return next((c for c in kept if preferred and all(c.all_kwargs().get(k) == v for k, v in preferred.items())),
                kept[0])


def _interpreter_config(which: str):
    """Under TRITON_INTERPRET=1 (no timing possible, every tl op a numpy call): 16 x 16 tiles."""
    meta = dict(BLOCK_M=MIN_BLOCK_M, num_warps=1, num_stages=1)
    if which != "bwd_k":
        meta["BLOCK_P"] = 16
    return lambda args: dict(meta)


def size_bucket(positions: int, pool: int) -> int:
    """One int for the autotune key: ceil(log2) of the positions and of P, 8 bits each."""
    return (max(0, (positions - 1).bit_length()) << 8) | max(0, (pool - 1).bit_length())


_KEYS = {
    "fwd": ["size_bucket", "LOCAL", "WS", "D", "DV", "HAS_PB", "HAS_LB", "HAS_LT", "HAS_LBIAS"],
    "bwd_q": ["size_bucket", "LOCAL", "WS", "D", "DV", "HAS_PB", "HAS_LB", "HAS_LT", "HAS_LBIAS", "PB_GRAD"],
    "bwd_k": ["size_bucket", "WS", "D", "DV", "HAS_LB", "HAS_LT", "HAS_LBIAS"],
}


SPACES: Dict[str, Space] = {
    which: Space(which, configs(which), prune, _KEYS[which], _interpreter_config(which), choose=_choose,
                 # bwd_q accumulates the pooled and pool_bias gradients with atomics: every timed run
                 # must start from zero
                 reset_to_zero=["DKP", "DVP", "DPB"] if which == "bwd_q" else None,
                 env="ATTNZOO_AGGREGATED_AUTOTUNE")
    for which in ("fwd", "bwd_q", "bwd_k")
}
"""The autotune space of each kernel ('fwd', 'bwd_q', 'bwd_k'; ``_triton.autotune.Space``)."""
