"""gna against a brute-force dense oracle (``gna_oracle.py``), and against NATTEN when installed.

Every comparison checks the output and the gradients of q, k, v (and rpb) with a relative error
``||got - want|| / ||want||`` bounded per dtype. Low-precision inputs are compared against the
oracle run on the same inputs upcast to float64, so the bound measures the op, not the rounding
of its inputs.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.kernels import count_op_flops, gna
from attnzoo.kernels.gna import GNAParams, gna_flops
from attnzoo.kernels.gna.reference import attended_pairs

from .gna_oracle import attended_pair_count, gna_oracle, neighborhood

# (output, gradients) relative-error bounds. The reference computes in float32 whatever the input
# dtype, so float64 inputs get float32 accuracy: ~1e-7 on outputs, while the softmax backward
# (p * (dp - <p, dp>)) cancels and reaches a few 1e-6 on small cases. Measured maxima over ~1,100
# cases: fp32/fp64 grads 2e-6, fp16 4e-4, bf16 3e-3; the bounds keep a ~5x margin.
REL_TOL = {
    torch.float64: (1e-6, 1e-5),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

MAX_TOKENS = 300  # the oracle is quadratic in the number of positions


@dataclass(frozen=True)
class Case:
    spatial: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]
    batch: int = 2
    heads: int = 2
    head_dim: int = 8
    v_dim: int = 8
    rpb: bool = True

    @property
    def pattern(self) -> tuple:
        return (self.kernel_size, self.stride, self.dilation, self.is_causal)

    @property
    def params(self) -> GNAParams:
        return GNAParams(self.spatial, self.kernel_size, self.stride, self.dilation, self.is_causal)


def random_case(rng: random.Random, rank: int) -> Case:
    """A valid case with at most MAX_TOKENS positions: sizes from kernel * dilation to a few more."""
    while True:
        axes = []
        for _ in range(rank):
            ks = rng.randint(1, 5)
            st_ = rng.randint(1, ks)
            dl = rng.randint(1, 3)
            size = ks * dl + rng.randint(0, 3 if rank > 1 else 12)
            axes.append((size, ks, st_, dl, rng.random() < 0.3))
        if math.prod(a[0] for a in axes) <= MAX_TOKENS:
            break
    spatial, kernel_size, stride, dilation, is_causal = (tuple(x) for x in zip(*axes))
    head_dim = rng.randint(1, 8)
    return Case(
        spatial, kernel_size, stride, dilation, is_causal,
        batch=rng.randint(1, 2),
        heads=rng.randint(1, 3),
        head_dim=head_dim,
        v_dim=head_dim if rng.random() < 0.5 else rng.randint(1, 8),
        rpb=rng.random() < 0.5,
    )


def make_inputs(case: Case, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    b, h = case.batch, case.heads
    q = torch.randn(b, *case.spatial, h, case.head_dim).to(dtype)
    k = torch.randn(b, *case.spatial, h, case.head_dim).to(dtype)
    v = torch.randn(b, *case.spatial, h, case.v_dim).to(dtype)
    rpb = torch.randn(h, *(2 * ks - 1 for ks in case.kernel_size)).to(dtype) if case.rpb else None
    grad_out = torch.randn(b, *case.spatial, h, case.v_dim).to(dtype)
    return q, k, v, rpb, grad_out


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||``; the absolute error ``||got||`` where ``want`` is exactly
    zero (the q / k / rpb gradients of a query that sees one key, e.g. kernel 1)."""
    diff = (got.double() - want).norm()
    scale = want.norm()
    return (diff / scale if scale > 0 else diff).item()


