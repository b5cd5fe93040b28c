"""channel_attention against a brute-force oracle (``channel_attention_oracle.py``) and against
timm's DaViT ChannelAttention math.

Every comparison checks the output and the gradients of q, k, v with a relative error
``||got - want|| / ||want||`` bounded per dtype. Low-precision inputs are compared against the
oracle run on the same inputs upcast to float64, so the bound measures the op, not the rounding
of its inputs.
"""
from __future__ import annotations

import pytest
import torch

from attnzoo.kernels import BackendUnavailableError, count_op_flops
from attnzoo.kernels.channel_attention import (
    channel_attention, channel_attention_flops, channel_attention_op, channel_attention_reference,
)

from .channel_attention_oracle import channel_attention_oracle

# (output, gradients) relative-error bounds. The reference accumulates in float32 (float64 stays
# float64). Measured maxima over SHAPES x 5 seeds: fp64 8e-16, fp32 5.5e-7, fp16 2.5e-4,
# bf16 2e-3; the bounds keep a >= 8x margin.
REL_TOL = {
    torch.float64: (1e-12, 1e-11),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

SHAPES = [
    (2, (5,), 3, 4),  # [B, N], heads, head_dim
    (1, (3, 7), 2, 8),  # 2-D, odd sizes
    (2, (2, 3, 4), 1, 5),  # 3-D
    (1, (1,), 2, 1),  # one position, one channel
    (2, (9, 11), 3, 16),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(batch, spatial, heads, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *spatial, heads, dim, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("dtype", list(REL_TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_oracle_outputs_and_gradients(shape, dtype):
    batch, spatial, heads, dim = shape
    q, k, v = _inputs(batch, spatial, heads, dim, dtype, seed=sum(spatial) + dim)
    out = channel_attention(q, k, v, backend="reference")
    assert out.shape == q.shape and out.dtype == dtype
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = channel_attention_oracle(q64, k64, v64)
    want = torch.autograd.grad(want_out, (q64, k64, v64), grad.double())
    out_tol, grad_tol = REL_TOL[dtype]
    assert _rel(out, want_out) <= out_tol
    for name, a, b in zip("qkv", got, want):
        assert _rel(a, b) <= grad_tol, name


def test_custom_scale_and_large_logits():
    """Logits grow with the number of positions (no 1/N): the softmax must stay stable."""
    q, k, v = (t.detach() * 4 for t in _inputs(1, (40,), 2, 4, torch.float32, seed=3))
    out = channel_attention(q, k, v, scale=0.7)
    assert torch.isfinite(out).all()
    assert _rel(out, channel_attention_oracle(q, k, v, scale=0.7)) <= 1e-5


def test_equals_timm_channel_attention_math():
    """timm's davit.ChannelAttention: k scaled, (k^T v) softmaxed over its last axis, applied to q."""
    b, n, h, d = 2, 10, 3, 6
    q, k, v = (t.detach() for t in _inputs(b, (n,), h, d, torch.float32, seed=4))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # timm's [B, heads, N, head_dim]
    attn = ((kt * d ** -0.5).transpose(-1, -2) @ vt).softmax(dim=-1)
    want = (attn @ qt.transpose(-1, -2)).transpose(-1, -2).transpose(1, 2)
    torch.testing.assert_close(channel_attention(q, k, v), want)


def test_positions_are_only_summed_over():
    """The op does not depend on how the positions are arranged: [B, H, W] == [B, H*W]."""
    q, k, v = (t.detach() for t in _inputs(2, (4, 6), 2, 8, torch.float32, seed=5))
    flat = channel_attention(*(t.reshape(2, 24, 2, 8) for t in (q, k, v)))
    torch.testing.assert_close(channel_attention(q, k, v).reshape(2, 24, 2, 8), flat)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    permuted = channel_attention(*(t.reshape(2, 24, 2, 8)[:, perm] for t in (q, k, v)))
    torch.testing.assert_close(permuted, flat[:, perm])


def test_public_function_equals_reference_and_counts_math_flops():
    q, k, v = (t.detach() for t in _inputs(2, (3, 5), 4, 8, torch.float32, seed=6))
    with count_op_flops() as records:
        out = channel_attention(q, k, v)
    torch.testing.assert_close(out, channel_attention_reference(q, k, v), rtol=0, atol=0)
    assert [r.op for r in records] == ["channel_attention"]
    assert records[0].math == channel_attention_flops(2, 15, 4, 8) == 4 * 2 * 4 * 15 * 8 * 8


def test_dispatch():
    assert channel_attention_op.backends == ("reference",)
    q = torch.randn(1, 4, 2, 4)
    with pytest.raises(BackendUnavailableError, match="triton"):
        channel_attention(q, q, q, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        channel_attention(q, q, q, backend="cuda")


@pytest.mark.parametrize("make,match", [
    (lambda q: (q[0], q, q, None), "q must be"),
    (lambda q: (q.long(), q.long(), q.long(), None), "floating point"),
    (lambda q: (q, q[:, :3], q, None), "k must have the shape"),
    (lambda q: (q, q, q[..., :2], None), "v must have the shape"),
    (lambda q: (q, q.double(), q, None), "k must have the dtype"),
    (lambda q: (q, q, q, float("inf")), "scale"),
    (lambda q: (q, q, q, "0.5"), "scale"),
    (lambda q: ([1.0], q, q, None), "q must be a torch.Tensor"),
    (lambda q: (q[:, :0], q[:, :0], q[:, :0], None), ">= 1"),
])
def test_bad_inputs_are_named(make, match):
    q, k, v, scale = make(torch.randn(1, 4, 2, 4))
    with pytest.raises(ValueError, match=match):
        channel_attention(q, k, v, scale=scale)
