"""Tile configurations of the gna Triton kernels: the autotune search space, its pruning rule,
and the fixed tiles used where nothing is tuned (blocked fast path, Triton's interpreter).

Meta-parameters of every kernel (``triton.py``): the *own* tile ``T0 x T1 x T2`` (positions of one
program: queries in the forward and dq kernels, keys in the dk/dv kernel), the *inner* block
``U0 x U1 x U2`` (keys, resp. queries, visited per loop step), ``BLOCK_M`` / ``BLOCK_N`` = those
products rounded up to a power of two (lanes past the product are masked), ``num_warps`` and
``num_stages``. Axis 0 is the outermost of the canonical 3-D problem (size 1 for 1-D / 2-D input).
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Sequence, Tuple

import triton

from .._triton.autotune import Space, dot_bytes, pow2 as _pow2, smem_limit

__all__ = ["SPACES", "is_blocked", "size_bucket", "blocked_config", "interpreter_config", "configs", "prune"]

Shape = Tuple[int, int, int]

# Search axis 1, own tile shapes, the preferred one first (it is also the untuned default).
# Square-ish boxes in the dimensions the problem really has: a tile's halo grows by kernel - 1
# per axis, so for a fixed lane count the most compact box loads the fewest keys per query.
# 64 lanes suit head dims up to 64, 128 lanes amortise the halo better at small kernels.
_TILES: Dict[int, List[Shape]] = {
    1: [(1, 1, 64), (1, 1, 128)],
    2: [(1, 8, 8), (1, 8, 16)],
    3: [(1, 8, 8), (2, 4, 8)],
}
# Search axis 2, inner blocks (keys per loop step in the forward and dq kernels, queries in the
# dk/dv kernel): 32 or 64 lanes; much smaller costs loop overhead, much larger wastes masked lanes
# at the halo's edges. Preferred first, per kernel, from the compile gate (attnzoo kernels, sm_90,
# bf16, nat_mini): a 64-query tile with 32-key blocks keeps the forward at 102 registers (dq 166)
# and no spill, where 64-key blocks reach the 255-register ceiling and spill 24 B (dq 16 B) with
# the score tile, window mask and bias gather live at once; the dk/dv kernel holds no running
# softmax and fits 64 x 64 in 200 registers.
_INNER: Dict[int, List[Shape]] = {
    1: [(1, 1, 32), (1, 1, 64)],
    2: [(1, 4, 8), (1, 8, 8)],
    3: [(2, 4, 4), (1, 8, 8)],
}
_INNER_DKDV: Dict[int, List[Shape]] = {rank: shapes[::-1] for rank, shapes in _INNER.items()}
# Search axis 3, warps: 4 suits 64 x 32 score tiles, 8 the larger ones (pruned by tile area
# below). The dk/dv kernel prefers 8: its 64 x 64 tile spills 8 B at 4 warps on sm_80 (compile gate).
_WARPS = (4, 8)
# Search axis 4, pipeline stages of the inner loop's loads: 2 hides one block of latency, 3 helps
# at small head dims where shared memory has room for it.
_STAGES = (2, 3)
# Shared memory in pruning: two inner blocks (k and v, or q and dO) per pipeline stage plus the
# own tile, at the head dim rounded up to a power of two and 2 B (fp16 / bf16) or 4 B (fp32) per
# element, must fit what the device grants one program (``_triton.autotune.smem_limit``: 163 KiB
# on an A100, 227 KiB on an H100). The estimate matches Triton 3.8's allocation for the dq kernel
# (64 x 64 tiles, fp32, head dim 128, 2 stages: 160 KiB, compiled offline for sm_90) and
# over-counts the forward's (128 KiB there).


def _config(own: Shape, inner: Shape, num_warps: int, num_stages: int) -> triton.Config:
    meta = dict(T0=own[0], T1=own[1], T2=own[2], U0=inner[0], U1=inner[1], U2=inner[2],
                BLOCK_M=_pow2(math.prod(own)), BLOCK_N=_pow2(math.prod(inner)))
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def _key(c: triton.Config) -> tuple:
    return tuple(sorted(c.kwargs.items())) + (c.num_warps, c.num_stages)


@functools.lru_cache(maxsize=None)
def _rank_configs(swap: bool) -> Dict[int, Tuple[triton.Config, ...]]:
    """Per problem rank, the configs built from its tile lists, preferred first."""
    out = {}
    for rank in (1, 2, 3):
        out[rank] = tuple(
            _config(inner, own, w, s) if swap else _config(own, inner, w, s)
            for own in _TILES[rank] for inner in (_INNER_DKDV if swap else _INNER)[rank]
            for w in (_WARPS[::-1] if swap else _WARPS) for s in ((1,) if swap else _STAGES))
    return out


@functools.lru_cache(maxsize=None)
def _rank_order(swap: bool) -> Dict[int, Dict[tuple, int]]:
    """Per rank, each of its configs (by value) -> its place in the rank's preference order."""
    return {rank: {_key(c): i for i, c in enumerate(cs)} for rank, cs in _rank_configs(swap).items()}


