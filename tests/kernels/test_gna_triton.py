"""gna's fused Triton backend against the reference (the specification), outputs and gradients.

On a machine without CUDA the kernels run through Triton's interpreter, in a process started with
``TRITON_INTERPRET=1`` (the ``interpreter`` marker; tests/conftest.py). The interpreter runs every
``tl`` op as a numpy call (~10 ms per inner step of a 32x32 tile), so the cases here are tiny; full
sizes and bfloat16 (which the interpreter does not emulate faithfully) run on a GPU in the tests
marked ``gpu``.

Every comparison takes fresh seeded random inputs and checks ``||got - want|| / ||want||`` of
the output and of the q, k, v and rpb gradients, with ``want`` from the reference run on the same
inputs upcast to float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.kernels import BackendUnavailableError, gna
from attnzoo.kernels.gna import gna_op
from attnzoo.kernels.gna._params import check_gna_inputs
from tests.kernels._triton_interp import (
    CUDA, DEVICE, backend_env_fixture, assert_within, check_backend_none_picks_triton,
    check_compiles_and_exports_as_one_node, check_cpu_without_interpreter_picks_the_reference,
    forbid_reference, gpu_tests, import_triton_backend, rel_error, small_case_tests,
)

triton_backend = import_triton_backend("attnzoo.kernels.gna.triton")
pytestmark = pytest.mark.interpreter
from attnzoo.kernels.gna._library import gna_triton  # noqa: E402
from attnzoo.kernels.gna import _autotune  # noqa: E402  (after triton imports)


_backend_env = backend_env_fixture("ATTNZOO_GNA_AUTOTUNE")


# (output, gradient) bounds on ||got - want|| / ||want||, want = float64 reference.
# float32: the kernels compute in float32 with IEEE dot products (no TF32); measured maxima over
# 64 random interpreter cases (1-3 axes, stride, dilation, causal, rpb) 1.3e-7 / 7.9e-7. float16: like FlashAttention, P and dS are rounded to float16
# for the p @ v and dS @ k / dS^T @ q products, and delta = rowsum(dO * O) uses the float16 O;
# measured maxima over the same kind of cases 2.6e-4 / 2.2e-3 (the rpb gradient, a sum of dS whose terms cancel). bfloat16
# (GPU only): 8x float16 for its 3 fewer mantissa bits, not measured here.
REL_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 6e-3),
    torch.bfloat16: (8e-3, 5e-2),
}


@dataclass(frozen=True)
class Case:
    spatial: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]
    batch: int = 1
    heads: int = 2
    head_dim: int = 16
    v_dim: int = 16
    rpb: bool = True

    @property
    def pattern(self) -> tuple:
        return (self.kernel_size, self.stride, self.dilation, self.is_causal)


def make_inputs(case: Case, dtype: torch.dtype, seed: int, rpb_dtype: Optional[torch.dtype] = None):
    g = torch.Generator().manual_seed(seed)
    b, h = case.batch, case.heads

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dt)

    q = rand(b, *case.spatial, h, case.head_dim)
    k = rand(b, *case.spatial, h, case.head_dim)
    v = rand(b, *case.spatial, h, case.v_dim)
    rpb = rand(h, *(2 * x - 1 for x in case.kernel_size), dt=rpb_dtype or dtype) if case.rpb else None
    grad_out = rand(b, *case.spatial, h, case.v_dim)
    return q, k, v, rpb, grad_out


def compare(case: Case, dtype: torch.dtype, seed: int, scale: Optional[float] = None,
            rpb_grad: bool = True, rpb_dtype: Optional[torch.dtype] = None) -> dict:
    """Triton vs float64 reference on the same inputs; asserts the bounds, returns the errors."""
    q, k, v, rpb, grad_out = make_inputs(case, dtype, seed, rpb_dtype)
    leaves = [q, k, v] + ([rpb] if rpb is not None and rpb_grad else [])
    names = ["out", "dq", "dk", "dv", "drpb"][: 1 + len(leaves)]
    for t in leaves:
        t.requires_grad_()
    out = gna(q, k, v, *case.pattern, rpb=rpb, scale=scale, backend="triton")
    assert out.dtype == dtype and out.shape == v.shape
    got = [out, *torch.autograd.grad(out, leaves, grad_out)]
    assert all(g.dtype == t.dtype for g, t in zip(got[1:], leaves))

    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v)]
    rpb64 = rpb.detach().double().requires_grad_(rpb_grad) if rpb is not None else None
    want_out = gna(*wide, *case.pattern, rpb=rpb64, scale=scale, backend="reference")
    wide_leaves = wide + ([rpb64] if rpb is not None and rpb_grad else [])
    want = [want_out, *torch.autograd.grad(want_out, wide_leaves, grad_out.double())]

    out_tol, grad_tol = REL_TOL[dtype]
    # With kernel 1 on every axis each query sees only itself: the softmax is constant, and the
    # q, k and rpb gradients are exactly zero up to the rounding of dP - delta (which cancels).
    # Those are measured on the scale of the v gradient instead of their own (zero) norm.
    vanishing = math.prod(case.kernel_size) == 1
    dv_norm = want[3].norm()
    errors = {n: rel_error(a, b, dv_norm if vanishing and n in ("dq", "dk", "drpb") else None)
              for n, a, b in zip(names, got, want)}
    return assert_within(case, dtype, errors, out_tol, grad_tol)


def _skip_bf16_on_interpreter(dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("bfloat16 is not emulated faithfully by Triton's interpreter (numpy has no bfloat16)")


# --- small cases: the interpreter on CPU, compiled kernels on a GPU ----------------------------

CASES = {
    # sliding-window neighborhood attention, sizes not multiples of the 16-lane interpreter tile
    "1d-na-13-k5": Case((13,), (5,), (1,), (1,), (False,)),
    "1d-causal-17-k4-s2-d2": Case((17,), (4,), (2,), (2,), (True,), heads=1),
    "2d-na-7x6-k3": Case((7, 6), (3, 3), (1, 1), (1, 1), (False, False)),
    "2d-dilation-stride-causal": Case((9, 7), (3, 2), (2, 2), (2, 3), (True, False), heads=1),
    "2d-even-kernel-stride": Case((7, 9), (2, 4), (1, 3), (2, 1), (False, False), heads=1),
    # dilation that does not divide the size: groups of unequal length, tiles past a group's end
    "2d-dilation-10x7-d3x2": Case((10, 7), (3, 3), (1, 2), (3, 2), (False, False), heads=1),
    # blocked + divisible: one window per tile, no window mask (the fast path)
    "2d-blocked-8x8-k4": Case((8, 8), (4, 4), (4, 4), (1, 1), (False, False)),
    "2d-grid-8x6-g4x3-d2": Case((8, 6), (4, 3), (4, 3), (2, 2), (False, False), heads=1),
    "1d-blocked-causal-12-k4": Case((12,), (4,), (4,), (1,), (True,)),  # causal: not the fast path
    # blocked but not divisible: the general path
    "2d-blocked-7x9-k3": Case((7, 9), (3, 3), (3, 3), (1, 1), (False, False), heads=1),
    # 3-D, H != W != D, mixed per-axis pattern
    "3d-3x4x5-mixed": Case((3, 4, 5), (2, 3, 3), (1, 2, 1), (1, 1, 1), (False, False, True), heads=1),
    "3d-2x3x4-blocked": Case((2, 3, 4), (2, 3, 2), (2, 3, 2), (1, 1, 2), (False, False, False), heads=1),
    # smaller than one tile
    "1d-tiny-3-k2": Case((3,), (2,), (1,), (1,), (False,), batch=2),
    "2d-tiny-2x3-k2": Case((2, 3), (2, 2), (1, 1), (1, 1), (True, False)),
    # head dims: non-power-of-two head_dim, v_dim != head_dim
    "2d-dims-24-40": Case((6, 7), (3, 3), (2, 1), (1, 2), (False, False), head_dim=24, v_dim=40, heads=1),
    "1d-no-rpb-d32": Case((11,), (3,), (1,), (3,), (False,), head_dim=32, v_dim=16, rpb=False),
    # kernel 1: every query sees only itself (zero q / k / rpb gradients)
    "2d-kernel-1": Case((3, 4), (1, 1), (1, 1), (1, 1), (True, False), heads=1),
}
FP16_CASES = ["1d-causal-17-k4-s2-d2", "2d-dilation-stride-causal", "2d-blocked-8x8-k4", "2d-dims-24-40"]


test_matches_reference_fp32, test_matches_reference_fp16 = small_case_tests(compare, CASES, FP16_CASES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    _skip_bf16_on_interpreter(dtype)
    compare(CASES["2d-na-7x6-k3"], dtype, seed=3)


def test_custom_scale_and_frozen_rpb():
    case = CASES["2d-dilation-stride-causal"]
    compare(case, torch.float32, seed=1, scale=0.37, rpb_grad=False)


def test_float32_rpb_with_float16_inputs():
    """A float32 bias table (as under autocast) with float16 q / k / v; its gradient stays float32."""
    compare(CASES["1d-na-13-k5"], torch.float16, seed=2, rpb_dtype=torch.float32)


def test_non_contiguous_inputs():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 7, 3, 2, 16, device=DEVICE).unbind(3)  # slices of a packed qkv
    assert not q.is_contiguous()
    pattern = ((3, 3), (1, 1), (1, 2), (False, True))
    out = gna(q, k, v, *pattern, backend="triton")
    want = gna(q, k, v, *pattern, backend="reference")
    assert rel_error(out, want.double()) <= REL_TOL[torch.float32][0]


def test_uses_fused_kernels_not_the_reference(monkeypatch):
    """The triton backend must not call the reference anywhere (e.g. in its backward)."""
    from attnzoo.kernels.gna import reference

    forbid_reference(monkeypatch, reference, "_gna_reference", "_layout")
    case = CASES["2d-na-7x6-k3"]
    q, k, v, rpb, grad_out = make_inputs(case, torch.float32, seed=0)
    q.requires_grad_()
    out = gna(q, k, v, *case.pattern, rpb=rpb, backend="triton")
    out.backward(grad_out)
    assert torch.isfinite(q.grad).all()


# --- the kernels as torch.library custom ops -------------------------------------------------------

def _op_args(case_name: str, dtype=torch.float32, seed: int = 0):
    case = CASES[case_name]
    q, k, v, rpb, grad_out = make_inputs(case, dtype, seed=seed)
    kernel, stride, dilation, causal = (list(x) for x in case.pattern)
    params, scale = check_gna_inputs(q, k, v, *case.pattern, rpb, None)
    return case, (q, k, v, rpb, kernel, stride, dilation, causal, scale), grad_out


@pytest.mark.parametrize("case_name", ["1d-tiny-3-k2"])
def test_custom_ops_pass_opcheck(case_name):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of
    ``attnzoo::gna_fwd`` and ``attnzoo::gna_bwd`` (torch.library.opcheck's whole battery)."""
    from attnzoo.kernels.gna._library import gna_bwd, gna_fwd

    case, args, grad_out = _op_args(case_name)
    for t in args[:4]:
        if t is not None:
            t.requires_grad_()
    torch.library.opcheck(gna_fwd, args)
    out, lse = gna_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    q, k, v, rpb = (a.detach() if a is not None else None for a in args[:4])
    torch.library.opcheck(gna_bwd, (grad_out, q, k, v, rpb, out, lse, *args[4:], rpb is not None))


