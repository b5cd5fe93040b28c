"""aggregated_attention's fused Triton kernels as ``torch.library`` custom ops:
``attnzoo::aggregated_fwd`` (returns the output and the base-2 logsumexp the backward needs) and
``attnzoo::aggregated_bwd`` (the gradients of every tensor input), with fake (meta)
implementations and the autograd formula that ties them together.

``torch.compile`` captures each as one node with no graph break, ``torch.export`` records one op,
and ``torch.library.opcheck`` tests them (tests/kernels/test_aggregated_attention_triton.py). The
ops live here, not in ``triton.py``, so that rebuilding the kernels (``importlib.reload`` of that
module for Triton's interpreter) does not register them twice; they look the kernels up at call
time. Importing this module does not import triton.

An op returns tensors only: an absent input's gradient is an empty tensor in the op's result and
None in autograd's.
"""
from __future__ import annotations

import sys
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._params import AggregatedParams

__all__ = ["aggregated_fused"]

_INPUTS = ("q", "k", "v", "k_pool", "v_pool", "pool_bias", "local_bias", "query_embedding", "temperature",
           "learnable_tokens", "learnable_bias")


def _kernels():
    from . import triton  # noqa: F401  (the module object survives importlib.reload)

    return sys.modules[__package__ + ".triton"]


@torch.library.custom_op("attnzoo::aggregated_fwd", mutates_args=())
def aggregated_fwd(q: Tensor, k: Optional[Tensor], v: Optional[Tensor], k_pool: Tensor, v_pool: Tensor,
                   pool_bias: Optional[Tensor], local_bias: Optional[Tensor], query_embedding: Tensor,
                   temperature: Tensor, learnable_tokens: Optional[Tensor], learnable_bias: Optional[Tensor],
                   window_size: Optional[int]) -> Tuple[Tensor, Tensor]:
    return _kernels().aggregated_forward(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                                         learnable_tokens, learnable_bias, window_size)


@aggregated_fwd.register_fake
def _aggregated_fwd_fake(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                         learnable_tokens, learnable_bias, window_size):
    out = q.new_empty((*q.shape[:4], v_pool.shape[-1]))
    return out, q.new_empty(q.shape[:4], dtype=torch.float32)


@torch.library.custom_op("attnzoo::aggregated_bwd", mutates_args=())
def aggregated_bwd(grad_out: Tensor, q: Tensor, k: Optional[Tensor], v: Optional[Tensor], k_pool: Tensor,
                   v_pool: Tensor, pool_bias: Optional[Tensor], local_bias: Optional[Tensor], query_embedding: Tensor,
                   temperature: Tensor, learnable_tokens: Optional[Tensor], learnable_bias: Optional[Tensor],
                   out: Tensor, lse: Tensor, window_size: Optional[int], pool_bias_grad: bool) -> Tuple[
                       Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _kernels().aggregated_backward(grad_out, q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding,
                                           temperature, learnable_tokens, learnable_bias, out, lse, window_size,
                                           pool_bias_grad)
    return tuple(g if g is not None else q.new_empty(0) for g in grads)


@aggregated_bwd.register_fake
def _aggregated_bwd_fake(grad_out, q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                         learnable_tokens, learnable_bias, out, lse, window_size, pool_bias_grad):
    def like(t, wanted=True):
        return torch.empty_like(t) if (t is not None and wanted) else q.new_empty(0)

    return (like(q), like(k), like(v), like(k_pool), like(v_pool), like(pool_bias, pool_bias_grad), like(local_bias),
            like(query_embedding), like(temperature), like(learnable_tokens), like(learnable_bias))


def _setup_context(ctx, inputs, output) -> None:
    *tensors, window_size = inputs
    out, lse = output
    ctx.save_for_backward(*tensors, out, lse)
    ctx.window_size = window_size


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    *tensors, out, lse = ctx.saved_tensors
    pool_bias_grad = tensors[5] is not None and ctx.needs_input_grad[5]
    grads = aggregated_bwd(grad_out, *tensors, out, lse, ctx.window_size, pool_bias_grad)
    result = [g if (t is not None and ctx.needs_input_grad[i]) else None
              for i, (g, t) in enumerate(zip(grads, tensors))]
    return (*result, None)


aggregated_fwd.register_autograd(_backward, setup_context=_setup_context)


def aggregated_fused(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature, learnable_tokens,
                     learnable_bias, params: AggregatedParams) -> Tensor:
    """aggregated_attention through the custom op (inputs validated by ``check_aggregated_inputs``)."""
    out, _ = aggregated_fwd(q, k, v, k_pool, v_pool, pool_bias, local_bias, query_embedding, temperature,
                            learnable_tokens, learnable_bias, params.window_size)
    return out
