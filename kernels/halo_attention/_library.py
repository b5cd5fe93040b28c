"""halo_attention's fused Triton kernels as ``torch.library.triton_op`` ops: ``attnzoo::halo_fwd``
(returns the output and the base-2 logsumexp the backward needs) and ``attnzoo::halo_bwd`` (the
gradients of q, k, v and both relative tables), with fake (meta) implementations and the autograd
formula that ties them together.

``torch.compile`` captures each as one node with no graph break, ``torch.export`` records one op
(on CUDA with ``fallback=False`` Inductor traces into it and compiles the kernels, static or
symbolic sizes: ``_triton/in_graph.py``),
and ``torch.library.opcheck`` tests them (tests/kernels/test_halo_attention_triton.py). The module
imports the kernels (``triton.py``); nothing in the kernel layer imports it back: imports run one
way, ``_library`` -> ``triton`` -> ``_autotune`` / ``_params``. The dispatcher reaches the entry
function (``halo_triton``) through the op folder's ``__init__``. A kernel that cannot run on the
device falls back to the reference when the dispatcher chose Triton by itself (``fallback``;
``_triton/fallback.py``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._triton.fallback import pattern_key, reference_grads, run_or_fall_back
from .._triton.in_graph import fused_op, kernels_of
from ._params import HaloParams
from .reference import _halo_reference
from .triton import halo_backward, halo_forward
from . import triton as _kernels

__all__ = ["halo_triton"]


def _key(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride, scale) -> tuple:
    return pattern_key("halo_attention", (q, k, v, height_rel, width_rel), (block_size, halo_size, query_stride, scale))


def _params(k: Tensor, block_size: int, halo_size: int, query_stride: int) -> HaloParams:
    return HaloParams((k.shape[1], k.shape[2]), block_size, halo_size, query_stride)


@fused_op("attnzoo::halo_fwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels),
          size_dynamic=True)
def halo_fwd(q: Tensor, k: Tensor, v: Tensor, height_rel: Tensor, width_rel: Tensor, block_size: int, halo_size: int,
             query_stride: int, scale: float, fallback: bool = False) -> Tuple[Tensor, Tensor]:
    sizes = (block_size, halo_size, query_stride)

    def reference():  # no logsumexp: the backward of a fallen-back pattern runs the reference too
        out = _halo_reference(q, k, v, height_rel, width_rel, _params(k, *sizes), scale)
        return out, q.new_full(q.shape[:4], float("nan"), dtype=torch.float32)

    return run_or_fall_back(_key(q, k, v, height_rel, width_rel, *sizes, scale),
                            lambda: halo_forward(q, k, v, height_rel, width_rel, *sizes, scale),
                            reference, fallback)


@halo_fwd.register_fake
def _halo_fwd_fake(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride, scale, fallback=False):
    return q.new_empty((*q.shape[:4], v.shape[-1])), q.new_empty(q.shape[:4], dtype=torch.float32)


@fused_op("attnzoo::halo_bwd", compiled=not _kernels.INTERPRETER, kernels=kernels_of(_kernels),
          size_dynamic=True)
def halo_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, height_rel: Tensor, width_rel: Tensor, out: Tensor,
             lse: Tensor, block_size: int, halo_size: int, query_stride: int,
             scale: float, fallback: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    sizes = (block_size, halo_size, query_stride)
    params = _params(k, *sizes)

    def reference():
        return reference_grads(lambda *t: _halo_reference(*t, params, scale), (q, k, v, height_rel, width_rel),
                               grad_out, (True,) * 5)

    return run_or_fall_back(_key(q, k, v, height_rel, width_rel, *sizes, scale),
                            lambda: halo_backward(grad_out, q, k, v, height_rel, width_rel, out, lse, *sizes,
                                                             scale),
                            reference, fallback)


@halo_bwd.register_fake
def _halo_bwd_fake(grad_out, q, k, v, height_rel, width_rel, out, lse, block_size, halo_size, query_stride, scale,
                   fallback=False):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(height_rel),
            torch.empty_like(width_rel))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, height_rel, width_rel, block_size, halo_size, query_stride, scale, fallback = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, height_rel, width_rel, out, lse)
    ctx.pattern = (block_size, halo_size, query_stride, scale, fallback)


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q, k, v, height_rel, width_rel, out, lse = ctx.saved_tensors
    grads = halo_bwd(grad_out, q, k, v, height_rel, width_rel, out, lse, *ctx.pattern)
    return (*grads, None, None, None, None, None)


halo_fwd.register_autograd(_backward, setup_context=_setup_context)


def halo_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, height_rel: torch.Tensor, width_rel: torch.Tensor,
                params: HaloParams, scale: float, fallback: bool = False) -> torch.Tensor:
    """halo_attention on the fused Triton kernels; inputs already validated (``check_halo_inputs``)
    and accepted by ``can_run_triton``. Returns ``[B, H/s, W/s, heads, v_dim]`` in the dtype of q.
    ``fallback``: kernels that cannot run on this device give the reference's result and a warning
    (``_triton/fallback.py``).

    Runs as the custom op ``torch.ops.attnzoo.halo_fwd`` (its backward ``attnzoo.halo_bwd``), so
    ``torch.compile`` and ``torch.export`` see one node."""
    out, _ = halo_fwd(q, k, v, height_rel, width_rel, params.block_size, params.halo_size, params.query_stride,
                      float(scale), bool(fallback))
    return out