def check_against_oracle(case: Case, dtype: torch.dtype, seed: int, scale: Optional[float] = None) -> None:
    """gna's output and input gradients against the float64 oracle on the same inputs.

    Each error must be within the dtype's bound, or else within twice the error of dense float32
    attention (the oracle run in float32) on the same inputs: on tiny cases a gradient can be
    small next to the terms that cancel in it, and no float32 computation gets it closer.
    """
    q, k, v, rpb, grad_out = make_inputs(case, dtype, seed)
    names = ["out", "dq", "dk", "dv"] + (["drpb"] if rpb is not None else [])
    inputs = [t.requires_grad_() for t in (q, k, v, rpb) if t is not None]
    out = gna(q, k, v, *case.pattern, rpb=rpb, scale=scale)
    assert out.dtype == dtype and out.shape == v.shape
    got = [out, *torch.autograd.grad(out, inputs, grad_out)]

    def oracle(compute_dtype):
        leaves = [t.detach().to(compute_dtype).requires_grad_() for t in inputs]
        rpb_ = leaves[3] if rpb is not None else None
        want = gna_oracle(*leaves[:3], *case.pattern, rpb=rpb_, scale=scale, dtype=compute_dtype)
        return [want, *torch.autograd.grad(want, leaves, grad_out.to(compute_dtype))]

    want = oracle(torch.float64)
    out_tol, grad_tol = REL_TOL[dtype]
    errors = {n: rel_error(g, w) for n, g, w in zip(names, got, want)}
    limits = {n: out_tol if n == "out" else grad_tol for n in names}
    if any(errors[n] > limits[n] for n in names):
        float32_errors = [rel_error(g, w) for g, w in zip(oracle(torch.float32), want)]
        limits = {n: max(limits[n], 2 * e) for n, e in zip(names, float32_errors)}
    bad = {n: f"{errors[n]:.2e} > {limits[n]:.2e}" for n in names if not errors[n] <= limits[n]}
    assert not bad, f"{case} {dtype}: relative error too large: {bad}"


# --- seeded random sweep -------------------------------------------------------------------------

SWEEP = [(seed, torch.float32) for seed in range(60)] + [
    (seed, dtype)
    for dtype, first in ((torch.float64, 1000), (torch.float16, 2000), (torch.bfloat16, 3000))
    for seed in range(first, first + 15)
]


@pytest.mark.parametrize(
    "seed,dtype", SWEEP, ids=[f"{str(d).split('.')[-1]}-seed{s}" for s, d in SWEEP]
)
def test_random_sweep(seed, dtype):
    case = random_case(random.Random(seed), rank=1 + seed % 3)
    check_against_oracle(case, dtype, seed)


NAMED = {
    # blocked: stride == kernel (MaxViT block, window attention), sizes not multiples of the kernel
    "blocked-1d-10-k4": Case((10,), (4,), (4,), (1,), (False,)),
    "blocked-2d-8x7-k3": Case((8, 7), (3, 3), (3, 3), (1, 1), (False, False)),
    "blocked-2d-9x10-k3x5": Case((9, 10), (3, 5), (3, 5), (1, 1), (False, False), v_dim=5),
    # grid: kernel == stride, dilation = size / kernel (MaxViT grid)
    "grid-2d-12x8-g3x4": Case((12, 8), (3, 4), (3, 4), (4, 2), (False, False)),
    "grid-2d-9x9-g3": Case((9, 9), (3, 3), (3, 3), (3, 3), (False, False), heads=3),
    # dilation that does not divide the size: groups of different lengths
    "dilation-1d-11-d3": Case((11,), (3,), (1,), (3,), (False,)),
    "dilation-2d-10x7-d3x2": Case((10, 7), (3, 3), (1, 2), (3, 2), (False, False)),
    "dilation-1d-14-d3-k4-s2": Case((14,), (4,), (2,), (3,), (False,)),
    # causal with stride
    "causal-1d-13-k4-s3": Case((13,), (4,), (3,), (1,), (True,)),
    "causal-1d-17-k5-s2-d2": Case((17,), (5,), (2,), (2,), (True,)),
    "causal-2d-mixed": Case((9, 7), (3, 2), (2, 2), (2, 3), (True, False)),
    # 3-D with a trivial first axis kernel (video / volumetric window)
    "3d-k1x3x3": Case((3, 5, 6), (1, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)),
    "3d-k1x3x3-s-d-causal": Case((4, 5, 7), (1, 3, 3), (1, 2, 3), (2, 1, 2), (False, True, False)),
    # even kernels: the window has one more key on the left
    "even-2d-k2x4": Case((7, 9), (2, 4), (1, 3), (2, 1), (False, False)),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_case(name):
    check_against_oracle(NAMED[name], torch.float32, seed=7)


# --- special cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", [(5,), (4, 6), (2, 3, 4)])
@pytest.mark.parametrize("stride", [1, "kernel"])
def test_kernel_equal_to_size_is_dense_attention(spatial, stride):
    torch.manual_seed(0)
    b, h, d, dv = 2, 3, 4, 6
    q = torch.randn(b, *spatial, h, d, dtype=torch.float64)
    k = torch.randn(b, *spatial, h, d, dtype=torch.float64)
    v = torch.randn(b, *spatial, h, dv, dtype=torch.float64)
    out = gna(q, k, v, kernel_size=spatial, stride=spatial if stride == "kernel" else 1)
    n = math.prod(spatial)
    dense = F.scaled_dot_product_attention(
        *(t.reshape(b, n, h, -1).transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2).reshape(v.shape)
    assert rel_error(out, dense) <= REL_TOL[torch.float64][0]


def test_causal_kernel_equal_to_size_is_causal_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 11, 2, 4, dtype=torch.float64) for _ in range(3))
    out = gna(q, k, v, kernel_size=11, is_causal=True)
    dense = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    assert rel_error(out, dense.transpose(1, 2)) <= REL_TOL[torch.float64][0]