@functools.lru_cache(maxsize=None)
def configs(swap: bool = False) -> Tuple[triton.Config, ...]:
    """The full search space (before pruning): the configs of every problem rank, each once;
    ``swap``: the dk/dv kernel (own tile = keys, inner block = queries).

    The dk/dv kernel runs unpipelined (``num_stages=1``): with 2 or more stages Triton 3.8's
    ``TritonGPUCoalesceAsyncCopy`` pass fails on its loop (the gathered per-query logsumexp and
    delta loads next to the q / dO tiles; compiled offline for sm_80, sm_90 and sm_100 alike).
    """
    seen, out = set(), []
    for cs in _rank_configs(swap).values():
        for c in cs:
            if _key(c) not in seen:
                seen.add(_key(c))
                out.append(c)
    return tuple(out)


def prune(kernel: str, configs: Sequence[triton.Config], args: dict) -> List[triton.Config]:
    """Drop the configs of ``kernel`` ('fwd', 'dq' or 'dkdv') that cannot win on this problem:

    * configs not built for the problem's rank (its number of axes after the leading
      size-1 ones that 1-D / 2-D input gets): a 1-D run tile on a 2-D map loads a halo k times
      taller than itself, a 3-D box on a 2-D map masks most of its lanes;
    * tiles spanning an axis of size 1, or own tiles longer along an axis than the dilation
      group (rounded up to a power of two): idle lanes;
    * configs whose q, k and v blocks overflow shared memory at their stage count;
    * 8 warps on a score tile under 64 x 64 (idle warps), 4 warps on one above 64 x 128 at
      head dim > 64 (register spills).

    When these rule out every config of the rank, the usable ones of other ranks stay (e.g. a
    1-D run for a 3-D problem with a size-1 middle axis); when they rule out all (tiny inputs), the
    ones with the fewest own lanes that span no size-1 axis.
    """
    lengths = [args[f"L{a}"] for a in range(3)]
    dils = [args[f"DIL{a}"] for a in range(3)]
    group = [triton.next_power_of_2(math.ceil(n / d)) for n, d in zip(lengths, dils)]
    head = max(args["D"], args["DV"])
    elem = dot_bytes(args)
    smem = smem_limit()
    rank = 3 - next((a for a, n in enumerate(lengths) if n > 1), 2)
    order = _rank_order(kernel == "dkdv")[rank]  # the problem rank's configs, by value

    def usable(c: triton.Config) -> bool:
        m = c.kwargs
        own = (m["T0"], m["T1"], m["T2"])
        inner = (m["U0"], m["U1"], m["U2"])
        if any(n == 1 and (t > 1 or u > 1) for n, t, u in zip(lengths, own, inner)):
            return False
        if any(t > g for t, g in zip(own, group)):
            return False
        if (2 * c.num_stages * m["BLOCK_N"] + m["BLOCK_M"]) * _pow2(head) * elem > smem:
            return False
        area = m["BLOCK_M"] * m["BLOCK_N"]
        return not ((c.num_warps == 8 and area < 64 * 64) or (c.num_warps == 4 and area > 64 * 128 and head > 64))

    same_rank = sorted((c for c in configs if _key(c) in order), key=lambda c: order[_key(c)])
    kept = [c for c in same_rank if usable(c)] or [c for c in configs if usable(c)]
    if kept:
        return kept
    flat = [c for c in configs if not any(n == 1 and (c.kwargs[f"T{a}"] > 1 or c.kwargs[f"U{a}"] > 1)
                                          for a, n in enumerate(lengths))] or list(configs)
    flat.sort(key=lambda c: (0, order[_key(c)]) if _key(c) in order else (1, 0))  # the problem's rank first
    fewest = min(c.kwargs["BLOCK_M"] for c in flat)
    return [c for c in flat if c.kwargs["BLOCK_M"] == fewest and c.num_warps == 4]


