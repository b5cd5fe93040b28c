"""dense_attention against a brute-force loop oracle (``dense_oracle.py``) and against gna with a
kernel covering the whole input.

Every comparison checks the output and the gradients of q, k and v with a relative error
``||got - want|| / ||want||`` bounded per dtype. Low-precision inputs are compared against the
oracle run on the same inputs upcast to float64, so the bound measures the op, not the rounding
of its inputs.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch

from attnzoo.kernels import BackendUnavailableError, count_op_flops, gna
from attnzoo.kernels.dense import dense_attention, dense_flops, dense_op, dense_reference

from .dense_oracle import dense_oracle

# (output, gradients) relative-error bounds. The reference computes float16 / bfloat16 / float32
# inputs in float32 and float64 inputs in float64. Measured maxima (output / gradients) over 500
# random cases: fp64 5e-16 / 4e-15, fp32 3.1e-7 / 5.9e-7, fp16 2.5e-4 / 3.7e-4, bf16 2.5e-3 / 3.1e-3;
# the bounds keep a ~5x margin.
REL_TOL = {
    torch.float64: (1e-12, 1e-11),
    torch.float32: (2e-6, 3e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

MAX_TOKENS = 40  # the oracle loops over every query in Python


@dataclass(frozen=True)
class Case:
    q_spatial: Tuple[int, ...]
    k_spatial: Tuple[int, ...]
    batch: int = 2
    heads: int = 2
    head_dim: int = 8
    v_dim: int = 8


def _spatial(rng: random.Random) -> Tuple[int, ...]:
    while True:
        shape = tuple(rng.randint(1, 7) for _ in range(rng.randint(1, 3)))
        if math.prod(shape) <= MAX_TOKENS:
            return shape


def random_case(rng: random.Random) -> Case:
    q_spatial = _spatial(rng)
    return Case(
        q_spatial,
        q_spatial if rng.random() < 0.5 else _spatial(rng),  # self- or cross-attention
        batch=rng.randint(1, 2),
        heads=rng.randint(1, 3),
        head_dim=rng.randint(1, 16),
        v_dim=rng.randint(1, 16),
    )


def make_inputs(case: Case, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    b, h = case.batch, case.heads
    q = torch.randn(b, *case.q_spatial, h, case.head_dim).to(dtype)
    k = torch.randn(b, *case.k_spatial, h, case.head_dim).to(dtype)
    v = torch.randn(b, *case.k_spatial, h, case.v_dim).to(dtype)
    grad_out = torch.randn(b, *case.q_spatial, h, case.v_dim).to(dtype)
    return q, k, v, grad_out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||``; the absolute error where ``want`` is exactly zero (the q and k
    gradients when there is a single key)."""
    diff = (got.double() - want.double()).norm()
    scale = want.double().norm()
    return (diff / scale if scale > 0 else diff).item()


def check_against_oracle(case: Case, dtype: torch.dtype, seed: int, scale: Optional[float] = None) -> None:
    """Output and input gradients against the float64 oracle on the same inputs. Each error must be
    within the dtype's bound, or else within twice the error of the oracle itself run in float32:
    a gradient can be small next to the terms that cancel in it, and no float32 computation gets
    it closer."""
    q, k, v, grad_out = make_inputs(case, dtype, seed)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = dense_attention(q, k, v, scale=scale)
    assert out.dtype == dtype and out.shape == q.shape[:-1] + v.shape[-1:]
    got = [out, *torch.autograd.grad(out, inputs, grad_out)]

    def oracle(compute_dtype):
        leaves = [t.detach().to(compute_dtype).requires_grad_() for t in inputs]
        want = dense_oracle(*leaves, scale=scale, dtype=compute_dtype)
        return [want, *torch.autograd.grad(want, leaves, grad_out.to(compute_dtype))]

    names = ["out", "dq", "dk", "dv"]
    want = oracle(torch.float64)
    out_tol, grad_tol = REL_TOL[dtype]
    errors = {n: rel_error(g, w) for n, g, w in zip(names, got, want)}
    limits = {n: out_tol if n == "out" else grad_tol for n in names}
    if dtype != torch.float64 and any(errors[n] > limits[n] for n in names):
        float32_errors = [rel_error(g, w) for g, w in zip(oracle(torch.float32), want)]
        limits = {n: max(limits[n], 2 * e) for n, e in zip(names, float32_errors)}
    bad = {n: f"{errors[n]:.2e} > {limits[n]:.2e}" for n in names if not errors[n] <= limits[n]}
    assert not bad, f"{case} {dtype}: relative error too large: {bad}"


