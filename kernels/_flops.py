"""FLOP accounting for attnzoo ops.

``torch.utils.flop_counter.FlopCounterMode`` counts what an op's implementation executes. For
attention ops that is backend-specific: the reference computes scores over whole key tiles and
masks most of them, so its matmuls overstate the work. Papers count the math: one multiply-add
per (query, key, channel) that the attention pattern really contains. Inside
``count_op_flops()``, every attnzoo op call records both numbers, so a model-level count can
replace the executed figure with the mathematical one (see ``attnzoo.tools.flops``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List

from torch.utils.flop_counter import FlopCounterMode

__all__ = ["OpFlops", "count_op_flops", "run_counted"]


@dataclass
class OpFlops:
    op: str
    math: int  # FLOPs (2 per multiply-add) the op's definition needs
    executed: int  # FLOPs the chosen implementation ran, as FlopCounterMode counts them


_active: List[List[OpFlops]] = []


@contextlib.contextmanager
def count_op_flops() -> Iterator[List[OpFlops]]:
    """Collects an ``OpFlops`` record for every attnzoo op called inside the block."""
    records: List[OpFlops] = []
    _active.append(records)
    try:
        yield records
    finally:
        _active.pop()


def run_counted(op: str, math_flops: Callable[[], int], impl: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``impl``; inside ``count_op_flops()`` also records its math and executed FLOPs."""
    if not _active:
        return impl(*args, **kwargs)
    with FlopCounterMode(display=False) as inner:
        out = impl(*args, **kwargs)
    _active[-1].append(OpFlops(op, int(math_flops()), int(inner.get_total_flops())))
    return out