def test_custom_op_compiles_and_exports_as_one_node():
    """torch.compile captures the fused op without a graph break (forward and backward equal to
    eager), and torch.export records one ``attnzoo.gna_fwd`` call, not the Python around it."""
    case, args, grad_out = _op_args("2d-tiny-2x3-k2", seed=5)
    q, k, v, rpb = args[:4]

    def run(q, k, v, rpb):
        return gna(q, k, v, *case.pattern, rpb=rpb, backend="triton")

    targets = check_compiles_and_exports_as_one_node(run, (q, k, v, rpb), grad_out, torch.ops.attnzoo.gna_fwd.default)
    assert not any("scaled_dot_product" in str(t) for t in targets)


def test_empty_batch_returns_empty():
    case, args, _ = _op_args("2d-na-7x6-k3")
    q, k, v = (t[:0].requires_grad_() for t in args[:3])
    out = gna(q, k, v, *case.pattern, rpb=args[3], backend="triton")
    assert out.shape == v.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


# --- tile configurations (no kernel runs) --------------------------------------------------------

def _named(spatial, dilation=(1, 1, 1), d=32, precision="tf32"):
    return dict(L0=spatial[0], L1=spatial[1], L2=spatial[2], DIL0=dilation[0], DIL1=dilation[1],
                DIL2=dilation[2], D=d, DV=d, DOT_PRECISION=precision)


