"""halo_attention's fused Triton backend against the reference (the specification), outputs and
the gradients of q, k, v, height_rel and width_rel.

On a machine without CUDA the kernels run through Triton's interpreter, in a process started with
``TRITON_INTERPRET=1`` (the ``interpreter`` marker; tests/conftest.py). The interpreter runs every
``tl`` op as a numpy call, so the cases here are small (a few blocks, one or two heads);
halonet50ts's full stage sizes and bfloat16 run on a GPU in the tests marked ``gpu``.

Every comparison takes fresh seeded random inputs (relative tables at HaloNet's init scale,
``head_dim ** -0.5``) and checks ``||got - want|| / ||want||`` of the output and of every
gradient, ``want`` from the reference run on the same inputs upcast to float64.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.kernels import BackendUnavailableError
from attnzoo.kernels.halo_attention import halo_attention, halo_attention_op
from attnzoo.kernels.halo_attention._params import check_halo_inputs
from tests.kernels._triton_interp import (
    DEVICE, backend_env_fixture, assert_within, check_backend_none_picks_triton,
    check_compiles_and_exports_as_one_node, check_cpu_without_interpreter_picks_the_reference,
    forbid_kernel_launch, forbid_reference, gpu_tests, import_triton_backend, rel_error,
    small_case_tests,
)

triton_backend = import_triton_backend("attnzoo.kernels.halo_attention.triton")
pytestmark = pytest.mark.interpreter
from attnzoo.kernels.halo_attention._library import halo_triton  # noqa: E402
from attnzoo.kernels.halo_attention import _autotune  # noqa: E402  (after triton imports)

NAMES = ("out", "dq", "dk", "dv", "d_height_rel", "d_width_rel")


_backend_env = backend_env_fixture("ATTNZOO_HALO_AUTOTUNE")


# (output, gradient) bounds on ||got - want|| / ||want||, want = float64 reference.
# float32: float32 arithmetic with IEEE dot products (no TF32); measured maxima over CASES,
# EXTENDED_CASES and the 60-case hypothesis sweep (interpreter): out 3.4e-7; dq 4.0e-7, dk 3.9e-7,
# dv 3.7e-7, d_height_rel 4.3e-7, d_width_rel 5.0e-7. float16: P and dS rounded to float16 for
# the P V, dS K, dS^T Q and P^T dO products and delta = rowsum(dO * O) from the float16 O, as in
# FlashAttention; measured maxima out 4.2e-4; dq 6.4e-4, dk 4.2e-4, dv 4.3e-4, d_height_rel
# 9.5e-4, d_width_rel 5.6e-4 (the largest on 1-query blocks with 3x3 windows, 64-wide heads,
# where the table gradients are sums of few terms of both signs). bfloat16 (GPU only): 8x
# float16 for its 3 fewer mantissa bits, not measured here.
REL_TOL = {
    torch.float32: (1e-6, 2e-6),
    torch.float16: (1e-3, 4e-3),
    torch.bfloat16: (8e-3, 3e-2),
}


@dataclass(frozen=True)
class Case:
    batch: int
    h: int  # key grid, multiples of block
    w: int
    heads: int
    block: int
    halo: int
    stride: int = 1
    head_dim: int = 16
    v_dim: int = 16


def make_inputs(case: Case, dtype: torch.dtype, seed: int):
    """``(q, k, v, height_rel, width_rel, grad_out)`` on DEVICE in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    s, win = case.stride, case.block + 2 * case.halo
    grid = (case.batch, case.h, case.w, case.heads)
    qgrid = (case.batch, case.h // s, case.w // s, case.heads)
    tensors = [
        torch.randn(*qgrid, case.head_dim, generator=g),
        torch.randn(*grid, case.head_dim, generator=g),
        torch.randn(*grid, case.v_dim, generator=g),
        torch.randn(2 * win - 1, case.head_dim, generator=g) * case.head_dim ** -0.5,
        torch.randn(2 * win - 1, case.head_dim, generator=g) * case.head_dim ** -0.5,
        torch.randn(*qgrid, case.v_dim, generator=g),
    ]
    return [t.to(device=DEVICE, dtype=dtype) for t in tensors]


def compare(case: Case, dtype: torch.dtype, seed: int, scale: Optional[float] = None) -> dict:
    """Triton vs float64 reference on the same inputs; asserts the bounds, returns the errors."""
    *inputs, grad_out = make_inputs(case, dtype, seed)
    args = (case.block, case.halo, case.stride)
    leaves = [t.requires_grad_() for t in inputs]
    out = halo_attention(*leaves, *args, scale=scale, backend="triton")
    assert out.dtype == dtype and out.shape == grad_out.shape
    got = [out, *torch.autograd.grad(out, leaves, grad_out)]
    assert all(g.dtype == dtype and g.shape == t.shape for g, t in zip(got[1:], leaves))

    wide = [t.detach().double().requires_grad_() for t in inputs]
    want_out = halo_attention(*wide, *args, scale=scale, backend="reference")
    want = [want_out, *torch.autograd.grad(want_out, wide, grad_out.double())]

    out_tol, grad_tol = REL_TOL[dtype]
    errors = {n: rel_error(a, b) for n, a, b in zip(NAMES, got, want)}
    return assert_within(case, dtype, errors, out_tol, grad_tol)


# --- small cases: the interpreter on CPU, compiled kernels on a GPU ----------------------------

# halonet26t at 256 px: block 8, halo 2, 8 heads; stage 3: 16x16, head_dim 32; stage 4: its first
# block strides the queries (16x16 keys, 8x8 queries, query blocks of 4x4), head_dim 64.
# halonet50ts: block 8, halo 3 (14-wide windows). Scaled down: fewer heads, a few blocks.
CASES = {
    "halonet26t-s3-like-16x16-b8-h2": Case(1, 16, 16, 2, 8, 2, head_dim=32, v_dim=32),
    "halonet26t-s4-strided-16x16-b8-h2-s2": Case(1, 16, 16, 2, 8, 2, stride=2, head_dim=64, v_dim=64),
    "halonet50ts-like-3x5-blocks-b8-h3": Case(1, 24, 40, 1, 8, 3, head_dim=24, v_dim=40),
    # no halo: plain blocked attention, several window rows per key step
    "halo0-8x12-b4": Case(1, 8, 12, 2, 4, 0),
    # 2x2-query blocks: 4 groups packed per program
    "block2-halo1-6x10": Case(1, 6, 10, 2, 2, 1, v_dim=24),
    # 1-query blocks, halo wider than the block: a key in 25 windows
    "block1-halo2-3x5": Case(1, 3, 5, 2, 1, 2),
    # 100-query blocks: two query tiles per group (partial dk / dv summed over tiles)
    "block10-halo1-two-tiles": Case(1, 10, 20, 1, 10, 1),
    # block 4 strided by 2: 2x2-query blocks, 8-wide windows
    "block4-halo2-s2-h4": Case(1, 8, 12, 4, 4, 2, stride=2, v_dim=32),
}
FP16_CASES = ["halonet26t-s3-like-16x16-b8-h2", "halonet26t-s4-strided-16x16-b8-h2-s2", "block2-halo1-6x10"]


test_matches_reference_fp32, test_matches_reference_fp16 = small_case_tests(compare, CASES, FP16_CASES)


def test_custom_scale():
    compare(Case(1, 4, 8, 2, 4, 1), torch.float32, seed=4, scale=0.61)


def test_border_keys_are_zero_keys_in_the_softmax():
    """Out-of-grid window positions are zero keys and values that keep their weight: with q = 0
    and no relative logits every one of a corner block's win^2 positions weighs the same, so the
    output is the sum of the inside values over win^2 (not over the inside count)."""
    case = Case(1, 4, 4, 1, 4, 2)  # one block, an 8x8 window of which 4x4 is inside
    q, k, v, rel, _, _ = make_inputs(case, torch.float32, seed=3)
    out = halo_attention(torch.zeros_like(q), k, v, torch.zeros_like(rel), torch.zeros_like(rel), 4, 2,
                         backend="triton")
    want = v.double().sum((1, 2), keepdim=True).expand_as(v) / 64
    assert rel_error(out, want) <= REL_TOL[torch.float32][0]


def test_non_contiguous_inputs():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 8, 8, 3, 2, 16, device=DEVICE).unbind(3)  # slices of a packed qkv
    rel = torch.randn(16, 11, device=DEVICE).t()  # [11, 16], transposed storage
    assert not q.is_contiguous() and not rel.is_contiguous()
    out = halo_attention(q, k, v, rel, rel, 4, 1, backend="triton")
    want = halo_attention(q, k, v, rel, rel, 4, 1, backend="reference")
    assert rel_error(out, want.double()) <= REL_TOL[torch.float32][0]
    ins = [t.detach().requires_grad_() for t in (q, k, v, rel, rel.clone())]  # views stay non-contiguous
    grads = torch.autograd.grad(halo_attention(*ins, 4, 1, backend="triton").sum(), ins)
    wide = [t.detach().double().requires_grad_() for t in ins]
    want_grads = torch.autograd.grad(halo_attention(*wide, 4, 1, backend="reference").sum(), wide)
    assert all(rel_error(a, b) <= REL_TOL[torch.float32][1] for a, b in zip(grads, want_grads))