# --- seeded random sweep -------------------------------------------------------------------------

SWEEP = [(seed, torch.float32) for seed in range(30)] + [
    (seed, dtype)
    for dtype, first in ((torch.float64, 1000), (torch.float16, 2000), (torch.bfloat16, 3000))
    for seed in range(first, first + 8)
]


@pytest.mark.parametrize("seed,dtype", SWEEP, ids=[f"{str(d).split('.')[-1]}-seed{s}" for s, d in SWEEP])
def test_random_sweep(seed, dtype):
    check_against_oracle(random_case(random.Random(seed)), dtype, seed)


NAMED = {
    "shvit-7x7-qk16-v68": Case((7, 7), (7, 7), batch=2, heads=1, head_dim=16, v_dim=68),
    "single-token": Case((1,), (1,), heads=1),
    "single-key-many-queries": Case((3, 5), (1,), head_dim=4, v_dim=3),
    "pooled-keys-2d-to-1d": Case((6, 5), (7,), heads=3, head_dim=5, v_dim=9),
    "3d-self": Case((2, 3, 4), (2, 3, 4), head_dim=3, v_dim=2),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_case(name):
    check_against_oracle(NAMED[name], torch.float32, seed=7)


@pytest.mark.extended
@pytest.mark.parametrize("seed", range(100, 400))
def test_random_sweep_extended(seed):
    dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][seed % 4]
    check_against_oracle(random_case(random.Random(seed)), dtype, seed)


