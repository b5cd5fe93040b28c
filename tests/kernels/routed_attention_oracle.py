"""Brute-force oracle for bi-level routing attention, for tests only.

Written from the definition (BiFormer, Zhu et al. CVPR 2023), not from
``attnzoo.kernels.routed_attention.reference``: region ids, region means and the routing are
built in plain Python loops; then for every query token and head the set of routed key positions
is collected by testing every key position of the grid for membership, and the softmax-weighted
sum of their values is taken, in float64.

    region(y, x)   = (y // rh) * S + x // rw                      rh = H / S, rw = W / S
    q_r, k_r       = means of q, k over the tokens of region r, all heads concatenated
    routed(r)      = the topk regions s with the largest q_r . k_s
    out[y, x, h]   = sum_{(y', x') in routed(region(y, x))} softmax(scale * q[y, x, h] . k[y', x', h]) v[y', x', h]
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = ["oracle_routes", "routed_attention_oracle"]


def _region(y: int, x: int, h: int, w: int, s: int) -> int:
    return (y // (h // s)) * s + x // (w // s)


def oracle_routes(q: torch.Tensor, k: torch.Tensor, num_regions: int, topk: int) -> List[List[List[int]]]:
    """``routes[b][r]``: the topk key-region ids of query region r, most affine first (float64)."""
    b_size, h, w = q.shape[:3]
    s = num_regions
    qd, kd = q.detach().double(), k.detach().double()
    routes = []
    for b in range(b_size):
        sums_q = [torch.zeros(q.shape[3] * q.shape[4], dtype=torch.float64) for _ in range(s * s)]
        sums_k = [torch.zeros_like(sums_q[0]) for _ in range(s * s)]
        counts = [0] * (s * s)
        for y in range(h):
            for x in range(w):
                r = _region(y, x, h, w, s)
                sums_q[r] += qd[b, y, x].flatten()
                sums_k[r] += kd[b, y, x].flatten()
                counts[r] += 1
        means_q = [t / c for t, c in zip(sums_q, counts)]
        means_k = [t / c for t, c in zip(sums_k, counts)]
        per_region = []
        for r in range(s * s):
            affinity = [float(torch.dot(means_q[r], means_k[t])) for t in range(s * s)]
            per_region.append(sorted(range(s * s), key=lambda t: -affinity[t])[:topk])
        routes.append(per_region)
    return routes


def routed_attention_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: int,
    topk: int,
    scale: Optional[float] = None,
    routes: Optional[Sequence[Sequence[Sequence[int]]]] = None,
    dtype=torch.float64,
) -> torch.Tensor:
    """``[B, H, W, heads, v_dim]``; differentiable in q, k, v (not through the routing)."""
    b_size, h, w, heads, d = q.shape
    s = num_regions
    scale = d ** -0.5 if scale is None else scale
    if routes is None:
        routes = oracle_routes(q, k, num_regions, topk)
    qf, kf, vf = (t.to(dtype) for t in (q, k, v))
    out = []
    for b in range(b_size):
        rows = []
        for y in range(h):
            cols = []
            for x in range(w):
                allowed = set(routes[b][_region(y, x, h, w, s)])
                keys = [(yy, xx) for yy in range(h) for xx in range(w) if _region(yy, xx, h, w, s) in allowed]
                per_head = []
                for hd in range(heads):
                    logits = torch.stack([scale * torch.dot(qf[b, y, x, hd], kf[b, yy, xx, hd]) for yy, xx in keys])
                    weights = torch.exp(logits - logits.max())
                    weights = weights / weights.sum()
                    per_head.append(sum(wt * vf[b, yy, xx, hd] for wt, (yy, xx) in zip(weights, keys)))
                cols.append(torch.stack(per_head))
            rows.append(torch.stack(cols))
        out.append(torch.stack(rows))
    return torch.stack(out)