def test_uses_fused_kernels_not_the_reference(monkeypatch):
    """The triton backend must not run the reference's attention anywhere (e.g. in its backward)."""
    from attnzoo.kernels.halo_attention import reference

    forbid_reference(monkeypatch, reference, "_halo_reference")
    q, k, v, hr, wr, grad_out = make_inputs(Case(1, 4, 4, 2, 2, 1), torch.float32, seed=0)
    q.requires_grad_()
    halo_attention(q, k, v, hr, wr, 2, 1, backend="triton").backward(grad_out)
    assert torch.isfinite(q.grad).all()


def test_mixer_with_triton_backend_matches_reference():
    """HaloAttention2d end to end (its projections, padding to block multiples, strided queries)."""
    from attnzoo.layers.halo_attn import HaloAttention2d

    torch.manual_seed(3)
    mixer = HaloAttention2d(32, 2, block_size=4, halo_size=1, stride=2).to(DEVICE)
    x = torch.randn(1, 7, 10, 32, device=DEVICE)  # padded to 8x12
    mixer.backend = "triton"
    got = mixer(x)
    mixer.backend = "reference"
    want = mixer(x)
    assert rel_error(got, want.double()) <= 1e-5


def test_empty_batch_returns_empty(monkeypatch):
    forbid_kernel_launch(monkeypatch, triton_backend)
    inputs = make_inputs(Case(0, 4, 4, 2, 2, 1), torch.float32, seed=0)[:5]
    leaves = [t.requires_grad_() for t in inputs]
    out = halo_attention(*leaves, 2, 1, backend="triton")
    assert out.shape == (0, 4, 4, 2, 16)
    grads = torch.autograd.grad(out.sum(), leaves)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, leaves))


