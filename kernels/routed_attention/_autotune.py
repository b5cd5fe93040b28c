"""Block configurations of the routed_attention Triton kernels: the packing rule, the autotune
search space and its pruning, and the fixed blocks used where nothing is tuned (small problems,
``ATTNZOO_AUTOTUNE=0``, Triton's interpreter).

Meta-parameters of every kernel (``triton.py``): ``BLOCK_M`` own lanes (queries in the forward
and dq kernels, keys in the dk/dv kernel), ``BLOCK_N`` inner lanes per loop step (keys, resp.
queries), ``num_warps``, ``num_stages``; the packing (``OT``, ``G``, ``IT``, ``RG``) follows from
those and the region size (``packing``).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence

import triton

from .._triton.autotune import Space, dot_bytes, pow2 as _pow2, smem_limit

__all__ = ["SPACES", "packing", "configs", "prune"]


def packing(tokens: int, block_own: int, block_inner: int, max_slots: int) -> Dict[str, int]:
    """How one program covers its work, for regions of ``tokens`` tokens:

    * ``G``: (region, head) groups packed per program: ``min(block_own, block_inner) // tokens``
      when at least two whole regions fit both blocks, else 1;
    * ``OT``: own tokens per group (``min(tokens, block_own)``; larger regions take several
      programs, one tile each);
    * ``IT``: inner tokens per region slot (``min(tokens, block_inner)``; larger regions take
      several steps per slot);
    * ``RG``: region slots per inner step, ``block_inner // (G * IT)``, at most ``max_slots``
      (topk for the query-side kernels) and at least 1.
    """
    small = min(block_own, block_inner)
    groups = small // tokens if 2 * tokens <= small else 1
    own = min(tokens, block_own)
    inner = min(tokens, block_inner)
    slots = max(1, min(block_inner // (groups * inner), max_slots))
    return dict(OT=own, G=groups, IT=inner, RG=slots)


# Own blocks: 16 lanes pack 4 groups of BiFormer's 2x2 stage-3 regions; 64 holds a stage-1 8x8
# region at 224 px whole; 128 amortises the per-program loads of the large regions of detection
# and segmentation inputs (hundreds of tokens per region).
_OWN = (16, 32, 64, 128)
# Inner blocks: 32 or 64 keys per step; more wastes lanes on a region's last partial step.
_INNER = (32, 64)
_WARPS = (4, 8)
_STAGES = (1, 2)
# Shared memory in pruning, as gna's: two inner blocks (k and v, or q and dO) per stage plus the
# own block, at the head dim rounded to a power of two, fit what the device grants one program
# (``_triton.autotune.smem_limit``).


def _config(own: int, inner: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(dict(BLOCK_M=own, BLOCK_N=inner), num_warps=warps, num_stages=stages)


@functools.lru_cache(maxsize=None)
def configs(which: str = "fwd") -> tuple:
    """The search space before pruning. The dk/dv kernel runs unpipelined (one stage), as gna's:
    its loop gathers per-query logsumexp and delta next to the q / dO tiles, the pattern Triton's
    ``TritonGPUCoalesceAsyncCopy`` pass failed on for gna's dk/dv kernel."""
    stages = (1,) if which == "dkdv" else _STAGES
    return tuple(_config(o, i, w, s) for o in _OWN for i in _INNER for w in _WARPS for s in stages)


def prune(kernel: str, configs: Sequence[triton.Config], args: dict) -> List[triton.Config]:
    """Drop the configs of ``kernel`` ('fwd', 'dq' or 'dkdv', pruned alike) that cannot win:

    * own blocks wider than the region rounded up to a power of two (at least 16): more packed
      groups only widen the block-diagonal score tile, the useful lanes stay the same;
    * q, k and v blocks that overflow shared memory at their stage count;
    * 8 warps on a score tile under 64 x 64 (idle warps), 4 on one of 128 x 64 at head dims > 64.

    Never empty: the config with the fewest lanes survives when every one is ruled out.
    """
    tokens = args["RH"] * args["RW"]
    head = max(args["D"], args["DV"])
    elem = dot_bytes(args)
    smem = smem_limit()

    def usable(c: triton.Config) -> bool:
        own, inner = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if own > _pow2(tokens):
            return False
        if (2 * c.num_stages * inner + own) * _pow2(head) * elem > smem:
            return False
        area = own * inner
        return not ((c.num_warps == 8 and area < 64 * 64) or (c.num_warps == 4 and area >= 128 * 64 and head > 64))

    kept = [c for c in configs if usable(c)]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_warps))]


def _choose(kernel: str, kept: List[triton.Config], args: dict) -> triton.Config:
    """The untuned choice among the survivors: the narrowest own block that holds a whole small
    region (at most 64 lanes), 64 keys per step, 4 warps, the most stages."""
    own = min(_pow2(args["RH"] * args["RW"]), 64)
    best = ([c for c in kept if c.kwargs["BLOCK_M"] == own and c.kwargs["BLOCK_N"] == 64 and c.num_warps == 4]
            or kept)
    return max(best, key=lambda c: c.num_stages)


def _interpreter_config(args: dict) -> dict:
    """16 x 16 blocks under TRITON_INTERPRET=1, where every tl op is a numpy call and autotuning
    (CUDA events) cannot run: a test case costs a few steps per program, and regions of up to 8
    tokens are packed."""
    return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)


# Everything the best blocks depend on; tensor dtypes are appended to the key by Triton itself.
_KEY = ["RH", "RW", "TOPK", "D", "DV", "DOT_PRECISION"]

SPACES: Dict[str, Space] = {
    which: Space(which, configs(which), prune, _KEY, _interpreter_config, choose=_choose,
                 env="ATTNZOO_ROUTED_AUTOTUNE")
    for which in ("fwd", "dq", "dkdv")
}
"""The autotune space of each kernel ('fwd', 'dq', 'dkdv'; ``_triton.autotune.Space``)."""
