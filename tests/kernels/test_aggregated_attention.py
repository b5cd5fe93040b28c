"""aggregated_attention / length_scaled_attention against a brute-force oracle
(``aggregated_attention_oracle.py``) and against the authors' tensor formulation.

Every comparison checks the output and the gradients of every tensor input (q, k, v, k_pool,
v_pool and the small parameter tensors) with a relative error ``||got - want|| / ||want||``
bounded per dtype. Low-precision inputs are compared against the oracle run on the same inputs
upcast to float64, so the bound measures the op, not the rounding of its inputs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.kernels import BackendUnavailableError, count_op_flops
from attnzoo.kernels.aggregated_attention import (
    AggregatedParams, aggregated_attention, aggregated_attention_flops, aggregated_attention_op, aggregated_attention_reference,
    length_scaled_attention, local_window_mask,
)

from .aggregated_attention_oracle import aggregated_attention_oracle

# (output, gradients) relative-error bounds. The reference accumulates in float32 (float64 stays
# float64). Measured maxima over CASES x 3 seeds (output / worst gradient): fp64 2.6e-16 / 5.4e-15,
# fp32 1.5e-7 / 2.3e-6, fp16 2.3e-4 / 4.3e-4, bf16 2.1e-3 / 3.4e-3; the bounds keep a >= 8x margin.
REL_TOL = {
    torch.float64: (1e-13, 1e-13),
    torch.float32: (2e-6, 2e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3e-2),
}

NAMES = ("q", "k", "v", "k_pool", "v_pool", "query_embedding", "temperature", "pool_bias", "local_bias",
         "learnable_tokens", "learnable_bias")

# (batch, H, W, heads, head_dim, v_dim, P, window_size)
CASES = [
    (2, 4, 5, 2, 4, 4, 3, 3),  # H != W, every position near a border
    (1, 7, 3, 1, 8, 8, 1, 3),  # one pooled token
    (1, 1, 1, 2, 4, 4, 2, 3),  # a single position: only the centre slot is inside
    (1, 6, 5, 2, 4, 6, 4, 5),  # window 5, v_dim != head_dim
    (1, 3, 4, 1, 2, 2, 5, 1),  # window 1 (centre only)
    (1, 2, 3, 3, 4, 4, 6, 7),  # window larger than the map
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_inputs(batch, height, width, heads, head_dim, v_dim, pool, window, dtype=torch.float32, seed=0):
    """Every tensor input, seeded; the small tensors at the scales a trained model reaches (the
    learnable tokens and biases are not zero, so their terms matter)."""
    g = torch.Generator().manual_seed(seed)
    L = window * window

    def r(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(dtype).requires_grad_()

    return dict(
        q=r(batch, height, width, heads, head_dim), k=r(batch, height, width, heads, head_dim),
        v=r(batch, height, width, heads, v_dim), k_pool=r(batch, pool, heads, head_dim),
        v_pool=r(batch, pool, heads, v_dim), query_embedding=r(heads, head_dim, std=0.3),
        temperature=r(heads, std=0.5), pool_bias=r(heads, height * width, pool, std=0.5),
        local_bias=r(heads, L, std=0.5), learnable_tokens=r(heads, head_dim, L, std=0.3),
        learnable_bias=r(heads, L, std=0.3),
    )


def _op(inputs, window):
    i = inputs
    return aggregated_attention(
        i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
        temperature=i["temperature"], pool_bias=i["pool_bias"], local_bias=i["local_bias"],
        learnable_tokens=i["learnable_tokens"], learnable_bias=i["learnable_bias"], window_size=window,
        backend="reference",
    )


def _oracle(inputs, window):
    return aggregated_attention_oracle(**inputs, window_size=window)


@pytest.mark.parametrize("dtype", list(REL_TOL))
@pytest.mark.parametrize("case", CASES)
def test_matches_the_oracle_outputs_and_gradients(case, dtype):
    window = case[-1]
    inputs = make_inputs(*case, dtype=dtype, seed=sum(case))
    out = _op(inputs, window)
    assert out.shape == (*case[:4], case[5]) and out.dtype == dtype
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, [inputs[n] for n in NAMES], grad)

    inputs64 = {n: t.detach().double().requires_grad_() for n, t in inputs.items()}
    want_out = _oracle(inputs64, window)
    want = torch.autograd.grad(want_out, [inputs64[n] for n in NAMES], grad.double())
    out_tol, grad_tol = REL_TOL[dtype]
    assert _rel(out, want_out) <= out_tol
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == dtype, name
        assert _rel(a, b) <= grad_tol, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_length_scaled_attention_matches_the_oracle(dtype):
    """Stage-4 full attention: no local branch, every position is a key, scale log(H * W)."""
    b, h, w, heads, d = 2, 3, 5, 2, 4
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, h, w, heads, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    qe = (0.3 * torch.randn(heads, d, generator=g)).to(dtype).requires_grad_()
    temp = torch.randn(heads, generator=g).to(dtype).requires_grad_()
    bias = torch.randn(heads, h * w, h * w, generator=g).to(dtype).requires_grad_()
    out = length_scaled_attention(q, k, v, query_embedding=qe, temperature=temp, bias=bias)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    got = torch.autograd.grad(out, (q, k, v, qe, temp, bias), grad)

    x64 = [t.detach().double().requires_grad_() for t in (q, k, v, qe, temp, bias)]
    want_out = aggregated_attention_oracle(x64[0], None, None, x64[1].flatten(1, 2), x64[2].flatten(1, 2), x64[3], x64[4],
                                           pool_bias=x64[5], window_size=None)
    want = torch.autograd.grad(want_out, x64, grad.double())
    out_tol, grad_tol = REL_TOL[dtype]
    assert _rel(out, want_out) <= out_tol
    for name, a, c in zip(("q", "k", "v", "query_embedding", "temperature", "bias"), got, want):
        assert _rel(a, c) <= grad_tol, name


def test_optional_tensors_default_to_zero():
    inputs = {n: t.detach() for n, t in make_inputs(1, 3, 4, 2, 4, 4, 2, 3, seed=3).items()}
    zeros = {n: torch.zeros_like(inputs[n]) for n in ("pool_bias", "local_bias", "learnable_tokens", "learnable_bias")}
    full = _op({**inputs, **zeros}, 3)
    bare = aggregated_attention(inputs["q"], inputs["k"], inputs["v"], inputs["k_pool"], inputs["v_pool"],
                                query_embedding=inputs["query_embedding"], temperature=inputs["temperature"])
    torch.testing.assert_close(bare, full, rtol=0, atol=0)


def test_border_slots_are_masked_not_zero_keys():
    """A masked slot must not take softmax mass: changing what lies beyond the border (here by
    cropping a bigger map) must not change a corner query that only sees inside positions."""
    big = {n: t.detach() for n, t in make_inputs(1, 5, 5, 1, 4, 4, 2, 3, seed=4).items()}
    crop = dict(big)
    for n in ("q", "k", "v"):
        crop[n] = big[n][:, 1:, 1:].contiguous()
    crop["pool_bias"] = big["pool_bias"].reshape(1, 5, 5, 2)[:, 1:, 1:].reshape(1, 16, 2)
    out_big, out_crop = _op(big, 3), _op(crop, 3)
    # interior queries of the crop see the same neighbours as in the big map, but their length
    # scale log(9 + P) is the same too: equal outputs. Corner (0, 0) of the crop is an interior
    # position of the big map with a different neighbourhood and scale: it must differ.
    torch.testing.assert_close(out_crop[:, 1:3, 1:3], out_big[:, 2:4, 2:4], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out_crop[:, 0, 0], out_big[:, 1, 1])
    mask = local_window_mask(2, 3, 3)
    assert mask.shape == (2, 3, 9) and mask.sum().item() == 4 * 4 + 2 * 6  # corners see 4, edge-middles 6


def _authors_formulation(i, window):
    """The same math as the authors' attention_native.AggregatedAttention computes it after the
    projections ([B, heads, N, d] layout, nn.Unfold windows, padding mask, one softmax)."""
    q, k, v, kp, vp = i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"]
    b, h, w, heads, d = q.shape
    n, L, P = h * w, window * window, kp.shape[1]
    ones = F.unfold(torch.ones(1, 1, h, w, dtype=q.dtype), window, padding=window // 2)
    seq_scale = torch.log(ones.sum(-2).squeeze(0).unsqueeze(-1) + P)  # [N, 1]
    padding_mask = (ones.squeeze(0).permute(1, 0)) == 0  # [N, L]
    q_norm = F.normalize(q.reshape(b, n, heads, d).permute(0, 2, 1, 3), dim=-1)
    q_scaled = (q_norm + i["query_embedding"][:, None]) * F.softplus(i["temperature"])[:, None, None] * seq_scale
    k_norm = F.normalize(k, dim=-1).reshape(b, n, heads * d)
    kv = torch.cat([k_norm, v.reshape(b, n, heads * d)], dim=-1).permute(0, 2, 1).reshape(b, -1, h, w)
    k_loc, v_loc = F.unfold(kv, window, padding=window // 2).reshape(b, 2 * heads, d, L, n).permute(0, 1, 4, 2, 3).chunk(2, dim=1)
    attn_local = ((q_scaled.unsqueeze(-2) @ k_loc).squeeze(-2) + i["local_bias"].unsqueeze(1)).masked_fill(padding_mask, float("-inf"))
    attn_pool = q_scaled @ F.normalize(kp.permute(0, 2, 1, 3), dim=-1).transpose(-2, -1) + i["pool_bias"]
    attn = torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1)
    a_loc, a_pool = attn.split([L, P], dim=-1)
    x_local = ((q_norm @ i["learnable_tokens"] + i["learnable_bias"][:, None] + a_loc).unsqueeze(-2) @ v_loc.transpose(-2, -1)).squeeze(-2)
    x = x_local + a_pool @ vp.permute(0, 2, 1, 3)
    return x.permute(0, 2, 1, 3).reshape(b, h, w, heads, d)


@pytest.mark.parametrize("window", [3, 5])
def test_equals_the_authors_tensor_formulation(window):
    """Pins the slot order (row-major over the window, as nn.Unfold) and the masking convention."""
    i = {n: t.detach().double() for n, t in make_inputs(2, 5, 6, 2, 4, 4, 3, window, seed=5).items()}
    torch.testing.assert_close(_op(i, window), _authors_formulation(i, window), rtol=1e-12, atol=1e-12)


def test_public_function_equals_reference_and_counts_math_flops():
    i = {n: t.detach() for n, t in make_inputs(2, 3, 5, 2, 4, 6, 4, 3, seed=6).items()}
    with count_op_flops() as records:
        out = aggregated_attention(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                                   temperature=i["temperature"], pool_bias=i["pool_bias"], local_bias=i["local_bias"],
                                   learnable_tokens=i["learnable_tokens"], learnable_bias=i["learnable_bias"])
        length_scaled_attention(i["q"], i["k"], i["k"], query_embedding=i["query_embedding"], temperature=i["temperature"])
    ref = aggregated_attention_reference(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                                         temperature=i["temperature"], pool_bias=i["pool_bias"], local_bias=i["local_bias"],
                                         learnable_tokens=i["learnable_tokens"], learnable_bias=i["learnable_bias"])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert [r.op for r in records] == ["aggregated_attention"] * 2
    # per query and head: 9 slots x (4 + 4 + 6) + 4 pooled x (4 + 6); full: 15 keys x (4 + 4)
    assert records[0].math == 2 * 2 * 2 * 15 * (9 * 14 + 4 * 10)
    assert records[1].math == 2 * 2 * 2 * 15 * (15 * 8)
    assert records[0].math == aggregated_attention_flops(AggregatedParams((3, 5), 3, 4), 2, 2, 4, 6)


def test_dispatch():
    assert aggregated_attention_op.backends == ("reference", "triton")  # triton refuses CPU inputs (below)
    i = {n: t.detach() for n, t in make_inputs(1, 2, 2, 1, 2, 2, 1, 3).items()}
    with pytest.raises(BackendUnavailableError, match="triton"):
        aggregated_attention(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                             temperature=i["temperature"], backend="triton")
    with pytest.raises(ValueError, match="backend"):
        length_scaled_attention(i["q"], i["k"], i["v"], query_embedding=i["query_embedding"],
                                temperature=i["temperature"], backend="cuda")


def _bad(**changes):
    i = {n: t.detach() for n, t in make_inputs(1, 3, 4, 2, 4, 4, 2, 3).items()}
    i.update(changes.pop("inputs", {}))
    window = changes.pop("window_size", 3)
    return lambda: aggregated_attention(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                                        temperature=i["temperature"], pool_bias=i["pool_bias"], local_bias=i["local_bias"],
                                        learnable_tokens=i["learnable_tokens"], learnable_bias=i["learnable_bias"],
                                        window_size=window)


@pytest.mark.parametrize("call,match", [
    (_bad(window_size=2), "window_size must be"),
    (_bad(window_size=0), "window_size must be"),
    (_bad(window_size=None), "window_size must be"),
    (_bad(window_size=True), "window_size must be"),
    (_bad(inputs=dict(q=torch.randn(3, 4, 2, 4))), r"q must be \[batch, H, W, heads, head_dim\]"),
    (_bad(inputs=dict(q=torch.zeros(1, 3, 4, 2, 4, dtype=torch.long))), "q must be a floating point"),
    (_bad(inputs=dict(k=torch.randn(1, 3, 3, 2, 4))), "k must be"),
    (_bad(inputs=dict(v=torch.randn(1, 3, 4, 2, 5))), "v must be"),
    (_bad(inputs=dict(k_pool=torch.randn(1, 2, 2, 3))), "k_pool must be"),
    (_bad(inputs=dict(k_pool=torch.randn(1, 0, 2, 4))), "k_pool must be"),
    (_bad(inputs=dict(v_pool=torch.randn(1, 3, 2, 4))), "v_pool must be"),
    (_bad(inputs=dict(pool_bias=torch.randn(2, 11, 2))), r"pool_bias must be \[heads, H \* W, P\]"),
    (_bad(inputs=dict(local_bias=torch.randn(2, 8))), "local_bias must be"),
    (_bad(inputs=dict(learnable_tokens=torch.randn(2, 9, 4))), "learnable_tokens must be"),
    (_bad(inputs=dict(learnable_bias=torch.randn(2, 1, 9))), "learnable_bias must be"),
    (_bad(inputs=dict(query_embedding=torch.randn(2, 1, 4))), "query_embedding must be"),
    (_bad(inputs=dict(temperature=torch.randn(2, 1, 1))), "temperature must be"),
    (_bad(inputs=dict(k=torch.randn(1, 3, 4, 2, 4).double())), "k must have the dtype of q"),
    (_bad(inputs=dict(temperature=[1.0, 2.0])), "temperature must be a torch.Tensor"),
    (_bad(inputs=dict(k=None)), "k and v"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_length_scaled_attention_bad_inputs():
    q = torch.randn(1, 2, 3, 2, 4)
    qe, t = torch.randn(2, 4), torch.randn(2)
    with pytest.raises(ValueError, match="k must be"):
        length_scaled_attention(q, q[:, :1], q, query_embedding=qe, temperature=t)
    with pytest.raises(ValueError, match="pool_bias must be"):
        length_scaled_attention(q, q, q, query_embedding=qe, temperature=t, bias=torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match="v must be a torch.Tensor"):
        length_scaled_attention(q, q, None, query_embedding=qe, temperature=t)
    with pytest.raises(ValueError, match="must be None when window_size is None"):
        aggregated_attention_reference(q, q, q, q.flatten(1, 2), q.flatten(1, 2), query_embedding=qe, temperature=t,
                                       window_size=None)
