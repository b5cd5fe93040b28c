"""routed_attention's fused Triton kernels as ``torch.library.triton_op`` ops: ``attnzoo::routed_fwd``
(returns the output and the base-2 logsumexp the backward needs) and ``attnzoo::routed_bwd``, with
fake (meta) implementations and the autograd formula that ties them together.

``torch.compile`` captures each as one node with no graph break, ``torch.export`` records one op
(on CUDA with ``fallback=False`` and static sizes Inductor traces into it and compiles the kernels;
the host code decides on sizes in Python, so symbolic sizes keep it opaque: ``_triton/in_graph.py``),
and ``torch.library.opcheck`` tests them (tests/kernels/test_routed_attention_triton.py). The
routing index is an input (routing itself stays in PyTorch, traced around the op) and gets no
gradient. The module imports the kernels (``triton.py``); nothing in the kernel layer imports it
back: imports run one way, ``_library`` -> ``triton`` -> ``_autotune`` / ``_params``. The dispatcher
reaches the entry function (``routed_triton``) through the op folder's ``__init__``. A kernel that
cannot run on the device falls back to the reference when the dispatcher chose Triton by itself
(``fallback``; ``_triton/fallback.py``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._triton.fallback import pattern_key, reference_grads, run_or_fall_back
from .._triton.in_graph import fused_op, kernels_of
from ._params import RoutedParams
from .reference import _route, _routed_reference
from .triton import routed_backward, routed_forward
from . import triton as _kernels

__all__ = ["routed_triton"]


def _params(q: Tensor, index: Tensor, num_regions: int) -> RoutedParams:
    return RoutedParams((q.shape[1], q.shape[2]), num_regions, index.shape[-1])


@fused_op("attnzoo::routed_fwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def routed_fwd(q: Tensor, k: Tensor, v: Tensor, index: Tensor, num_regions: int, scale: float,
               fallback: bool = False) -> Tuple[Tensor, Tensor]:
    def reference():  # no logsumexp: the backward of a fallen-back pattern runs the reference too
        out = _routed_reference(q, k, v, _params(q, index, num_regions), scale, index)
        return out, q.new_full(q.shape[:-1], float("nan"), dtype=torch.float32)

    return run_or_fall_back(pattern_key("routed_attention", (q, k, v, index), (num_regions, scale)),
                            lambda: routed_forward(q, k, v, index, num_regions, scale), reference, fallback)


@routed_fwd.register_fake
def _routed_fwd_fake(q, k, v, index, num_regions, scale, fallback=False):
    return v.new_empty(v.shape, dtype=q.dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


@fused_op("attnzoo::routed_bwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def routed_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, index: Tensor, out: Tensor, lse: Tensor,
               num_regions: int, scale: float, fallback: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    params = _params(q, index, num_regions)

    def reference():
        return reference_grads(lambda q_, k_, v_: _routed_reference(q_, k_, v_, params, scale, index), (q, k, v),
                               grad_out, (True, True, True))

    return run_or_fall_back(pattern_key("routed_attention", (q, k, v, index), (num_regions, scale)),
                            lambda: routed_backward(grad_out, q, k, v, index, out, lse, num_regions, scale),
                            reference, fallback)


@routed_bwd.register_fake
def _routed_bwd_fake(grad_out, q, k, v, index, out, lse, num_regions, scale, fallback=False):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, index, num_regions, scale, fallback = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, index, out, lse)
    ctx.pattern = (num_regions, scale, fallback)


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q, k, v, index, out, lse = ctx.saved_tensors
    dq, dk, dv = routed_bwd(grad_out, q, k, v, index, out, lse, *ctx.pattern)
    return dq, dk, dv, None, None, None, None


routed_fwd.register_autograd(_backward, setup_context=_setup_context)


def routed_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: RoutedParams, scale: float,
                  index: Optional[torch.Tensor], fallback: bool = False) -> torch.Tensor:
    """routed_attention on the fused Triton kernels; inputs already validated
    (``check_routed_inputs``) and accepted by ``can_run_triton``. Routes in PyTorch when ``index``
    is None. Returns ``[B, H, W, heads, v_dim]`` in the dtype of q. ``fallback``: kernels that
    cannot run on this device give the reference's result and a warning (``_triton/fallback.py``).

    Runs as the custom op ``torch.ops.attnzoo.routed_fwd`` (its backward ``attnzoo.routed_bwd``),
    so ``torch.compile`` and ``torch.export`` see one node."""
    if index is None:
        index = _route(q, k, params)
    out, _ = routed_fwd(q, k, v, index, params.num_regions, float(scale), bool(fallback))
    return out
