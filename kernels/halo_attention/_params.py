"""Argument checks for halo_attention, shared by every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._checks import check_int, check_like, check_tensors, softmax_scale

__all__ = ["HaloParams", "check_halo_inputs"]


@dataclass(frozen=True)
class HaloParams:
    """Geometry of one halo_attention call (2-D; both axes share block and halo sizes)."""

    spatial: Tuple[int, int]  # key grid (H, W), multiples of block_size
    block_size: int  # b: key-grid side of one block
    halo_size: int  # h: extra keys on each side of a block
    query_stride: int  # s: the query grid is the key grid subsampled by s

    @property
    def window(self) -> int:
        """Keys per axis that a block sees: ``b + 2h``."""
        return self.block_size + 2 * self.halo_size

    @property
    def query_block(self) -> int:
        """Queries per axis in one block: ``b // s``."""
        return self.block_size // self.query_stride

    @property
    def num_blocks(self) -> Tuple[int, int]:
        return self.spatial[0] // self.block_size, self.spatial[1] // self.block_size


def check_halo_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size,
    halo_size,
    query_stride,
    scale: Optional[float],
) -> Tuple[HaloParams, float]:
    """Validates a halo_attention call; returns its geometry and the softmax scale.

    Raises ValueError naming the argument and the accepted range.
    """
    check_tensors(q=q, k=k, v=v, height_rel=height_rel, width_rel=width_rel)
    block_size = check_int("block_size", block_size, 1)
    halo_size = check_int("halo_size", halo_size, 0)
    query_stride = check_int("query_stride", query_stride, 1)
    if block_size % query_stride:
        raise ValueError(f"query_stride must divide block_size ({block_size}), got {query_stride}")

    if k.dim() != 5:
        raise ValueError(f"k must be [batch, H, W, heads, head_dim] (5 dims), got shape {tuple(k.shape)}")
    if not k.is_floating_point():
        raise ValueError(f"k must be a floating point tensor, got dtype {k.dtype}")
    b, h, w, heads, head_dim = k.shape
    if any(n < 1 for n in (h, w, heads, head_dim)):  # not min(): it orders symbolic sizes (a guard)
        raise ValueError(f"k must have every dim but the batch >= 1, got shape {tuple(k.shape)}")
    if h % block_size or w % block_size:
        raise ValueError(
            f"k's spatial size must be a multiple of block_size ({block_size}) on both axes, got {h}x{w}; "
            "pad the input first"
        )
    expected_q = (b, h // query_stride, w // query_stride, heads, head_dim)
    if q.dim() != 5 or tuple(q.shape) != expected_q:
        raise ValueError(
            f"q must be [batch, H / query_stride, W / query_stride, heads, head_dim] = {expected_q}, "
            f"got shape {tuple(q.shape)}"
        )
    if v.dim() != 5 or tuple(v.shape[:4]) != (b, h, w, heads) or v.shape[4] < 1:
        raise ValueError(f"v must be [batch, H, W, heads, v_dim] matching k {tuple(k.shape[:4])}, got {tuple(v.shape)}")
    win = block_size + 2 * halo_size
    for name, t in (("height_rel", height_rel), ("width_rel", width_rel)):
        if tuple(t.shape) != (2 * win - 1, head_dim):
            raise ValueError(
                f"{name} must have shape [2 * (block_size + 2 * halo_size) - 1, head_dim] = {(2 * win - 1, head_dim)}, "
                f"got {tuple(t.shape)}"
            )
    for name, t in (("q", q), ("v", v), ("height_rel", height_rel), ("width_rel", width_rel)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
        if t.device != k.device:
            raise ValueError(f"{name} must be on the device of k ({k.device}), got {t.device}")
    check_like("k", k, q=q, v=v)

    return HaloParams((h, w), block_size, halo_size, query_stride), softmax_scale(scale, head_dim)
