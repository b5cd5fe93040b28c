"""Halo attention (HaloNet), reference implementation: the specification.

Layout is heads-last, as gna's: ``q`` is ``[B, H / s, W / s, heads, head_dim]``, ``k`` is
``[B, H, W, heads, head_dim]`` and ``v`` is ``[B, H, W, heads, v_dim]``; ``H`` and ``W`` are
multiples of the block size ``b`` and ``s`` (the query stride) divides ``b``.

The math (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual
Backbones", as timm's ``HaloAttn`` computes it):

* The key grid is cut into non-overlapping ``b x b`` blocks; block ``(B_y, B_x)`` owns the
  ``bq x bq`` queries (``bq = b / s``) at query positions ``(B_y bq + i_y, B_x bq + i_x)``.
* Every query of a block sees the same ``win x win`` window of keys (``win = b + 2h``, ``h`` the
  halo): key-grid positions ``(B_y b - h + j_y, B_x b - h + j_x)`` for ``0 <= j < win``. Window
  positions outside the grid hold zero keys and zero values; they are NOT masked: they take part
  in the softmax with a content logit of 0 plus their relative logits.
* Relative logits are factorised per axis with tables ``height_rel, width_rel`` of shape
  ``[2 win - 1, head_dim]``, shared by all heads; the offset is taken in block coordinates
  (query index ``i`` in ``[0, bq)``, key index ``j`` in ``[0, win)``), as timm does also when
  ``s > 1``:

  ``logit(i, j) = scale * q_i . k_j + q_i . height_rel[j_y - i_y + win - 1] + q_i . width_rel[j_x - i_x + win - 1]``

``out_i = sum_j softmax_j(logit(i, j)) v_j``, with ``scale = head_dim ** -0.5`` by default.

Algorithm: zero-pad k and v by ``h`` on both spatial axes and unfold ``win x win`` windows with
step ``b``; each block is one dense ``bq^2 x win^2`` attention. Memory ``O(N win^2 / s^2)``.
Computation runs in float32 (float64 for float64 inputs) and the result is cast back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._params import HaloParams, check_halo_inputs

__all__ = ["halo_attention_reference", "relative_index"]


def relative_index(query_block: int, window: int, device=None) -> torch.Tensor:
    """``[query_block, window]`` row of the relative table for (query i, key j): ``j - i + window - 1``."""
    i = torch.arange(query_block, device=device)[:, None]
    j = torch.arange(window, device=device)[None, :]
    return j - i + window - 1


def _halo_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    params: HaloParams,
    scale: float,
) -> torch.Tensor:
    """The reference for already checked inputs (the dispatcher's entry point)."""
    out_dtype = q.dtype
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    height_rel, width_rel = height_rel.to(compute), width_rel.to(compute)

    batch, _, _, heads, head_dim = k.shape
    v_dim = v.shape[-1]
    b, h, win, bq = params.block_size, params.halo_size, params.window, params.query_block
    nby, nbx = params.num_blocks

    # q: [B, nby*bq, nbx*bq, heads, d] -> [B, nby, nbx, heads, bq, bq, d]
    qb = q.reshape(batch, nby, bq, nbx, bq, heads, head_dim).permute(0, 1, 3, 5, 2, 4, 6)

    def windows(t: torch.Tensor) -> torch.Tensor:
        # [B, H, W, heads, c] -> [B, nby, nbx, heads, win * win, c]; zero keys outside the grid
        t = F.pad(t, (0, 0, 0, 0, h, h, h, h))
        t = t.unfold(1, win, b).unfold(2, win, b)  # [B, nby, nbx, heads, c, win_y, win_x]
        return t.flatten(-2).transpose(-1, -2)

    kw, vw = windows(k), windows(v)

    logits = torch.matmul(qb.flatten(4, 5), kw.transpose(-1, -2)) * scale  # [B, nby, nbx, heads, bq*bq, win*win]
    idx = relative_index(bq, win, device=q.device)
    rel_h = torch.einsum("...yxd,yjd->...yxj", qb, height_rel[idx])  # [..., bq, bq, win_y]
    rel_w = torch.einsum("...yxd,xjd->...yxj", qb, width_rel[idx])  # [..., bq, bq, win_x]
    rel = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2).flatten(4, 5)
    attn = (logits + rel).softmax(dim=-1)

    out = torch.matmul(attn, vw)  # [B, nby, nbx, heads, bq*bq, v_dim]
    out = out.reshape(batch, nby, nbx, heads, bq, bq, v_dim).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(batch, nby * bq, nbx * bq, heads, v_dim).to(out_dtype)


def halo_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size: int,
    halo_size: int,
    query_stride: int = 1,
    scale=None,
) -> torch.Tensor:
    """Halo attention, reference implementation (see the module docstring for the math).

    Returns ``[B, H / s, W / s, heads, v_dim]`` in the dtype of q.
    """
    params, scale = check_halo_inputs(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride, scale)
    return _halo_reference(q, k, v, height_rel, width_rel, params, scale)
