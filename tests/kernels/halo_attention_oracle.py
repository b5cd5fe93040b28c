"""Brute-force oracle for halo attention, for tests only.

Written from the definition, not from ``attnzoo.kernels.halo_attention.reference``: for every
query, one at a time in plain Python, it walks the ``win x win`` key positions of the query's
block window, takes the key and value there or a zero vector where the position lies outside the
grid (zero padding, never masked), adds the per-axis relative embeddings for that (query, key)
offset, and runs a softmax over the window. No unfold, no batching over queries.

Definition (2-D, key grid ``H x W``, block ``b``, halo ``h``, query stride ``s``, ``bq = b / s``,
``win = b + 2h``): query ``(y, x)`` of the ``H/s x W/s`` query grid lies in block
``(y // bq, x // bq)`` at in-block index ``(y % bq, x % bq)``; its keys are the key-grid positions
``(by * b - h + jy, bx * b - h + jx)``, ``0 <= jy, jx < win``, and

    logit = scale * q . k + q . height_rel[jy - iy + win - 1] + q . width_rel[jx - ix + win - 1]
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["halo_attention_oracle"]


def halo_attention_oracle(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size: int,
    halo_size: int,
    query_stride: int = 1,
    scale: Optional[float] = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``[B, H/s, W/s, heads, v_dim]`` from q ``[B, H/s, W/s, heads, d]``, k ``[B, H, W, heads, d]``,
    v ``[B, H, W, heads, v_dim]``; differentiable; computed in ``dtype``."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    height_rel, width_rel = height_rel.to(dtype), width_rel.to(dtype)
    batch, height, width, heads, head_dim = k.shape
    if scale is None:
        scale = head_dim ** -0.5
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    zero_k = k.new_zeros(batch, heads, head_dim)
    zero_v = v.new_zeros(batch, heads, v.shape[-1])
    rows = []
    for y in range(q.shape[1]):
        row = []
        for x in range(q.shape[2]):
            by, iy = divmod(y, bq)
            bx, ix = divmod(x, bq)
            keys, values, rels = [], [], []
            for jy in range(win):
                for jx in range(win):
                    ky = by * block_size - halo_size + jy
                    kx = bx * block_size - halo_size + jx
                    inside = 0 <= ky < height and 0 <= kx < width
                    keys.append(k[:, ky, kx] if inside else zero_k)
                    values.append(v[:, ky, kx] if inside else zero_v)
                    rels.append(height_rel[jy - iy + win - 1] + width_rel[jx - ix + win - 1])
            keys = torch.stack(keys, dim=1)  # [B, win^2, heads, d]
            values = torch.stack(values, dim=1)  # [B, win^2, heads, v_dim]
            rels = torch.stack(rels)  # [win^2, d]
            query = q[:, y, x]  # [B, heads, d]
            logits = scale * torch.einsum("bhd,bkhd->bhk", query, keys) + torch.einsum("bhd,kd->bhk", query, rels)
            row.append(torch.einsum("bhk,bkhv->bhv", logits.softmax(dim=-1), values))
        rows.append(torch.stack(row, dim=1))
    return torch.stack(rows, dim=1)