@pytest.mark.parametrize("which", ["fwd", "dkdv"])
@pytest.mark.parametrize("spatial,leading_ones", [((1, 1, 4096), 2), ((1, 56, 56), 1), ((16, 32, 32), 0)])
def test_pruning_keeps_tiles_of_the_problems_rank(which, spatial, leading_ones):
    kept = _autotune.SPACES[which].kept(_named(spatial))
    assert kept
    for c in kept:
        m = c.kwargs
        assert all(m[f"T{a}"] == 1 and m[f"U{a}"] == 1 for a in range(leading_ones))
        assert m["BLOCK_M"] >= m["T0"] * m["T1"] * m["T2"] and m["BLOCK_N"] >= m["U0"] * m["U1"] * m["U2"]
        assert which == "fwd" or c.num_stages == 1  # see _autotune.configs
    if leading_ones < 2:  # a 1-D run tile never serves a 2-D or 3-D map
        assert not any(c.kwargs["T1"] == 1 and c.kwargs["T0"] == 1 for c in kept)


def test_pruning_of_tiny_problems_keeps_the_fewest_lanes():
    kept = _autotune.SPACES["fwd"].kept(_named((1, 3, 2)))
    assert kept and len({c.kwargs["BLOCK_M"] for c in kept}) == 1
    assert all(c.kwargs["T0"] == 1 and c.kwargs["U0"] == 1 for c in kept)


