"""Brute-force oracle for generalized neighborhood attention (GNA), for tests only.

Written from the definition, not from ``attnzoo.kernels.gna.reference``: it decides for every
(query, key) pair of positions, one pair at a time in plain Python, whether the key is in the
query's neighborhood, builds a dense ``N x N`` mask (``N`` = number of spatial positions) and a
dense bias, and runs dense softmax attention in float64 (or another dtype on request). Quadratic in ``N``: keep inputs small.

Per spatial axis of length ``L`` with kernel ``k``, stride ``s``, dilation ``d`` and causal flag:

* Dilation: position ``p`` lies in group ``g = p % d`` at group coordinate ``j = p // d``; the
  group has ``L_g = ceil((L - g) / d)`` positions. A query only sees keys of its own group.
* Non-causal: the leader of query ``j`` is ``min((j // s) * s + s // 2, L_g - 1)``; with
  ``left = k // 2`` and ``right = k - 1 - left`` the window centre is the leader clamped to
  ``[left, L_g - 1 - right]`` and the window is the group coordinates
  ``[centre - left, centre + right]``: always exactly ``k`` keys.
* Causal: the leader is ``min((j // s) * s + s - 1, L_g - 1)`` and the keys are the group
  coordinates ``i`` with ``max(leader - k + 1, 0) <= i <= j``.
* Several axes: a key is in the neighborhood when it is on every axis (Cartesian product).

With a relative position bias ``rpb`` of shape ``[heads, 2 k_1 - 1, ..., 2 k_r - 1]``, the logit
of key ``i`` for query ``j`` in head ``h`` gets ``rpb[h, i_1 // d_1 - j_1 // d_1 + k_1 - 1, ...]``.

    out[b, j, h] = sum_{i in window(j)} softmax_i(scale * q[b, j, h] . k[b, i, h] + bias[h, j, i]) v[b, i, h]

with ``scale = head_dim ** -0.5`` unless given.
"""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["axis_neighbors", "neighborhood", "attended_pair_count", "gna_oracle"]


def _as_tuple(value, rank: int) -> tuple:
    if isinstance(value, (bool, int)):
        return (value,) * rank
    return tuple(value)


def axis_neighbors(length: int, kernel: int, stride: int, dilation: int, causal: bool) -> List[List[bool]]:
    """``table[p][q]``: along one axis, whether the key at position ``q`` is in the window of the
    query at position ``p`` (positions in input coordinates)."""
    table = [[False] * length for _ in range(length)]
    for p in range(length):
        group, j = p % dilation, p // dilation
        group_len = math.ceil((length - group) / dilation)
        if causal:
            leader = min((j // stride) * stride + stride - 1, group_len - 1)
            first, last = max(leader - kernel + 1, 0), j
        else:
            leader = min((j // stride) * stride + stride // 2, group_len - 1)
            left = kernel // 2
            right = kernel - 1 - left
            centre = min(max(leader, left), group_len - 1 - right)
            first, last = centre - left, centre + right
        for q in range(length):
            if q % dilation == group and first <= q // dilation <= last:
                table[p][q] = True
    return table


def neighborhood(
    spatial: Sequence[int], kernel_size, stride=1, dilation=1, is_causal=False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The dense attention pattern over the row-major flattened positions.

    Returns ``mask [N, N]`` (bool, ``mask[query, key]``) and ``rel [N, N, rank]`` (int64): the
    rpb coordinates ``key // d - query // d + k - 1`` of each pair along each axis (only
    meaningful where the mask is set).
    """
    rank = len(spatial)
    kernel_size, stride, dilation, is_causal = (
        _as_tuple(x, rank) for x in (kernel_size, stride, dilation, is_causal)
    )
    tables = [axis_neighbors(*args) for args in zip(spatial, kernel_size, stride, dilation, is_causal)]
    positions = list(itertools.product(*(range(n) for n in spatial)))
    n = len(positions)
    mask = torch.zeros(n, n, dtype=torch.bool)
    rel = torch.zeros(n, n, rank, dtype=torch.int64)
    pairs, offsets = [], []
    for a, query in enumerate(positions):
        rows = [tables[ax][query[ax]] for ax in range(rank)]  # this query's row on every axis
        for b, key in enumerate(positions):
            if all(row[i] for row, i in zip(rows, key)):
                pairs.append((a, b))
                offsets.append(
                    [i // d - j // d + ks - 1 for i, j, d, ks in zip(key, query, dilation, kernel_size)]
                )
    index = tuple(torch.tensor(pairs, dtype=torch.int64).T)
    mask[index] = True
    rel[index] = torch.tensor(offsets, dtype=torch.int64)
    return mask, rel


def attended_pair_count(spatial: Sequence[int], kernel_size, stride=1, dilation=1, is_causal=False) -> int:
    """Number of (query, key) pairs in the pattern, per batch element and head."""
    mask, _ = neighborhood(spatial, kernel_size, stride, dilation, is_causal)
    return int(mask.sum())


def gna_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense GNA computed in ``dtype`` (float64 unless asked otherwise; float32 gives the error
    that plain dense attention makes in single precision). ``q, k: [B, *spatial, H, D]``,
    ``v: [B, *spatial, H, Dv]``; returns ``[B, *spatial, H, Dv]`` in ``dtype``. Differentiable by
    autograd in every tensor argument."""
    spatial = tuple(q.shape[1:-2])
    rank = len(spatial)
    b, h, dv = q.shape[0], q.shape[-2], v.shape[-1]
    n = math.prod(spatial)
    mask, rel = neighborhood(spatial, kernel_size, stride, dilation, is_causal)
    mask = mask.to(q.device)
    if scale is None:
        scale = q.shape[-1] ** -0.5

    qf = q.to(dtype).reshape(b, n, h, -1)
    kf = k.to(dtype).reshape(b, n, h, -1)
    vf = v.to(dtype).reshape(b, n, h, dv)
    logits = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    if rpb is not None:
        index = tuple(rel[..., ax].to(q.device) for ax in range(rank))
        logits = logits + rpb.to(dtype)[(slice(None),) + index]  # [H, N, N] broadcast over B
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, vf)
    return out.reshape((b,) + spatial + (h, dv))
