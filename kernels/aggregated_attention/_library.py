"""aggregated_attention's fused Triton kernels as ``torch.library.triton_op`` ops:
``attnzoo::aggregated_fwd`` (returns the output and the base-2 logsumexp the backward needs) and
``attnzoo::aggregated_bwd`` (the gradients of every tensor input), with fake (meta)
implementations and the autograd formula that ties them together.

``torch.compile`` captures each as one node with no graph break, ``torch.export`` records one op
(on CUDA with ``fallback=False`` and static sizes Inductor traces into it and compiles the kernels;
the host code decides on sizes in Python, so symbolic sizes keep it opaque: ``_triton/in_graph.py``),
and ``torch.library.opcheck`` tests them (tests/kernels/test_aggregated_attention_triton.py). The
module imports the kernels (``triton.py``); nothing in the kernel layer imports it back: imports
run one way, ``_library`` -> ``triton`` -> ``_autotune`` / ``_params``. The dispatcher reaches the
entry function (``aggregated_triton``) through the op folder's ``__init__``. A kernel that cannot
run on the device falls back to the reference when the dispatcher chose Triton by itself
(``fallback``; ``_triton/fallback.py``).

An op returns tensors only: an absent input's gradient is an empty tensor in the op's result and
None in autograd's.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._triton.fallback import pattern_key, reference_grads, run_or_fall_back
from .._triton.in_graph import fused_op, kernels_of
from ._params import AggregatedParams
from .reference import _aggregated_reference
from .triton import aggregated_backward, aggregated_forward
from . import triton as _kernels

__all__ = ["aggregated_triton"]

_INPUTS = ("q", "k", "v", "k_pool", "v_pool", "pool_bias", "local_bias", "query_embedding", "temperature",
           "learnable_tokens", "learnable_bias")



def _params(q: Tensor, k_pool: Tensor, window_size: Optional[int]) -> AggregatedParams:
    return AggregatedParams((q.shape[1], q.shape[2]), window_size, k_pool.shape[1])


@fused_op("attnzoo::aggregated_fwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def aggregated_fwd(q: Tensor, k: Optional[Tensor], v: Optional[Tensor], k_pool: Tensor, v_pool: Tensor,
                   pool_bias: Optional[Tensor], local_bias: Optional[Tensor], query_embedding: Tensor,
                   temperature: Tensor, learnable_tokens: Optional[Tensor], learnable_bias: Optional[Tensor],
                   window_size: Optional[int], fallback: bool = False) -> Tuple[Tensor, Tensor]:
    tensors = (q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
               learnable_bias)

    def reference():  # no logsumexp: the backward of a fallen-back pattern runs the reference too
        out = _aggregated_reference(*tensors, _params(q, k_pool, window_size))
        return out, q.new_full(q.shape[:4], float("nan"), dtype=torch.float32)

    return run_or_fall_back(pattern_key("aggregated_attention", tensors, (window_size,)),
                            lambda: aggregated_forward(*tensors, window_size), reference, fallback)


@aggregated_fwd.register_fake
def _aggregated_fwd_fake(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                         learnable_tokens, learnable_bias, window_size, fallback=False):
    out = q.new_empty((*q.shape[:4], v_pool.shape[-1]))
    return out, q.new_empty(q.shape[:4], dtype=torch.float32)


@fused_op("attnzoo::aggregated_bwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def aggregated_bwd(grad_out: Tensor, q: Tensor, k: Optional[Tensor], v: Optional[Tensor], k_pool: Tensor,
                   v_pool: Tensor, pool_bias: Optional[Tensor], local_bias: Optional[Tensor], query_embedding: Tensor,
                   temperature: Tensor, learnable_tokens: Optional[Tensor], learnable_bias: Optional[Tensor],
                   out: Tensor, lse: Tensor, window_size: Optional[int], pool_bias_grad: bool,
                   fallback: bool = False) -> Tuple[
                       Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    tensors = (q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
               learnable_bias)
    params = _params(q, k_pool, window_size)

    def reference():
        wanted = [True] * len(tensors)
        wanted[5] = pool_bias_grad
        return reference_grads(lambda *t: _aggregated_reference(*t, params), tensors, grad_out, wanted)

    grads = run_or_fall_back(pattern_key("aggregated_attention", tensors, (window_size,)),
                             lambda: aggregated_backward(grad_out, *tensors, out, lse, window_size,
                                                                    pool_bias_grad),
                             reference, fallback)
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@aggregated_bwd.register_fake
def _aggregated_bwd_fake(grad_out, q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                         learnable_tokens, learnable_bias, out, lse, window_size, pool_bias_grad, fallback=False):
    def like(t, wanted=True):
        return torch.empty_like(t) if (t is not None and wanted) else q.new_empty(0)

    return (like(q), like(k), like(v), like(k_pool), like(v_pool), like(pool_bias, pool_bias_grad), like(local_bias),
            like(query_embedding), like(temperature), like(learnable_tokens), like(learnable_bias))


def _setup_context(ctx, inputs, output) -> None:
    *tensors, window_size, fallback = inputs
    out, lse = output
    ctx.save_for_backward(*tensors, out, lse)
    ctx.window_size = window_size
    ctx.fallback = fallback


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    *tensors, out, lse = ctx.saved_tensors
    pool_bias_grad = tensors[5] is not None and ctx.needs_input_grad[5]
    grads = aggregated_bwd(grad_out, *tensors, out, lse, ctx.window_size, pool_bias_grad, ctx.fallback)
    result = [g if (t is not None and ctx.needs_input_grad[i]) else None
              for i, (g, t) in enumerate(zip(grads, tensors))]
    return (*result, None, None)


aggregated_fwd.register_autograd(_backward, setup_context=_setup_context)


def aggregated_triton(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                      learnable_tokens, learnable_bias, params: AggregatedParams, fallback: bool = False) -> torch.Tensor:
    """aggregated_attention on the fused Triton kernels; inputs already validated and accepted by
    ``can_run_triton``. Returns ``[B, H, W, heads, v_dim]`` in q's dtype. ``fallback``: kernels
    that cannot run on this device give the reference's result and a warning (``_triton/fallback.py``).

    Runs as the custom op ``torch.ops.attnzoo.aggregated_fwd`` (backward ``attnzoo.aggregated_bwd``),
    so ``torch.compile`` and ``torch.export`` see one node."""
    out, _ = aggregated_fwd(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                            learnable_tokens, learnable_bias, params.window_size, bool(fallback))
    return out