def test_blocked_fast_path_rule():
    blocked = _autotune.is_blocked
    assert blocked((1, 56, 56), (1, 7, 7), (1, 7, 7), (1, 1, 1), (False,) * 3)  # MaxViT block
    assert blocked((1, 56, 56), (1, 7, 7), (1, 7, 7), (1, 8, 8), (False,) * 3)  # MaxViT grid
    assert not blocked((1, 57, 56), (1, 7, 7), (1, 7, 7), (1, 1, 1), (False,) * 3)  # not divisible
    assert not blocked((1, 56, 56), (1, 7, 7), (1, 7, 7), (1, 1, 1), (False, True, False))  # causal
    assert not blocked((1, 56, 56), (1, 7, 7), (1, 1, 7), (1, 1, 1), (False,) * 3)  # sliding on one axis
    assert not blocked((8, 24, 24), (4, 6, 6), (4, 6, 6), (1, 1, 1), (False,) * 3)  # 144 lanes > 128
    assert _autotune.blocked_config((1, 7, 7))["BLOCK_M"] == 64


def test_size_bucket_groups_sizes_within_a_power_of_two():
    bucket = _autotune.size_bucket
    assert bucket((1, 56, 56)) == bucket((1, 33, 64)) != bucket((1, 56, 65))
    assert bucket((1, 1, 4096)) != bucket((1, 4096, 1))


# --- dispatch ------------------------------------------------------------------------------------

def _select_args(dtype=torch.float32, head_dim=16, v_dim=16, device=DEVICE):
    q = torch.randn(1, 6, 5, 2, head_dim, dtype=dtype, device=device)
    k = torch.randn(1, 6, 5, 2, head_dim, dtype=dtype, device=device)
    v = torch.randn(1, 6, 5, 2, v_dim, dtype=dtype, device=device)
    params, scale = check_gna_inputs(q, k, v, 3, 1, 1, False, None, None)
    return q, k, v, params, None, scale


@pytest.mark.parametrize("what,kwargs,reason", [
    ("float64", dict(dtype=torch.float64), "dtype torch.float64"),
    ("head-dim-12", dict(head_dim=12), "head_dim 12"),
    ("head-dim-136", dict(head_dim=136), "head_dim 136"),
    ("v-dim-20", dict(v_dim=20), "v_dim 20"),
])
def test_explicit_triton_on_unsupported_input_raises_with_the_reason(what, kwargs, reason):
    q, k, v, *_ = _select_args(**kwargs)
    with pytest.raises(BackendUnavailableError, match=reason):
        gna(q, k, v, 3, backend="triton")
    # backend=None falls back to the reference for the same inputs
    assert gna_op.select(None, *_select_args(**kwargs)) is gna_op.reference


