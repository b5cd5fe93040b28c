"""Flash-attention building blocks shared by the fused ops' kernels (``@triton.jit`` helpers,
inlined into each kernel by Triton, so they cost nothing over writing them out).

Scores are in base 2 (the softmax scale already multiplied by log2(e)); statistics and the
accumulators are float32. An op's kernel keeps only what is its own: which keys a query row
sees (row mapping, masks) and its bias terms. The forward sets the scores of masked pairs to
``-inf`` before ``softmax_step``; the backward steps take the mask itself (a masked pair gets
``P = 0``, whatever its score: invalid query lanes carry ``lse = 0``).

* ``load_rows`` / ``store_rows``: a ``[rows, columns]`` tile of a row-major ``[*, WIDTH]`` tensor,
  rows masked by a lane mask, columns past ``WIDTH`` (the power-of-two padding) masked;
* ``softmax_step`` / ``softmax_epilogue``: the forward's online softmax over key blocks;
* ``dq_step``: one key block of the query-major backward (``dq``, as FlashAttention-2's);
* ``dkdv_step``: one query block of the key-major backward (``dk``, ``dv``).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["load_rows", "store_rows", "softmax_step", "softmax_epilogue", "dq_step", "dkdv_step"]


@triton.jit
def load_rows(PTR, rows, ok, cols, WIDTH: tl.constexpr):
    """``PTR[rows, cols]`` of a row-major ``[*, WIDTH]`` tensor, 0 where a row is not ``ok`` or a
    column is past ``WIDTH``."""
    return tl.load(PTR + rows[:, None] * WIDTH + cols[None, :], mask=ok[:, None] & (cols[None, :] < WIDTH), other=0.0)


@triton.jit
def store_rows(PTR, rows, ok, cols, x, WIDTH: tl.constexpr):
    """Stores the tile ``x`` at ``PTR[rows, cols]`` (cast to PTR's dtype), rows that are ``ok`` and
    columns below ``WIDTH`` only."""
    tl.store(PTR + rows[:, None] * WIDTH + cols[None, :], x.to(PTR.dtype.element_ty),
             mask=ok[:, None] & (cols[None, :] < WIDTH))


@triton.jit
def softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION: tl.constexpr):
    """One key block of the online softmax: scores ``s [M, N]`` (masked pairs ``-inf``), running
    row maxima ``m_i`` and sums ``l_i [M]``, accumulator ``acc [M, DV]`` and the block's values
    ``v [N, DV]`` -> ``(m_i, l_i, acc)``. A row with no key seen yet (every score so far ``-inf``)
    keeps ``m_i = -inf``, ``l_i = 0``, ``acc = 0`` instead of turning into NaN."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def softmax_epilogue(m_i, l_i, acc):
    """``(out [M, DV], lse [M])`` after the last key block: the normalised accumulator and the
    base-2 log-sum-exp the backward needs. A row that saw no key gets ``out = 0``."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    return acc / l_safe[:, None], m_i + tl.log2(l_safe)


@triton.jit
def dq_step(s, mask, lse, delta, do, k, v, dq, DOT_PRECISION: tl.constexpr):
    """One key block of the query-major backward. Scores ``s [M, N]`` (base 2, bias included),
    the pairs' ``mask``, the rows' forward log-sum-exp ``lse`` and ``delta = rowsum(dO * O)``
    ``[M]``, the rows' ``do [M, DV]``, the block's keys ``k [N, D]`` and values ``v [N, DV]`` ->
    ``(dq, p, ds)``: ``dq [M, D]`` plus ``dS k`` (unscaled), the probabilities ``P`` and
    ``dS = P (dO v^T - delta)`` (float32, for an op's own bias and key gradients)."""
    p = tl.where(mask, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq, p, ds


@triton.jit
def dkdv_step(s, mask, lse, delta, q, do, v, dk, dv, DOT_PRECISION: tl.constexpr):
    """One query block of the key-major backward, transposed: scores ``s [M keys, N queries]``
    (base 2, bias included), the pairs' ``mask``, the queries' ``lse`` and ``delta`` ``[N]``,
    ``q [N, D]`` and ``do [N, DV]``, the program's own values ``v [M, DV]`` -> ``(dk, dv)``:
    ``dv += P^T dO``, ``dk += dS^T q`` (unscaled)."""
    p = tl.where(mask, tl.exp2(s - lse[None, :]), 0.0)
    dv += tl.dot(p.to(do.dtype), do, input_precision=DOT_PRECISION)
    dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[None, :])
    dk += tl.dot(ds.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv
