"""Generalized neighborhood attention: ``gna(q, k, v, kernel_size, ...)``.

One op for neighborhood (NAT), dilated (DiNAT), blocked (MaxViT block, window attention) and
grid (MaxViT grid) attention; see ``reference.py`` for the exact definition.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _flops
from .._dispatch import Op
from ._params import GNAParams, check_gna_inputs
from .reference import _gna_reference, attended_pairs, gna_reference, window_bounds

__all__ = ["gna", "gna_reference", "gna_op", "gna_flops", "window_bounds", "GNAParams"]

gna_op = Op("gna", _gna_reference)
"""The dispatcher of gna; a Triton backend registers here with ``gna_op.register('triton', ...)``."""


def gna_flops(params: GNAParams, batch: int, heads: int, head_dim: int, v_dim: int) -> int:
    """FLOPs of the attention math (2 per multiply-add: q.k over head_dim, p.v over v_dim)."""
    return 2 * batch * heads * attended_pairs(params) * (head_dim + v_dim)


def gna(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Generalized neighborhood attention.

    Args:
        q, k: ``[B, *spatial, heads, head_dim]`` with 1 to 3 spatial axes.
        v: ``[B, *spatial, heads, v_dim]``.
        kernel_size, stride, dilation: int or one int per spatial axis;
            ``kernel_size * dilation <= size`` and ``1 <= stride <= kernel_size`` on every axis.
        is_causal: bool or one bool per spatial axis.
        rpb: optional relative position bias ``[heads, 2 * kernel_size - 1 per axis]``.
        scale: softmax scale, default ``head_dim ** -0.5``.
        backend: None (best available), 'reference' or 'triton' (see ``attnzoo.kernels``).

    Returns:
        ``[B, *spatial, heads, v_dim]`` in the dtype of q.
    """
    params, scale = check_gna_inputs(q, k, v, kernel_size, stride, dilation, is_causal, rpb, scale)
    impl = gna_op.select(backend, q, k, v, params, rpb, scale)
    return _flops.run_counted(
        "gna",
        lambda: gna_flops(params, q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]),
        impl, q, k, v, params, rpb, scale,
    )


def _triton_kernels():
    from . import triton

    return triton


def _triton_entry():
    from ._library import gna_triton

    return gna_triton


gna_op.register_triton(_triton_kernels, _triton_entry, bench="attnzoo.tools.bench_ops_gna")
