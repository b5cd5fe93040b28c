"""Brute-force oracle for TransNeXt aggregated attention, for tests only.

Written from the definition (the paper and the authors' ``attention_native.py``), not from
``attnzoo.kernels.aggregated_attention.reference``: for every batch element, query position and
head it walks the window offsets one at a time, keeps only the neighbours inside the grid, adds
the pooled logits one pooled token at a time, takes one softmax over the kept logits and sums
the values, in plain Python loops in float64 (or another dtype on request).

For query ``n = (y, x)`` and head ``h``, with ``r = window_size // 2``:

    q^ = q_n / max(||q_n||, 1e-12)          (likewise k^, k_pool^)
    L_n = number of offsets (dy, dx) in [-r, r]^2 with (y + dy, x + dx) inside the grid
    s = (q^ + query_embedding[h]) * log(1 + exp(temperature[h])) * log(L_n + P)
    local logit (dy, dx) = s . k^[y+dy, x+dx] + local_bias[h, (dy+r) * ws + (dx+r)]   (inside only)
    pooled logit p       = s . k_pool^[p] + pool_bias[h, y * W + x, p]
    w = softmax over all kept logits
    out = sum_inside (w_l + q^ . learnable_tokens[h, :, l] + learnable_bias[h, l]) v[y+dy, x+dx]
        + sum_p w_p v_pool[p]

``window_size=None`` drops the local branch (L_n = 0). Absent optional tensors are zeros.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["aggregated_attention_oracle"]


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / torch.clamp(torch.sqrt((t * t).sum()), min=1e-12)


def aggregated_attention_oracle(
    q, k, v, k_pool, v_pool, query_embedding, temperature, pool_bias=None, local_bias=None,
    learnable_tokens=None, learnable_bias=None, window_size: Optional[int] = 3, dtype=torch.float64,
) -> torch.Tensor:
    def f(t):
        return None if t is None else t.to(dtype)

    q, k, v, k_pool, v_pool = f(q), f(k), f(v), f(k_pool), f(v_pool)
    query_embedding, temperature, pool_bias, local_bias = f(query_embedding), f(temperature), f(pool_bias), f(local_bias)
    learnable_tokens, learnable_bias = f(learnable_tokens), f(learnable_bias)
    batch, height, width, heads, _ = q.shape
    pool_len = k_pool.shape[1]
    r = 0 if window_size is None else window_size // 2
    rows = []
    for b in range(batch):
        per_y = []
        for y in range(height):
            per_x = []
            for x in range(width):
                per_head = []
                for h in range(heads):
                    q_hat = _unit(q[b, y, x, h])
                    neighbours = []  # (slot l, key position)
                    if window_size is not None:
                        for dy in range(-r, r + 1):
                            for dx in range(-r, r + 1):
                                if 0 <= y + dy < height and 0 <= x + dx < width:
                                    neighbours.append(((dy + r) * window_size + (dx + r), y + dy, x + dx))
                    softplus = torch.log(1 + torch.exp(temperature[h]))
                    s = (q_hat + query_embedding[h]) * softplus * math.log(len(neighbours) + pool_len)
                    logits = []
                    for l, ky, kx in neighbours:
                        logit = torch.dot(s, _unit(k[b, ky, kx, h]))
                        if local_bias is not None:
                            logit = logit + local_bias[h, l]
                        logits.append(logit)
                    for p in range(pool_len):
                        logit = torch.dot(s, _unit(k_pool[b, p, h]))
                        if pool_bias is not None:
                            logit = logit + pool_bias[h, y * width + x, p]
                        logits.append(logit)
                    logits = torch.stack(logits)
                    e = torch.exp(logits - logits.max())
                    weights = e / e.sum()
                    out = torch.zeros_like(v_pool[b, 0, h])
                    for i, (l, ky, kx) in enumerate(neighbours):
                        wl = weights[i]
                        if learnable_tokens is not None:
                            wl = wl + torch.dot(q_hat, learnable_tokens[h, :, l])
                        if learnable_bias is not None:
                            wl = wl + learnable_bias[h, l]
                        out = out + wl * v[b, ky, kx, h]
                    for p in range(pool_len):
                        out = out + weights[len(neighbours) + p] * v_pool[b, p, h]
                    per_head.append(out)
                per_x.append(torch.stack(per_head))
            per_y.append(torch.stack(per_x))
        rows.append(torch.stack(per_y))
    return torch.stack(rows)
