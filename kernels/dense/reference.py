"""Dense (global) softmax attention, reference implementation: the specification.

Layout is heads-last, as gna's: ``q`` is ``[B, *spatial_q, heads, head_dim]``, ``k`` is
``[B, *spatial_k, heads, head_dim]`` and ``v`` is ``[B, *spatial_k, heads, v_dim]``, with 1 to 3
spatial axes each. Tokens are the row-major flattening of the spatial axes (``N_q = prod(spatial_q)``,
``N_k = prod(spatial_k)``); every query attends to every key of the same batch element and head:

``out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h]) v[b, j, h]``

with ``scale = head_dim ** -0.5`` unless given. Self-attention passes the same spatial shape for
queries and keys; cross-attention (pooled keys, other resolutions) may pass any other. The output
is ``[B, *spatial_q, heads, v_dim]``.

Algorithm: one ``scaled_dot_product_attention`` over ``[B, heads, N, dim]`` views (on the CPU with
unequal q / v head widths, the same softmax written out as two matmuls). Memory is
``O(N_q * N_k)`` per head for the math backend of SDPA (fused SDPA kernels need less).
Computation runs in float32 whatever the input dtype (float64 stays float64); the result is cast
back to the dtype of q.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._params import check_dense_inputs

__all__ = ["dense_reference"]


def dense_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """Dense softmax attention in plain PyTorch (see the module docstring)."""
    scale = check_dense_inputs(q, k, v, scale)
    return _dense_reference(q, k, v, scale)


def _tokens_first(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, *spatial, H, D] -> [B, H, N, D] in ``dtype``."""
    return x.to(dtype).flatten(1, -3).transpose(1, 2)


def _dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qt, kt, vt = _tokens_first(q, compute), _tokens_first(k, compute), _tokens_first(v, compute)
    if q.device.type == "cpu" and q.shape[-1] != v.shape[-1]:
        # torch's fused CPU kernel needs equal q / v head widths (SHViT's differ); its fallback, the
        # math path, adds a masked-row guard (all / where / isneginf) that an unmasked softmax
        # never needs: about 0.5 ms of az_shvit_s1's 27 ms forward at batch 2 (1 thread).
        out = torch.softmax((qt @ kt.transpose(-2, -1)) * scale, dim=-1) @ vt
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)  # [B, H, N_q, Dv]
    return out.transpose(1, 2).reshape(q.shape[:-1] + v.shape[-1:]).to(q.dtype)
