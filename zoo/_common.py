"""Small pieces every family file shares (timm conventions)."""
from __future__ import annotations

from typing import List, Sequence

__all__ = ["check_global_pool", "drop_path_rates"]

GLOBAL_POOLS = ("avg", "")


def check_global_pool(global_pool: str) -> str:
    """``global_pool`` if attnzoo's heads support it ('avg', or '' to keep the feature map)."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> List[List[float]]:
    """Stochastic depth per block, rising linearly from 0 to ``drop_path_rate`` over all blocks
    (timm's ``torch.linspace`` schedule, computed without a tensor so meta-device builds work),
    split per stage."""
    total = sum(depths)
    flat = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    return [flat[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]
