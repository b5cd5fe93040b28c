"""Block configurations of the halo_attention Triton kernels: the packing rule, the autotune
search space and its pruning, and the fixed blocks used where nothing is tuned (small problems,
``ATTNZOO_AUTOTUNE=0``, Triton's interpreter).

Meta-parameters of both kernels (``triton.py``): ``BLOCK_M`` own query lanes, ``BLOCK_N`` key
lanes per inner step (whole rows of the ``win x win`` key window, ``WINP = next_pow2(win)``
lanes a row), ``num_warps``, ``num_stages``; the packing (``OT``, ``G``, ``ROWS``) follows from
those, the query block and the window (``packing``).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence

import triton

from .._triton.autotune import Space, dot_bytes, pow2 as _pow2, smem_limit

__all__ = ["SPACES", "packing", "window_lanes", "bwd_block_m", "configs", "prune", "MAX_WINDOW"]

MAX_WINDOW = 64
"""Largest window side (``block_size + 2 * halo_size``) the kernels take: one window row must fit
the widest key step (64 lanes)."""


def window_lanes(window: int) -> int:
    """Lanes of one window row in a key step: the window side rounded up to a power of two."""
    return triton.next_power_of_2(window)


def packing(query_block: int, window: int, block_own: int, block_inner: int) -> Dict[str, int]:
    """How one program covers its work, for query blocks of ``QB = query_block ** 2`` queries and
    windows of ``window`` rows of ``window`` keys (``block_inner >= window_lanes(window)``):

    * ``G``: (block, head) groups packed per program, ``min(block_own // QB, block_inner // WINP)``
      when at least two whole query blocks fit the own lanes and two window rows the inner lanes,
      else 1;
    * ``OT``: own queries per group (``min(QB, block_own)``; larger blocks take several programs);
    * ``ROWS``: window rows of every packed group per inner step, ``block_inner // (G * WINP)``,
      at most ``window``.
    """
    qb = query_block * query_block
    wl = window_lanes(window)
    groups = min(block_own // qb, block_inner // wl) if 2 * qb <= block_own else 1
    groups = max(groups, 1)
    rows = max(1, min(block_inner // (groups * wl), window))
    return dict(OT=min(qb, block_own), G=groups, ROWS=rows)


def bwd_block_m(query_block: int) -> int:
    """The backward's own lanes, fixed per shape (never tuned): whole query blocks of up to 64
    queries, so that a window's partial dk / dv is complete in one program and the partial buffer's
    size is known before the launch (``triton.py``)."""
    return min(max(16, triton.next_power_of_2(query_block * query_block)), 64)


# Own blocks: 16 lanes hold a strided halonet block (4x4 queries) or pack 4 blocks of 2x2; 64 a
# whole 8x8 block (halonet's block_size); 128 packs two of them.
_OWN = (16, 32, 64, 128)
# Key lanes per step: whole window rows (16 lanes per row for halonet's 10-14 wide windows).
_INNER = (16, 32, 64)
_WARPS = (4, 8)
_STAGES = (1, 2)
# Shared memory in pruning, as routed's: two inner blocks (k and v) per stage plus the own block,
# at the head dim rounded to a power of two, within what the device grants one program
# (``_triton.autotune.smem_limit``).


def _config(own: int, inner: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(dict(BLOCK_M=own, BLOCK_N=inner), num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def configs(which: str = "fwd") -> tuple:
    """The search space before pruning. The backward runs unpipelined (one stage): its loop also
    stores the per-window partial dk / dv of every step."""
    stages = (1,) if which == "bwd" else _STAGES
    return tuple(_config(o, i, w, s) for o in _OWN for i in _INNER for w in _WARPS for s in stages)


def prune(kernel: str, configs: Sequence[triton.Config], args: dict) -> List[triton.Config]:
    """Drop the configs of ``kernel`` ('fwd' or 'bwd') that cannot run or cannot win:

    * key steps narrower than one window row (cannot run: a step holds whole rows);
    * in the backward, own blocks other than ``bwd_block_m`` (the partial buffers are sized by it);
    * own blocks wider than the query block rounded up to a power of two (at least 16) unless they
      pack two or more blocks (more lanes only widen the block-diagonal score tile), and key steps
      wider than the whole window rounded likewise;
    * q, k and v blocks that overflow shared memory at their stage count;
    * 8 warps on a score tile under 64 x 64 (idle warps), 4 on one of 128 x 64 at head dims > 64.

    Never empty: the narrowest config that can run survives when every one is ruled out.
    """
    qb = args["BQ"] * args["BQ"]
    win = args["WIN"]
    wl = window_lanes(win)
    head = max(args["D"], args["DV"])
    elem = dot_bytes(args)
    smem = smem_limit()
    backward = kernel == "bwd"

    def runnable(c: triton.Config) -> bool:
        if c.kwargs["BLOCK_N"] < wl:
            return False
        return not backward or c.kwargs["BLOCK_M"] == bwd_block_m(args["BQ"])

    def usable(c: triton.Config) -> bool:
        own, inner = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if own > _pow2(qb) and packing(args["BQ"], win, own, inner)["G"] < 2:
            return False
        if inner > max(wl, _pow2(win * win)):
            return False
        if (2 * c.num_stages * inner + own) * _pow2(head) * elem > smem:
            return False
        area = own * inner
        if backward and head >= 64:  # five [own, d] accumulators: 8 warps halve each thread's share
            return c.num_warps == 8 or area < 64 * 64
        return not ((c.num_warps == 8 and area < 64 * 64) or (c.num_warps == 4 and area >= 128 * 64 and head > 64))

    can = [c for c in configs if runnable(c)]
    kept = [c for c in can if usable(c)]
    return kept or [min(can, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps, c.num_stages))]


def _choose(which: str, kept: List[triton.Config], named_args: dict) -> triton.Config:
    """The untuned choice among the configs that survive pruning: whole query blocks of up to 64
    queries (``bwd_block_m``: each program reads its window once), key steps of 32 lanes or one
    window row if wider (two rows of halonet's 10-14 wide windows), 4 warps, the most stages;
    the nearest surviving config otherwise."""
    own = bwd_block_m(named_args["BQ"])
    # the backward keeps more live tiles (dq, dk, dv partials, the relative logits' gradients):
    # one window row per key step and, at head dims of 64, 8 warps keep it below the register
    # ceiling (compile gate, sm_80: 64 x 32 spills 88-160 B at 4 warps)
    backward = which == "bwd"
    inner = window_lanes(named_args["WIN"]) if backward else max(32, window_lanes(named_args["WIN"]))
    warps = 8 if backward and max(named_args["D"], named_args["DV"]) >= 64 else 4
    return min(kept, key=lambda c: (abs(c.kwargs["BLOCK_M"] - own), abs(c.kwargs["BLOCK_N"] - inner),
                                    c.num_warps != warps, -c.num_stages))


def _interpreter_config(args: dict) -> dict:
    """Under TRITON_INTERPRET=1 (every tl op a numpy call, no timing possible, the cost is per op
    more than per lane): the backward's own block (``bwd_block_m``) in both kernels, and key steps
    of 32 lanes (two rows of halonet's 14-wide windows) or one window row if wider."""
    return dict(BLOCK_M=bwd_block_m(args["BQ"]), BLOCK_N=max(32, window_lanes(args["WIN"])), num_warps=1, num_stages=1)


# Everything the best blocks depend on; tensor dtypes are appended to the key by Triton itself.
_KEY = ["BQ", "WIN", "D", "DV", "DOT_PRECISION"]


SPACES: Dict[str, Space] = {
    which: Space(which, configs(which), prune, _KEY, _interpreter_config, choose=_choose,
                 env="ATTNZOO_HALO_AUTOTUNE")
    for which in ("fwd", "bwd")
}
"""The autotune space of each kernel ('fwd', 'bwd'; ``_triton.autotune.Space``)."""
