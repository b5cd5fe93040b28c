"""Channel (group) attention: ``channel_attention(q, k, v)``, DaViT's channel mixer.

Attention over the channels of each head rather than over positions; see ``reference.py`` for
the exact definition.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _flops
from .._dispatch import Op
from ._params import check_channel_attention_inputs
from .reference import _channel_attention_reference, channel_attention_reference

__all__ = ["channel_attention", "channel_attention_reference", "channel_attention_op", "channel_attention_flops"]

channel_attention_op = Op("channel_attention", _channel_attention_reference)
"""The dispatcher of channel_attention; a Triton backend registers here with
``channel_attention_op.register('triton', ...)``."""


def channel_attention_flops(batch: int, tokens: int, heads: int, head_dim: int) -> int:
    """FLOPs of the math (2 per multiply-add): ``k^T v`` and ``A q``, each ``N * head_dim^2`` MACs a head."""
    return 2 * 2 * batch * heads * tokens * head_dim * head_dim


def channel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Channel attention: per head, ``out = q @ softmax((scale * k)^T v)^T``.

    Args:
        q, k, v: ``[B, *spatial, heads, head_dim]``, all the same shape, dtype and device, with at
            least one spatial axis (positions are summed over; their layout does not matter).
        scale: multiplies k before the channel affinity; default ``head_dim ** -0.5``.
        backend: None (best available), 'reference' or 'triton' (see ``attnzoo.kernels``).

    Returns:
        ``[B, *spatial, heads, head_dim]`` in the dtype of q.
    """
    scale = check_channel_attention_inputs(q, k, v, scale)
    impl = channel_attention_op.select(backend, q, k, v, scale)
    tokens = math.prod(q.shape[1:-2])
    return _flops.run_counted(
        "channel_attention",
        lambda: channel_attention_flops(q.shape[0], tokens, q.shape[-2], q.shape[-1]),
        impl, q, k, v, scale,
    )