# --- the kernels as torch.library custom ops -------------------------------------------------------

def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of
    ``attnzoo::halo_fwd`` and ``attnzoo::halo_bwd`` (torch.library.opcheck's whole battery)."""
    from attnzoo.kernels.halo_attention._library import halo_bwd, halo_fwd

    q, k, v, hr, wr, grad_out = make_inputs(Case(1, 2, 2, 1, 2, 1), torch.float32, seed=1)
    leaves = tuple(t.requires_grad_() for t in (q, k, v, hr, wr))
    torch.library.opcheck(halo_fwd, (*leaves, 2, 1, 1, 0.25))
    q, k, v, hr, wr = (t.detach() for t in leaves)
    out, lse = halo_fwd(q, k, v, hr, wr, 2, 1, 1, 0.25)
    torch.library.opcheck(halo_bwd, (grad_out, q, k, v, hr, wr, out, lse, 2, 1, 1, 0.25))


def test_compiles_without_graph_breaks_and_exports_as_one_node():
    """torch.compile(fullgraph=True) over the fused op: forward and every gradient equal to eager;
    torch.export records one ``attnzoo.halo_fwd`` call."""
    *inputs, grad_out = make_inputs(Case(1, 4, 4, 2, 2, 1), torch.float32, seed=5)

    def run(q, k, v, hr, wr):
        return halo_attention(q, k, v, hr, wr, 2, 1, backend="triton")

    check_compiles_and_exports_as_one_node(run, inputs, grad_out, torch.ops.attnzoo.halo_fwd.default)


# --- block configurations (no kernel runs) -------------------------------------------------------

@pytest.mark.parametrize("bq,win,own,inner,want", [
    (8, 14, 64, 16, dict(OT=64, G=1, ROWS=1)),  # halonet50ts: one 8x8 block, one 14-wide row a step
    (8, 14, 64, 64, dict(OT=64, G=1, ROWS=4)),
    (4, 12, 64, 64, dict(OT=16, G=4, ROWS=1)),  # halonet26t's strided blocks: 4 packed, a row each
    (4, 12, 16, 32, dict(OT=16, G=1, ROWS=2)),
    (1, 5, 16, 32, dict(OT=1, G=4, ROWS=1)),
    (2, 4, 16, 64, dict(OT=4, G=4, ROWS=4)),
    (10, 12, 64, 16, dict(OT=64, G=1, ROWS=1)),  # 100 queries: two tiles
    (2, 2, 64, 16, dict(OT=4, G=8, ROWS=1)),
])
def test_packing(bq, win, own, inner, want):
    assert _autotune.packing(bq, win, own, inner) == want


@pytest.mark.parametrize("which", ["fwd", "bwd"])
@pytest.mark.parametrize("bq,win,head", [(8, 14, 32), (4, 12, 64), (1, 3, 16), (2, 40, 128), (10, 12, 128)])
def test_pruning_and_default_config(which, bq, win, head):
    named = dict(BQ=bq, WIN=win, D=head, DV=head, DOT_PRECISION="tf32")
    kept = _autotune.SPACES[which].kept(named)
    assert kept and all(c.kwargs["BLOCK_N"] >= _autotune.window_lanes(win) for c in kept)
    assert which != "bwd" or all(c.kwargs["BLOCK_M"] == _autotune.bwd_block_m(bq) and c.num_stages == 1 for c in kept)
    default = _autotune.SPACES[which].default_config(named)
    assert any(default["BLOCK_M"] == c.kwargs["BLOCK_M"] and default["BLOCK_N"] == c.kwargs["BLOCK_N"] for c in kept)


def test_autotune_switch(monkeypatch):
    space = _autotune.SPACES["fwd"]
    monkeypatch.setenv("ATTNZOO_HALO_AUTOTUNE", "0")
    assert not space.should_tune(2**30)
    monkeypatch.setenv("ATTNZOO_HALO_AUTOTUNE", "1")
    assert space.should_tune(2**18) and not space.should_tune(2**18 - 1)


# --- dispatch ------------------------------------------------------------------------------------

def _select_args(dtype=torch.float32, head_dim=16, v_dim=16, rel_dtype=None, block=4, halo=1, device=DEVICE):
    win = block + 2 * halo
    q = torch.randn(1, block, 2 * block, 2, head_dim, dtype=dtype, device=device)
    k = torch.randn(1, block, 2 * block, 2, head_dim, dtype=dtype, device=device)
    v = torch.randn(1, block, 2 * block, 2, v_dim, dtype=dtype, device=device)
    rel = torch.randn(2 * win - 1, head_dim, dtype=rel_dtype or dtype, device=device)
    params, scale = check_halo_inputs(q, k, v, rel, rel, block, halo, 1, None)
    return q, k, v, rel, rel, params, scale


@pytest.mark.parametrize("what,kwargs,reason", [
    ("float64", dict(dtype=torch.float64), "dtype torch.float64 is not supported \\(float16, bfloat16 or float32\\)"),
    ("rel-float64", dict(rel_dtype=torch.float64), "height_rel dtype torch.float64 is not supported"),
    ("head-dim-20", dict(head_dim=20), "head_dim 20 is not supported \\(a multiple of 8 in \\[16, 128\\]\\)"),
    ("head-dim-136", dict(head_dim=136), "head_dim 136"),
    ("v-dim-12", dict(v_dim=12), "v_dim 12 is not supported"),
    ("window-66", dict(block=32, halo=17), "window block_size \\+ 2 \\* halo_size = 66 is not supported"),
])
def test_unsupported_input_is_refused_with_the_reason(what, kwargs, reason):
    args = _select_args(**kwargs)
    assert re.search(reason, triton_backend.can_run_triton(*args))
    with pytest.raises(BackendUnavailableError, match=reason):
        halo_attention(*args[:5], args[5].block_size, args[5].halo_size, backend="triton")
    # backend=None falls back to the reference for the same inputs
    assert halo_attention_op.select(None, *args) is halo_attention_op.reference


def test_int32_overflow_is_refused():
    q, k, v, hr, wr, params, scale = _select_args()
    big = torch.empty(1, 2**13, 2**13, 32, 1, device="meta").expand(1, 2**13, 2**13, 32, 16)
    reason = triton_backend.can_run_triton(q, big, big, hr, wr, params, scale)
    assert reason is not None and "2**31" in reason


def test_cpu_without_interpreter_picks_the_reference(monkeypatch):
    args = _select_args(device="cpu")
    check_cpu_without_interpreter_picks_the_reference(
        monkeypatch, halo_attention_op, args, lambda: halo_attention(*args[:5], 4, 1, backend="triton"))


def test_backend_none_picks_triton_where_it_can_run(monkeypatch):
    assert halo_attention_op.backends == ("reference", "triton")
    check_backend_none_picks_triton(monkeypatch, halo_attention_op, _select_args(), halo_triton)


# --- extended: hypothesis sweep and bigger cases ---------------------------------------------------

@st.composite
def triton_cases(draw):
    block = draw(st.integers(1, 8))
    stride = draw(st.sampled_from([s for s in (1, 2) if block % s == 0]))
    halo = draw(st.integers(0 if block > 1 else 1, 4))  # win >= 2: one key leaves q, k and the tables no gradient
    head_dim = draw(st.sampled_from([16, 24, 32, 64]))
    return Case(
        batch=draw(st.integers(1, 2)), h=block * draw(st.integers(1, 3)), w=block * draw(st.integers(1, 3)),
        heads=draw(st.integers(1, 3)), block=block, halo=halo, stride=stride, head_dim=head_dim,
        v_dim=draw(st.sampled_from([head_dim, 16, 40])),
    )


@pytest.mark.extended
@settings(derandomize=True, deadline=None, max_examples=60)
@given(case=triton_cases(), dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_sweep(case, dtype, seed):
    compare(case, dtype, seed)


EXTENDED_CASES = {
    # halonet50ts stage 3 at 256 px scaled to 2 heads: 16x16 keys, 2x2 blocks of 8, halo 3
    "halonet50ts-s3-16x16-b8-h3-d32": Case(2, 16, 16, 2, 8, 3, head_dim=32, v_dim=32),
    "halonet26t-s4-16x16-b8-h2-s2-d64": Case(2, 16, 16, 4, 8, 2, stride=2, head_dim=64, v_dim=64),
    "d128-b4-h3": Case(1, 8, 8, 2, 4, 3, head_dim=128, v_dim=128),
    "haloregnetz-b7-h2-d16": Case(1, 14, 21, 2, 7, 2, head_dim=16, v_dim=48),
}


@pytest.mark.extended
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(EXTENDED_CASES))
def test_bigger_cases(name, dtype):
    compare(EXTENDED_CASES[name], dtype, seed=sum(map(ord, name)))


# --- GPU: full sizes and bfloat16 ----------------------------------------------------------------

GPU_CASES = {
    # halonet50ts (block 8, halo 3) halo layers at 256 px, batch 8: stage 2 32x32, 4 heads, d 32;
    # stage 3 16x16, 8 heads, d 32; stage 4 8x8, 8 heads, d 64
    "h50ts-256-s2-32x32": Case(8, 32, 32, 4, 8, 3, head_dim=32, v_dim=32),
    "h50ts-256-s3-16x16": Case(8, 16, 16, 8, 8, 3, head_dim=32, v_dim=32),
    "h50ts-256-s4-8x8": Case(8, 8, 8, 8, 8, 3, head_dim=64, v_dim=64),
    # at 224 px the mixer pads 28 -> 32, 14 -> 16, 7 -> 8
    "h50ts-224-s2-32x32": Case(8, 32, 32, 4, 8, 3, head_dim=32, v_dim=32),
    # halonet26t's strided stage-4 block (query stride 2) and detection-sized maps
    "h26t-256-s4-strided-16x16": Case(8, 16, 16, 8, 8, 2, stride=2, head_dim=64, v_dim=64),
    "det-100x152-b8-h3": Case(2, 104, 152, 4, 8, 3, head_dim=32, v_dim=32),
    "d128-b4-h3": Case(4, 32, 32, 2, 4, 3, head_dim=128, v_dim=128),
}


# Large enough to go through the autotuner (batch * heads * queries >= 2**18).
_TUNED = Case(64, 32, 32, 4, 8, 3, head_dim=32, v_dim=32)
test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu = gpu_tests(
    compare, GPU_CASES, CASES, ["block2-halo1-6x10", "block1-halo2-3x5", "block10-halo1-two-tiles"],
    autotune_variable="ATTNZOO_HALO_AUTOTUNE", autotune_spaces=_autotune.SPACES,
    autotuned_case=_TUNED, autotuned_size=_TUNED.batch * _TUNED.heads * _TUNED.h * _TUNED.w,
)