@pytest.mark.parametrize("scale", [0.37, 2.0, 1])
def test_custom_scale(scale):
    case = Case((7, 6), (3, 3), (2, 1), (2, 1), (False, True))
    check_against_oracle(case, torch.float32, seed=3, scale=scale)
    q, k, v, rpb, _ = make_inputs(case, torch.float32, seed=3)
    default = gna(q, k, v, *case.pattern, rpb=rpb)
    assert not torch.allclose(gna(q, k, v, *case.pattern, rpb=rpb, scale=scale), default)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_and_grad_dtype(dtype):
    case = Case((6, 5), (3, 2), (1, 2), (2, 1), (False, False), v_dim=3)
    q, k, v, rpb, grad_out = make_inputs(case, dtype, seed=0)
    inputs = [t.requires_grad_() for t in (q, k, v, rpb)]
    out = gna(q, k, v, *case.pattern, rpb=rpb)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in torch.autograd.grad(out, inputs, grad_out))


@pytest.mark.parametrize("case", [NAMED["dilation-2d-10x7-d3x2"], NAMED["3d-k1x3x3-s-d-causal"]], ids=["2d", "3d"])
def test_batch_permutation(case):
    case = replace(case, batch=4)
    q, k, v, rpb, _ = make_inputs(case, torch.float32, seed=5)
    perm = torch.tensor([2, 0, 3, 1])
    out = gna(q, k, v, *case.pattern, rpb=rpb)
    permuted = gna(q[perm], k[perm], v[perm], *case.pattern, rpb=rpb)
    torch.testing.assert_close(permuted, out[perm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["packed-qkv", "permuted", "expanded-batch"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(0)
    if layout == "packed-qkv":  # slices of one projection, as a mixer produces them
        q, k, v = torch.randn(2, 9, 7, 3, 2, 8).unbind(3)
    elif layout == "permuted":
        q, k, v = (torch.randn(2, 7, 9, 8, 2).permute(0, 2, 1, 4, 3) for _ in range(3))
    else:
        q, k, v = (torch.randn(1, 9, 7, 2, 8).expand(3, -1, -1, -1, -1) for _ in range(3))
    assert not q.is_contiguous()
    pattern = ((3, 2), (2, 1), (2, 3), (True, False))
    out = gna(q, k, v, *pattern)
    want = gna(q.contiguous(), k.contiguous(), v.contiguous(), *pattern)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


# --- bad input -----------------------------------------------------------------------------------

def _qkv(shape=(2, 8, 7, 3, 4), v_dim=4, dtype=torch.float32):
    q = torch.randn(shape, dtype=dtype)
    return q, torch.randn(shape, dtype=dtype), torch.randn(shape[:-1] + (v_dim,), dtype=dtype)


BAD_CALLS = {
    # (the argument the message must start with, the call)
    "q-not-a-tensor": ("q", lambda q, k, v: gna(q.tolist(), k, v, 3)),
    "q-3-dims": ("q", lambda q, k, v: gna(q[:, 0, 0], k[:, 0, 0], v[:, 0, 0], 3)),
    "q-7-dims": ("q", lambda q, k, v: gna(*(t[:, :, :, None, None] for t in (q, k, v)), 3)),
    "q-integer": ("q", lambda q, k, v: gna(q.long(), k.long(), v.long(), 3)),
    "k-shape": ("k", lambda q, k, v: gna(q, k[:, :-1], v, 3)),
    "k-head-dim": ("k", lambda q, k, v: gna(q, k[..., :-1], v, 3)),
    "v-spatial": ("v", lambda q, k, v: gna(q, k, v[:, :, :-1], 3)),
    "v-heads": ("v", lambda q, k, v: gna(q, k, v[..., :-1, :], 3)),
    "v-rank": ("v", lambda q, k, v: gna(q, k, v[0], 3)),
    "k-dtype": ("k", lambda q, k, v: gna(q, k.double(), v, 3)),
    "v-dtype": ("v", lambda q, k, v: gna(q, k, v.half(), 3)),
    "k-device": ("k", lambda q, k, v: gna(q, k.to("meta"), v, 3)),
    "v-device": ("v", lambda q, k, v: gna(q, k, v.to("meta"), 3)),
    "empty-head-dim": ("heads and head dims", lambda q, k, v: gna(q[..., :0], k[..., :0], v, 3)),
    "kernel-too-large": (r"kernel_size \* dilation", lambda q, k, v: gna(q, k, v, (3, 8))),
    "dilation-too-large": (r"kernel_size \* dilation", lambda q, k, v: gna(q, k, v, 3, dilation=(3, 2))),
    "stride-above-kernel": ("stride", lambda q, k, v: gna(q, k, v, 3, stride=(1, 4))),
    "stride-0": ("stride", lambda q, k, v: gna(q, k, v, 3, stride=0)),
    "stride-float": ("stride", lambda q, k, v: gna(q, k, v, 3, stride=1.0)),
    "kernel-0": ("kernel_size", lambda q, k, v: gna(q, k, v, 0)),
    "kernel-negative": ("kernel_size", lambda q, k, v: gna(q, k, v, (3, -1))),
    "kernel-too-long": ("kernel_size", lambda q, k, v: gna(q, k, v, (3, 3, 3))),
    "kernel-too-short": ("kernel_size", lambda q, k, v: gna(q, k, v, (3,))),
    "kernel-bool": ("kernel_size", lambda q, k, v: gna(q, k, v, True)),
    "kernel-bool-entry": ("kernel_size", lambda q, k, v: gna(q, k, v, (3, True))),
    "kernel-str": ("kernel_size", lambda q, k, v: gna(q, k, v, "33")),
    "kernel-float": ("kernel_size", lambda q, k, v: gna(q, k, v, 3.0)),
    "dilation-0": ("dilation", lambda q, k, v: gna(q, k, v, 3, dilation=(1, 0))),
    "causal-int": ("is_causal", lambda q, k, v: gna(q, k, v, 3, is_causal=1)),
    "causal-str": ("is_causal", lambda q, k, v: gna(q, k, v, 3, is_causal="yes")),
    "causal-too-long": ("is_causal", lambda q, k, v: gna(q, k, v, 3, is_causal=(True, False, True))),
    "causal-int-entry": ("is_causal", lambda q, k, v: gna(q, k, v, 3, is_causal=(True, 0))),
    "rpb-not-a-tensor": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=[[0.0] * 5] * 5)),
    "rpb-shape": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=torch.randn(3, 3, 3))),
    "rpb-heads": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=torch.randn(2, 5, 5))),
    "rpb-rank": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=torch.randn(3, 5))),
    "rpb-int": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=torch.zeros(3, 5, 5, dtype=torch.long))),
    "rpb-device": ("rpb", lambda q, k, v: gna(q, k, v, 3, rpb=torch.randn(3, 5, 5, device="meta"))),
    "scale-nan": ("scale", lambda q, k, v: gna(q, k, v, 3, scale=float("nan"))),
    "scale-inf": ("scale", lambda q, k, v: gna(q, k, v, 3, scale=float("inf"))),
    "scale-bool": ("scale", lambda q, k, v: gna(q, k, v, 3, scale=True)),
    "scale-str": ("scale", lambda q, k, v: gna(q, k, v, 3, scale="0.5")),
    "scale-tensor": ("scale", lambda q, k, v: gna(q, k, v, 3, scale=torch.tensor(0.5))),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises(name):
    argument, call = BAD_CALLS[name]
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=f"^{argument}"):
        call(*_qkv())


