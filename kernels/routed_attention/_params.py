"""Argument checks for routed_attention and route_regions, shared by every backend."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .._checks import check_int, check_like, check_tensors, softmax_scale

__all__ = ["RoutedParams", "check_routed_inputs", "check_route_inputs"]


@dataclass(frozen=True)
class RoutedParams:
    """Geometry of one routed_attention call."""

    spatial: Tuple[int, int]  # (H, W) of q, k and v: multiples of num_regions
    num_regions: int  # S: regions per side, S * S in all
    topk: int  # regions each query region attends to, 1 <= topk <= S * S

    @property
    def region_size(self) -> Tuple[int, int]:
        """Tokens of one region per axis: ``(H / S, W / S)``."""
        return self.spatial[0] // self.num_regions, self.spatial[1] // self.num_regions

    @property
    def regions(self) -> int:
        return self.num_regions * self.num_regions


def _check_qk(q: torch.Tensor, k: torch.Tensor, num_regions) -> int:
    check_tensors(q=q, k=k)
    num_regions = check_int("num_regions", num_regions, 1)
    if q.dim() != 5:
        raise ValueError(f"q must be [batch, H, W, heads, head_dim] (5 dims), got shape {tuple(q.shape)}")
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating point tensor, got dtype {q.dtype}")
    if any(n < 1 for n in q.shape[1:]):  # not min(): it orders symbolic sizes (a guard)
        raise ValueError(f"q must have every dim but the batch >= 1, got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    check_like("q", q, k=k)
    h, w = q.shape[1:3]
    if h % num_regions or w % num_regions:
        raise ValueError(
            f"q's spatial size must be a multiple of num_regions ({num_regions}) on both axes, got {h}x{w}; "
            "pad the input first (BiLevelRoutingAttention2d does)"
        )
    return num_regions


def _check_topk(topk, regions: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= regions:
        raise ValueError(
            f"topk must be an int in [1, num_regions**2 = {regions}], got {topk!r} "
            "(BiFormer's topk = -1 / -2 mean full attention: use dense attention for those)"
        )
    return topk


def check_route_inputs(q: torch.Tensor, k: torch.Tensor, num_regions, topk) -> RoutedParams:
    """Validates a route_regions call; returns its geometry. Raises ValueError naming the argument."""
    num_regions = _check_qk(q, k, num_regions)
    topk = _check_topk(topk, num_regions * num_regions)
    return RoutedParams(tuple(q.shape[1:3]), num_regions, topk)


def check_index(index: torch.Tensor, batch: int, regions: int, topk: int, device: torch.device) -> torch.Tensor:
    """A caller-given routing index ``[B, S*S, topk]`` of distinct region ids in ``[0, S*S)``, as int64."""
    if not isinstance(index, torch.Tensor):
        raise ValueError(f"index must be None or a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be an int64 or int32 tensor, got dtype {index.dtype}")
    if tuple(index.shape) != (batch, regions, topk):
        raise ValueError(
            f"index must be [batch, num_regions**2, topk] = {(batch, regions, topk)}, got shape {tuple(index.shape)}"
        )
    if index.device != device:
        raise ValueError(f"index must be on the device of q ({device}), got {index.device}")
    if index.numel() and _read_values(index):
        _check_index_values(index, regions, topk)
    return index.long()


def _read_values(index: torch.Tensor) -> bool:
    """Whether to check the index's values: they are read into Python, which breaks a compiled
    graph, cannot happen on the meta device and waits for a GPU. So: in eager mode on the CPU;
    on other devices only with ``ATTNZOO_DEBUG_CHECKS=1``."""
    if torch.compiler.is_compiling() or index.device.type == "meta" or isinstance(index, FakeTensor):
        return False
    return index.device.type == "cpu" or os.environ.get("ATTNZOO_DEBUG_CHECKS", "") == "1"


def _check_index_values(index: torch.Tensor, regions: int, topk: int) -> None:
    if int(index.min()) < 0 or int(index.max()) >= regions:
        raise ValueError(
            f"index values must be region ids in [0, num_regions**2 = {regions}), "
            f"got values in [{int(index.min())}, {int(index.max())}]"
        )
    ordered = index.sort(dim=-1).values
    if topk > 1 and bool((ordered[..., 1:] == ordered[..., :-1]).any()):
        raise ValueError("index must list distinct regions for each query region (a repeated region id was found)")


def check_routed_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions,
    topk,
    scale: Optional[float],
    index: Optional[torch.Tensor],
) -> Tuple[RoutedParams, float, Optional[torch.Tensor]]:
    """Validates a routed_attention call; returns its geometry, the softmax scale (default
    ``head_dim ** -0.5``) and the index as int64 (None when the op routes itself).

    Raises ValueError naming the argument and the accepted range.
    """
    params = check_route_inputs(q, k, num_regions, topk)
    check_tensors(v=v)
    if v.dim() != 5 or tuple(v.shape[:4]) != tuple(q.shape[:4]) or v.shape[4] < 1:
        raise ValueError(
            f"v must be [batch, H, W, heads, v_dim] matching q {tuple(q.shape[:4])}, got shape {tuple(v.shape)}"
        )
    check_like("q", q, v=v)
    if index is not None:
        index = check_index(index, q.shape[0], params.regions, params.topk, q.device)
    return params, softmax_scale(scale, q.shape[-1]), index
