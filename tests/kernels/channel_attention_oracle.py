"""Brute-force oracle for DaViT channel attention, for tests only.

Written from the definition, not from ``attnzoo.kernels.channel_attention.reference``: for every
batch element, head and output channel ``c`` it builds the row of channel logits one channel
``d`` at a time (a dot product over positions), takes its softmax, and mixes the channels of q
with it, in plain Python loops over (b, h, c, d) in float64 (or another dtype on request).

    logits[b, h, c, d] = scale * sum_n k[b, n, h, c] * v[b, n, h, d]
    out[b, n, h, c]    = sum_d softmax_d(logits[b, h, c, :])[d] * q[b, n, h, d]

with ``q, k, v`` of shape ``[B, *spatial, heads, head_dim]`` (positions ``n`` flattened) and
``scale = head_dim ** -0.5`` unless given.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["channel_attention_oracle"]


def channel_attention_oracle(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None, dtype=torch.float64
) -> torch.Tensor:
    shape = q.shape
    b_size, heads, dim = shape[0], shape[-2], shape[-1]
    scale = dim ** -0.5 if scale is None else scale
    qf, kf, vf = (t.to(dtype).reshape(b_size, -1, heads, dim) for t in (q, k, v))
    rows = []
    for b in range(b_size):
        per_head = []
        for h in range(heads):
            per_channel = []
            for c in range(dim):
                logits = torch.stack([scale * torch.dot(kf[b, :, h, c], vf[b, :, h, d]) for d in range(dim)])
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                mixed = sum(weights[d] * qf[b, :, h, d] for d in range(dim))  # [N]
                per_channel.append(mixed)
            per_head.append(torch.stack(per_channel, dim=-1))  # [N, D]
        rows.append(torch.stack(per_head, dim=-2))  # [N, H, D]
    out = torch.stack(rows)  # [B, N, H, D]
    assert math.prod(shape[1:-2]) == out.shape[1]
    return out.reshape(shape)
