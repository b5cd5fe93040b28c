"""gna's fused Triton kernels as ``torch.library.triton_op`` ops: ``attnzoo::gna_fwd`` (returns the
output and the base-2 logsumexp the backward needs) and ``attnzoo::gna_bwd``, with fake
(meta) implementations and the autograd formula that ties them together.

``torch.compile`` captures each as one node with no graph break, ``torch.export`` records one op
(on CUDA with ``fallback=False`` and static sizes Inductor traces into it and compiles the kernels;
the host code decides on sizes in Python, so symbolic sizes keep it opaque: ``_triton/in_graph.py``),
and ``torch.library.opcheck`` tests them (tests/kernels/test_gna_triton.py). The module imports the
kernels (``triton.py``); nothing in the kernel layer imports it back: imports run one way,
``_library`` -> ``triton`` -> ``_autotune`` / ``_params``. The dispatcher reaches the entry function
(``gna_triton``) through the op folder's ``__init__``. A kernel that cannot run on the device falls
back to the reference when the dispatcher chose Triton by itself (``fallback``;
``_triton/fallback.py``).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._triton.fallback import pattern_key, reference_grads, run_or_fall_back
from .._triton.in_graph import fused_op, kernels_of
from ._params import GNAParams
from .reference import _gna_reference
from .triton import gna_backward, gna_forward
from . import triton as _kernels

__all__ = ["gna_triton"]


def _params(q: Tensor, kernel_size, stride, dilation, is_causal) -> GNAParams:
    return GNAParams(tuple(q.shape[1:-2]), tuple(kernel_size), tuple(stride), tuple(dilation), tuple(is_causal))


def _key(q, k, v, rpb, kernel_size, stride, dilation, is_causal, scale) -> tuple:
    return pattern_key("gna", (q, k, v, rpb), (tuple(kernel_size), tuple(stride), tuple(dilation),
                                                tuple(is_causal), scale))


@fused_op("attnzoo::gna_fwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def gna_fwd(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int], stride: List[int],
            dilation: List[int], is_causal: List[bool], scale: float, fallback: bool = False) -> Tuple[Tensor, Tensor]:
    params = _params(q, kernel_size, stride, dilation, is_causal)

    def reference():  # no logsumexp: the backward of a fallen-back pattern runs the reference too
        return _gna_reference(q, k, v, params, rpb, scale), q.new_full(q.shape[:-1], float("nan"), dtype=torch.float32)

    return run_or_fall_back(_key(q, k, v, rpb, kernel_size, stride, dilation, is_causal, scale),
                            lambda: gna_forward(q, k, v, rpb, params, scale), reference, fallback)


@gna_fwd.register_fake
def _gna_fwd_fake(q, k, v, rpb, kernel_size, stride, dilation, is_causal, scale, fallback=False):
    return v.new_empty(v.shape, dtype=q.dtype), q.new_empty(q.shape[:-1], dtype=torch.float32)


@fused_op("attnzoo::gna_bwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels))
def gna_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
            kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool], scale: float,
            rpb_grad: bool, fallback: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    params = _params(q, kernel_size, stride, dilation, is_causal)

    def fused():
        return gna_backward(grad_out, q, k, v, rpb, out, lse, params, scale, rpb_grad)

    def reference():
        return reference_grads(lambda q_, k_, v_, rpb_: _gna_reference(q_, k_, v_, params, rpb_, scale),
                               (q, k, v, rpb), grad_out, (True, True, True, rpb_grad))

    dq, dk, dv, drpb = run_or_fall_back(_key(q, k, v, rpb, kernel_size, stride, dilation, is_causal, scale),
                                        fused, reference, fallback)
    # an op returns tensors only: no rpb gradient is an empty tensor
    return dq, dk, dv, (drpb if drpb is not None else q.new_empty(0))


@gna_bwd.register_fake
def _gna_bwd_fake(grad_out, q, k, v, rpb, out, lse, kernel_size, stride, dilation, is_causal, scale, rpb_grad,
                  fallback=False):
    drpb = rpb.new_empty(rpb.shape) if (rpb_grad and rpb is not None) else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), drpb


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, kernel_size, stride, dilation, is_causal, scale, fallback = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.pattern = (kernel_size, stride, dilation, is_causal, scale)
    ctx.fallback = fallback


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    rpb_grad = rpb is not None and ctx.needs_input_grad[3]
    dq, dk, dv, drpb = gna_bwd(grad_out, q, k, v, rpb, out, lse, *ctx.pattern, rpb_grad, ctx.fallback)
    return dq, dk, dv, (drpb if rpb_grad else None), None, None, None, None, None, None


gna_fwd.register_autograd(_backward, setup_context=_setup_context)


def gna_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: GNAParams,
               rpb: Optional[torch.Tensor], scale: float, fallback: bool = False) -> torch.Tensor:
    """gna on the fused Triton kernels; inputs already validated (``check_gna_inputs``) and
    accepted by ``can_run_triton``. Returns ``[B, *spatial, heads, v_dim]`` in the dtype of q.
    ``fallback``: kernels that cannot run on this device give the reference's result and a warning
    instead of an error (``backend=None``; ``_triton/fallback.py``).

    Runs as the custom op ``torch.ops.attnzoo.gna_fwd`` (its backward ``attnzoo.gna_bwd``), so
    ``torch.compile`` and ``torch.export`` see one node."""
    out, _ = gna_fwd(q, k, v, rpb, list(params.kernel_size), list(params.stride), list(params.dilation),
                     list(params.is_causal), float(scale), bool(fallback))
    return out
