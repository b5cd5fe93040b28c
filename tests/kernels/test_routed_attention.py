"""routed_attention (BiFormer's bi-level routing attention) against a brute-force oracle
(``routed_attention_oracle.py``) and against plain softmax attention when every region is routed.

Every oracle comparison checks the output and the gradients of q, k, v with a relative error
``||got - want|| / ||want||`` bounded per dtype. Low-precision inputs are compared against the
oracle run on the same inputs upcast to float64, so the bound measures the op, not the rounding
of its inputs.
"""
from __future__ import annotations

import pytest
import torch

from attnzoo.kernels import BackendUnavailableError, count_op_flops
from attnzoo.kernels.routed_attention import (
    RoutedParams, route_regions, routed_attention, routed_attention_flops, routed_attention_op,
    routed_attention_reference,
)

from .routed_attention_oracle import oracle_routes, routed_attention_oracle

# (output, gradients) relative-error bounds. Routing runs in float32 (float64 stays float64); the
# attention keeps the input dtype for storage and accumulates in float32. Measured maxima
# (output / gradients) over SHAPES x 3 seeds: fp64 3.8e-16 / 5.6e-16, fp32 1.7e-7 / 2.1e-7,
# fp16 2.5e-4 / 4.9e-4, bf16 2.0e-3 / 3.9e-3; the bounds keep a >= 4x margin.
REL_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# (batch, H, W, heads, head_dim, v_dim, num_regions, topk)
SHAPES = [
    (2, 4, 6, 2, 4, 4, 2, 1),  # BiFormer stage-1 style: one routed region
    (1, 6, 9, 3, 5, 7, 3, 4),  # odd sizes, 2x3 regions, v_dim != head_dim
    (1, 5, 5, 2, 8, 8, 5, 3),  # 1x1 regions
    (2, 6, 6, 1, 4, 3, 3, 9),  # topk = S*S: every region
    (1, 3, 7, 2, 4, 3, 1, 1),  # one region: plain attention
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(batch, h, w, heads, d, dv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, h, w, heads, d, generator=g)
    k = torch.randn(batch, h, w, heads, d, generator=g)
    v = torch.randn(batch, h, w, heads, dv, generator=g)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("dtype", list(REL_TOL))
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_oracle_outputs_and_gradients(shape, dtype):
    batch, h, w, heads, d, dv, s, topk = shape
    q, k, v = _inputs(batch, h, w, heads, d, dv, dtype, seed=h * w + d + topk)
    out = routed_attention(q, k, v, s, topk, backend="reference")
    assert out.shape == (batch, h, w, heads, dv) and out.dtype == dtype
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want_out = routed_attention_oracle(q64, k64, v64, s, topk)
    want = torch.autograd.grad(want_out, (q64, k64, v64), grad.double())
    out_tol, grad_tol = REL_TOL[dtype]
    assert _rel(out, want_out) <= out_tol
    for name, a, b in zip("qkv", got, want):
        assert _rel(a, b) <= grad_tol, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_routing_matches_the_oracle(shape, dtype):
    batch, h, w, heads, d, dv, s, topk = shape
    q, k, _ = (t.detach() for t in _inputs(batch, h, w, heads, d, dv, dtype, seed=7 + h))
    index = route_regions(q, k, s, topk)
    assert index.shape == (batch, s * s, topk) and index.dtype == torch.int64
    assert index.tolist() == oracle_routes(q, k, s, topk)


@pytest.mark.parametrize("shape", [(2, 6, 10, 2, 4, 6, 2), (1, 9, 6, 3, 8, 8, 3), (1, 7, 7, 2, 4, 4, 7)])
def test_every_region_routed_is_plain_softmax_attention(shape):
    batch, h, w, heads, d, dv, s = shape
    q, k, v = (t.detach() for t in _inputs(batch, h, w, heads, d, dv, torch.float32, seed=11))
    got = routed_attention(q, k, v, s, s * s, scale=0.3)
    qt, kt, vt = (t.flatten(1, 2).transpose(1, 2).double() for t in (q, k, v))  # [B, heads, N, dim]
    want = ((qt @ kt.transpose(-1, -2)) * 0.3).softmax(-1) @ vt
    want = want.transpose(1, 2).reshape(batch, h, w, heads, dv)
    assert _rel(got, want) <= 2e-6


def test_given_index_equals_computed_index_and_routing_gets_no_gradient():
    q, k, v = _inputs(2, 6, 8, 2, 4, 5, torch.float32, seed=12)
    index = route_regions(q, k, 2, 2)
    assert not index.requires_grad
    out_auto = routed_attention(q, k, v, 2, 2)
    grads_auto = torch.autograd.grad(out_auto.square().sum(), (q, k, v))
    out_given = routed_attention(q, k, v, 2, 2, index=index)
    grads_given = torch.autograd.grad(out_given.square().sum(), (q, k, v))
    torch.testing.assert_close(out_auto, out_given, rtol=0, atol=0)
    for a, b in zip(grads_auto, grads_given):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # int32 ids and another order of the ids in each row give the same attention
    flipped = index.flip(-1).int()
    torch.testing.assert_close(routed_attention(q, k, v, 2, 2, index=flipped), out_auto, rtol=1e-6, atol=1e-6)


def test_an_arbitrary_index_is_followed():
    """An index that is not the top-k of the affinity (e.g. routed on another layer's features)."""
    batch, h, w, heads, d, dv, s, topk = 2, 6, 6, 2, 4, 3, 3, 3
    q, k, v = _inputs(batch, h, w, heads, d, dv, torch.float64, seed=13)
    g = torch.Generator().manual_seed(2)
    index = torch.stack([torch.stack([torch.randperm(s * s, generator=g)[:topk] for _ in range(s * s)]) for _ in range(batch)])
    got = routed_attention(q, k, v, s, topk, index=index)
    want = routed_attention_oracle(q, k, v, s, topk, routes=index.tolist())
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        assert _rel(a, b) <= 1e-12
    assert _rel(got, want) <= 1e-12
    assert index.tolist() != route_regions(q, k, s, topk).tolist()  # the test is not vacuous


def test_large_logits_stay_finite():
    q, k, v = (t.detach() * 30 for t in _inputs(1, 4, 4, 2, 8, 8, torch.float32, seed=14))
    out = routed_attention(q, k, v, 2, 2, scale=1.0)
    assert torch.isfinite(out).all()
    assert _rel(out, routed_attention_oracle(q, k, v, 2, 2, scale=1.0)) <= 1e-5


def test_public_function_equals_reference_and_counts_math_flops():
    q, k, v = (t.detach() for t in _inputs(2, 6, 8, 4, 8, 6, torch.float32, seed=15))
    with count_op_flops() as records:
        out = routed_attention(q, k, v, 2, 3)
        routed_attention(q, k, v, 2, 3, index=route_regions(q, k, 2, 3))
    torch.testing.assert_close(out, routed_attention_reference(q, k, v, 2, 3), rtol=0, atol=0)
    assert [r.op for r in records] == ["routed_attention"] * 2
    params = RoutedParams((6, 8), 2, 3)
    # every one of the 48 queries sees 3 regions of 3x4 tokens: q.k over 8, p.v over 6 channels
    attention = 2 * 2 * 4 * 48 * 3 * 12 * (8 + 6)
    routing = 2 * 2 * 4 * 4 * (4 * 8)  # (S*S)^2 affinities over heads * head_dim, when the op routes
    assert records[0].math == routed_attention_flops(params, 2, 4, 8, 6) == attention + routing
    assert records[1].math == attention


def test_dispatch():
    assert routed_attention_op.backends == ("reference", "triton")  # triton refuses CPU inputs (below)
    q = torch.randn(1, 2, 2, 1, 4)
    with pytest.raises(BackendUnavailableError, match="triton"):
        routed_attention(q, q, q, 1, 1, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        routed_attention(q, q, q, 1, 1, backend="cuda")


def _index(rows):
    return torch.tensor(rows)[None]


@pytest.mark.parametrize("make,match", [
    (lambda q: dict(q=q[0]), "q must be \\[batch, H, W, heads, head_dim\\]"),
    (lambda q: dict(q=q.long(), k=q.long(), v=q.long()), "q must be a floating point"),
    (lambda q: dict(k=q[:, :, :2]), "k must have the shape of q"),
    (lambda q: dict(v=q[:, :2]), "v must be \\[batch, H, W, heads, v_dim\\]"),
    (lambda q: dict(k=q.double()), "k must have the dtype of q"),
    (lambda q: dict(v=q.double()), "v must have the dtype of q"),
    (lambda q: dict(q=[1.0]), "q must be a torch.Tensor"),
    (lambda q: dict(q=q[:, :0], k=q[:, :0], v=q[:, :0]), "every dim but the batch >= 1"),
    (lambda q: dict(num_regions=0), "num_regions must be an int >= 1"),
    (lambda q: dict(num_regions=3), "multiple of num_regions \\(3\\)"),
    (lambda q: dict(topk=0), "topk must be an int in \\[1, num_regions\\*\\*2 = 4\\]"),
    (lambda q: dict(topk=5), "topk must be an int in \\[1, num_regions\\*\\*2 = 4\\]"),
    (lambda q: dict(topk=-2), "full attention"),
    (lambda q: dict(scale=float("nan")), "scale"),
    (lambda q: dict(index=_index([[0, 1]] * 4).float()), "index must be an int64 or int32"),
    (lambda q: dict(index=_index([[0, 1, 2]] * 4)), "index must be \\[batch, num_regions\\*\\*2, topk\\]"),
    (lambda q: dict(index=_index([[0, 4]] * 4)), "region ids in \\[0, num_regions\\*\\*2 = 4\\)"),
    (lambda q: dict(index=_index([[0, -1]] * 4)), "region ids in \\[0, num_regions\\*\\*2 = 4\\)"),
    (lambda q: dict(index=_index([[1, 1]] * 4)), "distinct regions"),
    (lambda q: dict(index=[[0, 1]] * 4), "index must be None or a torch.Tensor"),
])
def test_bad_inputs_are_named(make, match):
    q = torch.randn(1, 4, 6, 2, 4)
    args = dict(q=q, k=q, v=q, num_regions=2, topk=2, scale=None, index=None)
    args.update(make(q))
    with pytest.raises(ValueError, match=match):
        routed_attention(**args)


def test_route_regions_bad_inputs_are_named():
    q = torch.randn(1, 4, 4, 2, 4)
    with pytest.raises(ValueError, match="topk"):
        route_regions(q, q, 2, 5)
    with pytest.raises(ValueError, match="k must have the shape"):
        route_regions(q, q[..., :2], 2, 1)


@pytest.mark.parametrize("shape", [(2, 14, 14, 2, 8, 8, 7, 1), (1, 14, 7, 4, 8, 8, 7, 16), (1, 8, 12, 2, 4, 4, 4, 5)])
def test_equals_the_authors_legacy_gather_path(shape):
    """The authors' bra_legacy.py computation (re-implemented in attnzoo.tools.bench_routed: window
    partition, routing on scaled region means, gather of topk k/v copies, explicit scores)."""
    from attnzoo.tools.bench_routed import legacy_routed_core

    batch, h, w, heads, d, dv, s, topk = shape
    q, k, v = _inputs(batch, h, w, heads, d, dv, torch.float64, seed=16)
    scale = (heads * d) ** -0.5  # BiFormer's scale: the full qk width
    got = routed_attention(q, k, v, s, topk, scale=scale)
    want = legacy_routed_core(q, k, v, s, topk, scale)
    assert _rel(got, want) <= 1e-12
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        assert _rel(a, b) <= 1e-12


def test_explicit_index_traces_without_reading_its_values():
    """Only dtype, shape and device of a given index are checked inside a trace or on the meta
    device (its values are checked in eager CPU calls): compile has no graph break, meta works."""
    q, k, v = (t.detach() for t in _inputs(2, 8, 8, 2, 16, 16, torch.float32, seed=4))
    index = route_regions(q, k, 2, 2)

    def run(q, k, v, index):
        return routed_attention(q, k, v, 2, 2, index=index)

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v, index), run(q, k, v, index), rtol=1e-6, atol=1e-6)
    meta = [t.to("meta") for t in (q, k, v, index)]
    assert run(*meta).shape == v.shape


def test_empty_batch_returns_empty():
    q, k, v = (t.detach()[:0] for t in _inputs(2, 8, 8, 2, 16, 16, torch.float32, seed=4))
    assert routed_attention(q, k, v, 2, 2).shape == v.shape
