"""Argument normalisation and input checks for gna, shared by every backend."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from .._checks import check_like, check_tensors, softmax_scale

__all__ = ["GNAParams", "check_gna_inputs"]


@dataclass(frozen=True)
class GNAParams:
    """Per-axis attention pattern of one gna call; every tuple has one entry per spatial axis."""

    spatial: Tuple[int, ...]  # ints; symbolic sizes (torch.SymInt) under torch.export
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.spatial)


def _per_axis(name: str, value: Any, rank: int, minimum: int) -> Tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise ValueError(f"{name} must be an int or a tuple of {rank} ints, got {value!r}")
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank:
        raise ValueError(f"{name} must have one entry per spatial axis ({rank}), got {value!r}")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, torch.SymInt)) or x < minimum:
            raise ValueError(f"{name} entries must be ints >= {minimum}, got {value!r}")
    # a size derived from a dynamic input size (MaxViT's grid dilation H / G on its CUDA full-map
    # path) is specialised; under torch.export MaxViT partitions first and passes dilation 1
    return tuple(operator.index(x) for x in values)


def _spatial_size(n) -> Any:
    """A spatial size of q: an int, or under ``torch.export`` a symbolic size kept symbolic (the
    reference then computes its index plan in the graph, ``reference._symbolic_layout``).

    Under ``torch.compile`` a size marked dynamic is specialised here (``operator.index``): the
    index plan of a static size is a cached constant of the graph, so a new resolution compiles
    once more; the batch size stays dynamic."""
    if isinstance(n, torch.SymInt) and torch.compiler.is_exporting():
        return n
    return operator.index(n)


def _causal_per_axis(value: Any, rank: int) -> Tuple[bool, ...]:
    if isinstance(value, bool):
        return (value,) * rank
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) == rank and all(isinstance(x, bool) for x in values):
            return values
    raise ValueError(f"is_causal must be a bool or a tuple of {rank} bools, got {value!r}")


def check_gna_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: Any,
    stride: Any,
    dilation: Any,
    is_causal: Any,
    rpb: Optional[torch.Tensor],
    scale: Optional[float],
) -> Tuple[GNAParams, float]:
    """Validates a gna call; returns the normalised parameters and the softmax scale.

    Raises ValueError naming the argument and the accepted range for anything gna cannot
    compute exactly.
    """
    check_tensors(q=q, k=k, v=v)
    if q.dim() not in (4, 5, 6):
        raise ValueError(
            "q must be [batch, *spatial, heads, head_dim] with 1, 2 or 3 spatial axes "
            f"(4 to 6 dims), got shape {tuple(q.shape)}"
        )
    if not q.is_floating_point():
        raise ValueError(f"q must be a floating point tensor, got dtype {q.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != q.dim() or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"v must be [batch, *spatial, heads, v_dim] matching q {tuple(q.shape[:-1])} "
            f"in all but the last axis, got {tuple(v.shape)}"
        )
    check_like("q", q, k=k, v=v)
    if q.shape[-1] < 1 or v.shape[-1] < 1 or q.shape[-2] < 1:
        raise ValueError(f"heads and head dims must be >= 1 (batch >= 0), got q {tuple(q.shape)}, v {tuple(v.shape)}")

    rank = q.dim() - 3
    spatial = tuple(_spatial_size(x) for x in q.shape[1 : 1 + rank])
    kernel_size = _per_axis("kernel_size", kernel_size, rank, 1)
    stride = _per_axis("stride", stride, rank, 1)
    dilation = _per_axis("dilation", dilation, rank, 1)
    is_causal = _causal_per_axis(is_causal, rank)
    for axis, (n, ks, st, dl) in enumerate(zip(spatial, kernel_size, stride, dilation)):
        if ks * dl > n:
            raise ValueError(
                f"kernel_size * dilation must be <= the input size on every spatial axis; axis {axis}: "
                f"{ks} * {dl} = {ks * dl} > {n} (spatial size {spatial}). Pad the input first."
            )
        if st > ks:
            raise ValueError(f"stride must be in [1, kernel_size] on every axis; axis {axis}: stride {st} > kernel_size {ks}")

    heads = q.shape[-2]
    if rpb is not None:
        if not isinstance(rpb, torch.Tensor):
            raise ValueError(f"rpb must be None or a torch.Tensor, got {type(rpb).__name__}")
        expected = (heads,) + tuple(2 * ks - 1 for ks in kernel_size)
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape [heads, 2*kernel_size-1 per axis] = {expected}, got {tuple(rpb.shape)}")
        if not rpb.is_floating_point():
            raise ValueError(f"rpb must be a floating point tensor, got dtype {rpb.dtype}")
        if rpb.device != q.device:
            raise ValueError(f"rpb must be on the device of q ({q.device}), got {rpb.device}")

    return GNAParams(spatial, kernel_size, stride, dilation, is_causal), softmax_scale(scale, q.shape[-1])
