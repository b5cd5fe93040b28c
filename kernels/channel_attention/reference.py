"""Channel (group) attention, reference implementation: the specification.

DaViT's channel attention (Ding et al., arXiv:2204.03645, Sec. 3.2): within each group (= head)
the tokens are attended over *channels* instead of positions. Layout is heads-last, as gna's:
``q, k, v`` are ``[B, *spatial, heads, head_dim]`` (any number >= 1 of spatial axes; the
positions are only summed over, their arrangement does not matter). Write ``n`` for a position
(all spatial axes flattened, ``N`` of them), ``h`` for a head and ``c, d`` for channels of a head:

    logits[b, h, c, d] = sum_n (scale * k[b, n, h, c]) * v[b, n, h, d]          # [head_dim, head_dim]
    A[b, h, c, :]      = softmax_d(logits[b, h, c, :])
    out[b, n, h, c]    = sum_d A[b, h, c, d] * q[b, n, h, d]

i.e. per head ``out = q @ softmax((scale * k)^T v)^T`` with ``scale = head_dim ** -0.5`` by
default. This is exactly timm's ``davit.ChannelAttention`` (k is the scaled tensor, the channel
affinity is k-by-v and it is applied to q) and the authors' dingmyu/davit. The logits are not
normalised by ``N``: they grow with the number of positions, as upstream.

Cost: ``4 * B * heads * N * head_dim^2`` FLOPs, linear in ``N``; memory ``O(B * heads * head_dim^2)``
besides the inputs. Computation runs in float32 (float64 stays float64); the result is cast back
to the dtype of q.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._params import check_channel_attention_inputs

__all__ = ["channel_attention_reference"]


def channel_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """Channel attention in plain PyTorch (see the module docstring). Returns the shape of q."""
    scale = check_channel_attention_inputs(q, k, v, scale)
    return _channel_attention_reference(q, k, v, scale)


def _channel_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    compute = torch.promote_types(q.dtype, torch.float32)
    shape = q.shape
    b, h, d = shape[0], shape[-2], shape[-1]
    # [B, *spatial, H, D] -> [B, H, N, D]
    n = math.prod(shape[1:-2])
    qf, kf, vf = (t.to(compute).reshape(b, n, h, d).transpose(1, 2) for t in (q, k, v))
    attn = ((kf * scale).transpose(-1, -2) @ vf).softmax(dim=-1)  # [B, H, D(c), D(d)]
    out = qf @ attn.transpose(-1, -2)  # out[n, c] = sum_d q[n, d] A[c, d]
    return out.transpose(1, 2).reshape(shape).to(q.dtype)