# --- FLOPs ---------------------------------------------------------------------------------------

FLOP_CASES = list(NAMED.values()) + [random_case(random.Random(seed), 1 + seed % 3) for seed in range(30)]


@pytest.mark.parametrize("case", FLOP_CASES, ids=list(NAMED) + [f"seed{s}" for s in range(30)])
def test_attended_pairs_match_oracle(case):
    pairs = attended_pair_count(case.spatial, *case.pattern)
    assert attended_pairs(case.params) == pairs
    b, h, d, dv = 3, 2, 5, 7
    assert gna_flops(case.params, b, h, d, dv) == 2 * b * h * pairs * (d + dv)


def test_count_op_flops_records_gna():
    case = NAMED["causal-2d-mixed"]
    q, k, v, rpb, _ = make_inputs(replace(case, head_dim=8, v_dim=5), torch.float32, seed=0)
    pairs = attended_pair_count(case.spatial, *case.pattern)
    with count_op_flops() as records:
        gna(q, k, v, *case.pattern, rpb=rpb)
    assert len(records) == 1
    (record,) = records
    assert record.op == "gna"
    assert record.math == 2 * case.batch * case.heads * pairs * (8 + 5)
    assert record.executed > 0
    gna(q, k, v, *case.pattern, rpb=rpb)  # outside the block: nothing recorded
    assert len(records) == 1