# --- properties ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", [(9,), (4, 6), (2, 3, 4)])
def test_equals_gna_with_a_kernel_covering_the_input(spatial):
    """gna with kernel_size == spatial size is global attention: an independent implementation."""
    torch.manual_seed(0)
    q, k = (torch.randn(2, *spatial, 3, 4, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, *spatial, 3, 6, dtype=torch.float64)
    assert rel_error(dense_attention(q, k, v), gna(q, k, v, kernel_size=spatial)) <= 1e-6


def test_keys_are_a_set():
    """Permuting the keys (and their values) together leaves the output unchanged."""
    q, k, v, _ = make_inputs(Case((5, 4), (13,)), torch.float64, seed=1)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dense_attention(q, k[:, perm], v[:, perm]), dense_attention(q, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [0.37, 2.0, 1])
def test_custom_scale(scale):
    case = Case((4, 5), (6,), head_dim=5)
    check_against_oracle(case, torch.float32, seed=3, scale=scale)
    q, k, v, _ = make_inputs(case, torch.float32, seed=3)
    assert not torch.allclose(dense_attention(q, k, v, scale=scale), dense_attention(q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_and_grad_dtype(dtype):
    q, k, v, grad_out = make_inputs(Case((6, 5), (6, 5), v_dim=3), dtype, seed=0)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = dense_attention(q, k, v)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in torch.autograd.grad(out, inputs, grad_out))


@pytest.mark.parametrize("layout", ["packed-qkv", "permuted", "expanded-batch"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(0)
    if layout == "packed-qkv":  # slices of one projection, as the SHViT mixer produces them
        q, k, v = torch.randn(2, 5, 7, 1, 16 + 16 + 24).split([16, 16, 24], dim=-1)
    elif layout == "permuted":
        q, k, v = (torch.randn(2, 7, 5, 8, 2).permute(0, 2, 1, 4, 3) for _ in range(3))
    else:
        q, k, v = (torch.randn(1, 5, 7, 2, 8).expand(3, -1, -1, -1, -1) for _ in range(3))
    assert not q.is_contiguous()
    want = dense_attention(q.contiguous(), k.contiguous(), v.contiguous())
    torch.testing.assert_close(dense_attention(q, k, v), want, rtol=1e-6, atol=1e-6)


def test_reference_is_the_dispatched_backend_and_triton_is_refused_by_name():
    q, k, v, _ = make_inputs(Case((3, 4), (3, 4)), torch.float32, seed=0)
    assert dense_op.backends == ("reference",)
    torch.testing.assert_close(dense_attention(q, k, v, backend="reference"), dense_reference(q, k, v), rtol=0, atol=0)
    with pytest.raises(BackendUnavailableError, match="dense"):
        dense_attention(q, k, v, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        dense_attention(q, k, v, backend="cuda")


# --- bad input -----------------------------------------------------------------------------------

def _qkv():
    return torch.randn(2, 6, 5, 3, 4), torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 5)


BAD_CALLS = {
    # (the argument the message must start with, the call)
    "q-not-a-tensor": ("q", lambda q, k, v: dense_attention(q.tolist(), k, v)),
    "q-3-dims": ("q", lambda q, k, v: dense_attention(q[:, 0, 0], k, v)),
    "q-7-dims": ("q", lambda q, k, v: dense_attention(q[:, :, :, None, None], k, v)),
    "q-integer": ("q", lambda q, k, v: dense_attention(q.long(), k.long(), v.long())),
    "k-3-dims": ("k", lambda q, k, v: dense_attention(q, k[:, 0], v[:, 0])),
    "k-batch": ("k", lambda q, k, v: dense_attention(q, k[:1], v[:1])),
    "k-heads": ("k", lambda q, k, v: dense_attention(q, k[..., :2, :], v[..., :2, :])),
    "k-head-dim": ("k", lambda q, k, v: dense_attention(q, k[..., :3], v)),
    "v-tokens": ("v", lambda q, k, v: dense_attention(q, k, v[:, :-1])),
    "v-heads": ("v", lambda q, k, v: dense_attention(q, k, v[..., :2, :])),
    "v-rank": ("v", lambda q, k, v: dense_attention(q, k, v[:, :, None])),
    "k-dtype": ("k", lambda q, k, v: dense_attention(q, k.double(), v)),
    "v-dtype": ("v", lambda q, k, v: dense_attention(q, k, v.half())),
    "k-device": ("k", lambda q, k, v: dense_attention(q, k.to("meta"), v)),
    "v-device": ("v", lambda q, k, v: dense_attention(q, k, v.to("meta"))),
    "empty-queries": ("spatial sizes, heads and head dims", lambda q, k, v: dense_attention(q[:, :0], k, v)),
    "empty-keys": ("spatial sizes, heads and head dims", lambda q, k, v: dense_attention(q, k[:, :0], v[:, :0])),
    "empty-head-dim": ("spatial sizes, heads and head dims", lambda q, k, v: dense_attention(q[..., :0], k[..., :0], v)),
    "empty-v-dim": ("spatial sizes, heads and head dims", lambda q, k, v: dense_attention(q, k, v[..., :0])),
    "scale-nan": ("scale", lambda q, k, v: dense_attention(q, k, v, scale=float("nan"))),
    "scale-inf": ("scale", lambda q, k, v: dense_attention(q, k, v, scale=float("inf"))),
    "scale-bool": ("scale", lambda q, k, v: dense_attention(q, k, v, scale=True)),
    "scale-str": ("scale", lambda q, k, v: dense_attention(q, k, v, scale="0.5")),
    "scale-tensor": ("scale", lambda q, k, v: dense_attention(q, k, v, scale=torch.tensor(0.5))),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises(name):
    argument, call = BAD_CALLS[name]
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=f"^{argument}"):
        call(*_qkv())


# --- FLOPs ---------------------------------------------------------------------------------------

def test_count_op_flops_records_dense():
    case = Case((5, 4), (7,), batch=3, heads=2, head_dim=8, v_dim=5)
    q, k, v, _ = make_inputs(case, torch.float32, seed=0)
    with count_op_flops() as records:
        dense_attention(q, k, v)
    (record,) = records
    assert record.op == "dense"
    assert record.math == dense_flops(3, 2, 20, 7, 8, 5) == 2 * 3 * 2 * 20 * 7 * (8 + 5)
    assert record.executed > 0
    dense_attention(q, k, v)  # outside the block: nothing recorded
    assert len(records) == 1