def size_bucket(spatial: Sequence[int]) -> int:
    """One int for the autotune key: ceil(log2(size)) per axis, 8 bits each. Sizes within a
    power of two share their tuned config (tuning per exact size would re-tune at every input
    resolution)."""
    bucket = 0
    for n in spatial:
        bucket = (bucket << 8) | max(0, (n - 1).bit_length())
    return bucket


def is_blocked(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
               causal: Sequence[bool]) -> bool:
    """stride == kernel, not causal (a causal query sees only the keys up to itself, not its
    whole block) unless the kernel is 1, and every axis a multiple of kernel * dilation: each
    window is its own tile (MaxViT block / grid, window attention). Windows above 128 positions
    take the general path, whose tiles stay register-sized."""
    return (
        all(s == k and n % (k * d) == 0 and (k == 1 or not c)
            for n, k, s, d, c in zip(spatial, kernel, stride, dilation, causal))
        and math.prod(kernel) <= 128
    )


def blocked_config(kernel: Sequence[int]) -> dict:
    """Own tile = inner block = one window; a single inner step, nothing to tune but warps."""
    lanes = _pow2(math.prod(kernel))
    return dict(T0=kernel[0], T1=kernel[1], T2=kernel[2], U0=kernel[0], U1=kernel[1], U2=kernel[2],
                BLOCK_M=lanes, BLOCK_N=lanes, num_warps=8, num_stages=1)


def interpreter_config(rank: int) -> dict:
    """One small fixed tile per rank under TRITON_INTERPRET=1, where every tl op is a numpy call
    and autotuning (which times configs with CUDA events) cannot run: 16 lanes, so a test case
    costs a few inner steps per tile. The problem's rank is the input's (``GNAParams.rank``), which
    the launch arguments do not hold: ``triton.py`` passes this config to the launch itself."""
    own = {1: (1, 1, 16), 2: (1, 4, 4), 3: (2, 2, 4)}[rank]
    return dict(T0=own[0], T1=own[1], T2=own[2], U0=own[0], U1=own[1], U2=own[2],
                BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)


# Everything the best tile depends on; tensor dtypes are appended to the key by Triton itself,
# and names a kernel does not take (RPB_GRAD outside the dq kernel) are skipped.
_KEY = ["size_bucket", "DIL0", "DIL1", "DIL2", "K0", "K1", "K2", "S0", "S1", "S2", "C0", "C1", "C2",
        "D", "DV", "HAS_RPB", "RPB_GRAD"]


SPACES: Dict[str, Space] = {
    which: Space(which, configs(swap=which == "dkdv"), prune, _KEY,
                 # the dq kernel accumulates d_rpb with atomics: every timed run must start from zero
                 reset_to_zero=["DRPB"] if which == "dq" else None, env="ATTNZOO_GNA_AUTOTUNE")
    for which in ("fwd", "dq", "dkdv")
}
"""The autotune space of each kernel ('fwd', 'dq', 'dkdv'; ``_triton.autotune.Space``)."""
