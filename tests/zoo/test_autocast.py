"""Mixed precision: every family runs forward and backward under ``torch.autocast`` and stays close
to its fp32 result.

Bound: relative L2 error ``||a - b|| / ||b||`` of the logits <= 5% and of the flattened parameter
gradient <= 15%. bf16 keeps 8 significant bits (unit roundoff 2**-8 = 0.4%); through a dozen
blocks of randomly initialised weights the measured errors are 0.4-2% for the logits and 0.3-8%
for the gradients (HaloNet's the largest), so the bounds leave about 2x headroom and still fail on
a wrong cast (an fp32 parameter refused, or an op left in bf16 where it must not be: errors of
tens of %). The same check runs for CUDA fp16 and bf16 on a GPU (marked ``gpu``).
"""
from __future__ import annotations

import pytest
import timm
import torch

import attnzoo  # noqa: F401  (registers the models)

from .test_registry import ONE_PER_FAMILY

OUT_BOUND, GRAD_BOUND = 0.05, 0.15


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _forward_backward(model, x, weight, autocast=None):
    model.zero_grad(set_to_none=True)
    if autocast is None:
        out = model(x)
    else:
        with torch.autocast(*autocast):
            out = model(x)
    (out.float() * weight).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    assert torch.isfinite(grad).all()
    return out.detach(), grad


def _check_family(name: str, device: str, dtype: torch.dtype, size: int) -> None:
    torch.manual_seed(0)
    # eval: no dropout / drop-path draws, so both runs see the same network.
    model = timm.create_model(name, num_classes=10, device=device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    weight = torch.randn(1, 10, device=device)
    ref, ref_grad = _forward_backward(model, x, weight)
    out, grad = _forward_backward(model, x, weight, autocast=(device, dtype))
    assert out.dtype == dtype  # the head ran in the autocast dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) <= OUT_BOUND, f"{name}: logits rel. error {_rel(out, ref):.4f} > {OUT_BOUND}"
    assert _rel(grad, ref_grad) <= GRAD_BOUND, f"{name}: gradient rel. error {_rel(grad, ref_grad):.4f} > {GRAD_BOUND}"


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_cpu_bf16_autocast_forward_backward_close_to_fp32(name):
    _check_family(name, "cpu", torch.bfloat16, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_cuda_autocast_forward_backward_close_to_fp32(name, dtype):
    _check_family(name, "cuda", dtype, 64)
