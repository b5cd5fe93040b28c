"""Brute-force oracle for dense softmax attention, for tests only.

Written from the definition, not from ``attnzoo.kernels.dense.reference``: explicit Python loops
over batch, head and query; for each query, the logit of every key is a sum of elementwise
products, the softmax is written out (``exp(l - max) / sum exp(l - max)``) and the output is the
probability-weighted sum of the value rows. No matmul, einsum or library softmax / attention.

    out[b, i, h] = sum_j softmax_j(scale * sum_d q[b, i, h, d] k[b, j, h, d]) v[b, j, h]

``q: [B, *spatial_q, H, D]``, ``k: [B, *spatial_k, H, D]``, ``v: [B, *spatial_k, H, Dv]``; tokens
are the row-major flattening of the spatial axes; ``scale = D ** -0.5`` unless given. Cost is
``B * H * N_q`` Python iterations: keep inputs small.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["dense_oracle"]


def dense_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense attention computed in ``dtype`` (float64 unless asked otherwise); returns
    ``[B, *spatial_q, H, Dv]`` in ``dtype``. Differentiable by autograd in q, k and v."""
    b, h, d, dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    n_q, n_k = math.prod(q.shape[1:-2]), math.prod(k.shape[1:-2])
    if scale is None:
        scale = d ** -0.5
    qf = q.to(dtype).reshape(b, n_q, h, d)
    kf = k.to(dtype).reshape(b, n_k, h, d)
    vf = v.to(dtype).reshape(b, n_k, h, dv)
    rows = []
    for bi in range(b):
        for hi in range(h):
            keys = kf[bi, :, hi]  # [N_k, D]
            values = vf[bi, :, hi]  # [N_k, Dv]
            for i in range(n_q):
                logits = (keys * qf[bi, i, hi]).sum(-1) * scale  # [N_k]
                e = torch.exp(logits - logits.max())
                p = e / e.sum()
                rows.append((p.unsqueeze(-1) * values).sum(0))  # [Dv]
    out = torch.stack(rows).reshape(b, h, n_q, dv).transpose(1, 2)
    return out.reshape(q.shape[:-1] + (dv,))