def test_cpu_without_interpreter_picks_the_reference(monkeypatch):
    args = _select_args(device="cpu")
    check_cpu_without_interpreter_picks_the_reference(
        monkeypatch, gna_op, args, lambda: gna(*args[:3], 3, backend="triton"))


def test_backend_none_picks_triton_where_it_can_run(monkeypatch):
    check_backend_none_picks_triton(monkeypatch, gna_op, _select_args(), gna_triton)


# --- extended: hypothesis sweep ------------------------------------------------------------------

@st.composite
def triton_cases(draw):
    rank = draw(st.integers(1, 3))
    cap = {1: 24, 2: 9, 3: 5}[rank]  # keeps each case to a few dozen interpreter tiles
    axes = []
    for _ in range(rank):
        ks = draw(st.integers(1, min(5, cap)))
        dl = draw(st.integers(1, max(1, min(3, cap // ks))))
        size = draw(st.integers(ks * dl, max(ks * dl, min(cap, ks * dl + 3))))
        axes.append((size, ks, draw(st.integers(1, ks)), dl, draw(st.booleans())))
    spatial, kernel_size, stride, dilation, is_causal = (tuple(x) for x in zip(*axes))
    head_dim = draw(st.sampled_from([16, 24, 32]))
    return Case(
        spatial, kernel_size, stride, dilation, is_causal,
        batch=draw(st.integers(1, 2)), heads=draw(st.integers(1, 2)),
        head_dim=head_dim, v_dim=draw(st.sampled_from([head_dim, 16, 40])), rpb=draw(st.booleans()),
    )


@pytest.mark.extended
@settings(derandomize=True, deadline=None, max_examples=60)
@given(case=triton_cases(), dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_sweep(case, dtype, seed):
    compare(case, dtype, seed)


# --- GPU: full sizes and bfloat16 ----------------------------------------------------------------

GPU_CASES = {
    "na2d-56x56-k7": Case((56, 56), (7, 7), (1, 1), (1, 1), (False, False), batch=2, heads=4, head_dim=32, v_dim=32),
    "dinat-56x56-k7-d8": Case((56, 56), (7, 7), (1, 1), (8, 8), (False, False), batch=2, heads=4, head_dim=32, v_dim=32),
    "dinat-28x28-k7-d4": Case((28, 28), (7, 7), (1, 1), (4, 4), (False, False), batch=2, heads=4, head_dim=32, v_dim=32),
    "maxvit-block-56x56-p7": Case((56, 56), (7, 7), (7, 7), (1, 1), (False, False), batch=2, heads=4, head_dim=32, v_dim=32),
    "maxvit-grid-56x56-g7": Case((56, 56), (7, 7), (7, 7), (8, 8), (False, False), batch=2, heads=4, head_dim=32, v_dim=32),
    "na1d-4096-k63-causal": Case((4096,), (63,), (1,), (1,), (True,), batch=1, heads=2, head_dim=64, v_dim=64),
    "na3d-8x16x16-k3x7x7": Case((8, 16, 16), (3, 7, 7), (1, 2, 1), (1, 1, 2), (False, False, False), heads=2, head_dim=64, v_dim=64),
    "na2d-odd-45x61-k9-d128": Case((45, 61), (9, 5), (2, 1), (2, 3), (True, False), heads=2, head_dim=128, v_dim=128),
}


# Large enough to go through the autotuner (batch * heads * positions >= 2**18).
_TUNED = replace(GPU_CASES["na2d-56x56-k7"], batch=16, heads=8)
test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu = gpu_tests(
    compare, GPU_CASES, CASES, ["2d-blocked-8x8-k4", "2d-dilation-stride-causal", "3d-3x4x5-mixed"],
    autotune_variable="ATTNZOO_GNA_AUTOTUNE", autotune_spaces=_autotune.SPACES,
    autotuned_case=_TUNED, autotuned_size=_TUNED.batch * _TUNED.heads * math.prod(_TUNED.spatial),
)