# --- extended: hypothesis sweep over the same space ----------------------------------------------

@st.composite
def gna_cases(draw):
    rank = draw(st.integers(1, 3))
    per_axis_cap = {1: 40, 2: 17, 3: 6}[rank]  # per_axis_cap ** rank <= MAX_TOKENS
    axes = []
    for _ in range(rank):
        ks = draw(st.integers(1, min(5, per_axis_cap)))
        dl = draw(st.integers(1, min(3, per_axis_cap // ks)))
        size = draw(st.integers(ks * dl, min(per_axis_cap, ks * dl + 3)))
        axes.append((size, ks, draw(st.integers(1, ks)), dl, draw(st.booleans())))
    spatial, kernel_size, stride, dilation, is_causal = (tuple(x) for x in zip(*axes))
    return Case(
        spatial, kernel_size, stride, dilation, is_causal,
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 8)),
        v_dim=draw(st.integers(1, 8)),
        rpb=draw(st.booleans()),
    )


@pytest.mark.extended
@settings(derandomize=True, deadline=None, max_examples=200)
@given(
    case=gna_cases(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_sweep(case, dtype, seed):
    check_against_oracle(case, dtype, seed)


# --- NATTEN: an independent implementation of the same semantics (no RPB) ------------------------

NATTEN_CASES = {
    "1d-causal-stride": Case((13,), (4,), (3,), (1,), (True,)),
    "1d-dilation-stride": Case((17,), (5,), (2,), (3,), (False,)),
    "2d-blocked": Case((8, 10), (4, 5), (4, 5), (1, 1), (False, False)),
    "2d-grid": Case((12, 8), (3, 4), (3, 4), (4, 2), (False, False)),
    "2d-mixed-causal": Case((9, 7), (3, 2), (2, 2), (2, 3), (True, False)),
    "3d-mixed": Case((4, 5, 6), (2, 3, 3), (1, 2, 3), (2, 1, 2), (False, True, False)),
}


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", list(NATTEN_CASES))
def test_matches_natten(name):
    natten = pytest.importorskip("natten")
    # NATTEN's Flex backend on CPU: forward only, fp32, head_dim a power of two >= 8, equal to
    # v_dim, kernel >= 2.
    case = replace(NATTEN_CASES[name], head_dim=8, v_dim=8, rpb=False)
    q, k, v, _, _ = make_inputs(case, torch.float32, seed=11)
    na = (natten.na1d, natten.na2d, natten.na3d)[len(case.spatial) - 1]
    kernel_size, stride, dilation, is_causal = case.pattern
    want = na(q, k, v, kernel_size=kernel_size, stride=stride, dilation=dilation, is_causal=is_causal, backend="flex-fna")
    got = gna(q, k, v, *case.pattern)
    assert rel_error(got, want.double()) <= REL_TOL[torch.float32][0]


@pytest.mark.parametrize("spatial,kernel,dilation,rpb", [
    ((14, 21), (7, 7), (1, 1), True),  # block attention, 2 x 3 windows
    ((12, 18), (3, 3), (4, 6), True),  # grid attention: kernel = stride = grid, dilation = size / grid
    ((6, 4, 8), (3, 2, 4), (2, 1, 2), False),  # 3-D, mixed
    ((35,), (5,), (7,), True),  # 1-D grid
])
def test_blocked_divisible_patterns_take_the_reshape_path_and_match_the_oracle(spatial, kernel, dilation, rpb):
    """stride == kernel with every axis a multiple of kernel * dilation: the reference tiles by
    view + permute (no gathers) and shares one bias across tiles; same answer as the oracle."""
    from attnzoo.kernels.gna import reference as ref_module

    params = GNAParams(tuple(spatial), tuple(kernel), tuple(kernel), tuple(dilation), (False,) * len(spatial))
    layout = ref_module._layout(params, torch.device("cpu"))
    assert layout.dilation == tuple(dilation) and layout.rel.shape[0] == 1
    g = torch.Generator().manual_seed(7)
    heads = 3
    q, k = (torch.randn(2, *spatial, heads, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(2, *spatial, heads, 5, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(heads, *(2 * x - 1 for x in kernel), generator=g, dtype=torch.float64, requires_grad=True) if rpb else None
    out = gna(q, k, v, kernel, kernel, dilation, rpb=table)
    want = gna_oracle(q, k, v, kernel, kernel, dilation, rpb=table)
    assert rel_error(out, want) < 1e-12
    inputs = [t for t in (q, k, v, table) if t is not None]
    grads = torch.autograd.grad(out.square().sum(), inputs)
    want_grads = torch.autograd.grad(want.square().sum(), inputs)
    for a, b in zip(grads, want_grads):
        assert rel_error(a, b) < 1e-12


NON_FINITE_PATTERNS = {
    "na-3": dict(kernel_size=3),
    "dilated-3-d2": dict(kernel_size=3, dilation=2),
    "mixed-causal-stride": dict(kernel_size=(3, 5), stride=(1, 2), is_causal=(True, False)),
    "blocked-3": dict(kernel_size=3, stride=3),
}


# (An Inf in a key gives a logit of +-Inf by the sign of q . e_c: whether a query's output is
# finite then depends on q, not only on the window; NaN keys and NaN / Inf values do not.)
@pytest.mark.parametrize("bad,where", [(float("nan"), "k"), (float("nan"), "v"), (float("inf"), "v")])
@pytest.mark.parametrize("name", list(NON_FINITE_PATTERNS))
def test_non_finite_key_or_value_reaches_exactly_the_queries_that_attend_to_it(name, bad, where):
    """A NaN / Inf in one key or value reaches exactly the queries whose window holds it (their
    output is non-finite: NaN rows where a tile masks keys, the brute-force channel values where
    a tile is one window); every other query equals the oracle on the same inputs with that entry
    zeroed, which none of them sees."""
    pattern = NON_FINITE_PATTERNS[name]
    g = torch.Generator().manual_seed(sum(map(ord, name + where)))
    h, w, heads = 9, 12, 2
    q, k, v = (torch.randn(1, h, w, heads, 8, generator=g) for _ in range(3))
    ks = pattern["kernel_size"]
    rpb = torch.randn(heads, *(2 * x - 1 for x in ((ks, ks) if isinstance(ks, int) else ks)), generator=g)
    y, x, head = 4, 7, 1
    clean = gna_oracle(q, k, v, rpb=rpb, **pattern)
    target = {"k": k, "v": v}[where]
    target[0, y, x, head, 3] = bad
    out = gna(q, k, v, rpb=rpb, **pattern)

    mask, _ = neighborhood((h, w), pattern["kernel_size"], pattern.get("stride", 1), pattern.get("dilation", 1),
                           pattern.get("is_causal", False))
    sees = mask[:, y * w + x].reshape(h, w)  # queries whose window holds the key
    assert sees.any() and not sees.all()
    poisoned = ~torch.isfinite(out[0, :, :, head]).all(-1)
    assert torch.equal(poisoned, sees)
    other = torch.isfinite(out).all(-1)
    assert other.sum() == out[..., 0].numel() - sees.sum()
    torch.testing.assert_close(out[other].double(), clean[other], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["na-3", "blocked-3"])
def test_empty_batch_returns_empty(name):
    q = torch.randn(0, 6, 6, 2, 8, requires_grad=True)
    out = gna(q, q, q, **NON_FINITE_PATTERNS[name])
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape
