"""Flash-attention building blocks shared by the fused ops' kernels (``@triton.jit`` helpers,
inlined into each kernel by Triton, so they cost nothing over writing them out).

Scores are in base 2 (the softmax scale already multiplied by log2(e)); statistics and the
accumulator are float32. An op's kernel keeps only what is its own: which keys a query row
sees (row mapping, masks) and its bias terms; it sets the scores of masked pairs to ``-inf``
before ``softmax_step``.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["softmax_step", "softmax_epilogue"]


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
