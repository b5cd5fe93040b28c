"""routed_attention's fused Triton backend against the reference (the specification), outputs and
gradients.

On a machine without CUDA the kernels run through Triton's interpreter, in a process started with
``TRITON_INTERPRET=1`` (the ``interpreter`` marker; tests/conftest.py). The interpreter runs every
``tl`` op as a numpy call, so the cases here are small (regions of a few tokens to a few dozen,
16-lane blocks); full biformer_tiny stage sizes and bfloat16 run on a GPU in the tests marked
``gpu``.

Every comparison takes fresh seeded random inputs and checks ``||got - want|| / ||want||`` of the
output and of the q, k, v gradients, ``want`` from the reference run on the same inputs upcast to
float64 with the same routing index (routing in float32 and float64 may order near-ties
differently; ``test_routes_itself`` covers the kernels with ``index=None``).
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
from attnzoo.kernels.routed_attention import route_regions, routed_attention, routed_attention_op
from attnzoo.kernels.routed_attention._params import check_routed_inputs
from tests.kernels._triton_interp import (
    DEVICE, backend_env_fixture, assert_within, check_backend_none_picks_triton,
    check_compiles_and_exports_as_one_node, check_cpu_without_interpreter_picks_the_reference,
    forbid_kernel_launch, forbid_reference, gpu_tests, import_triton_backend, rel_error,
    small_case_tests,
)

triton_backend = import_triton_backend("attnzoo.kernels.routed_attention.triton")
pytestmark = pytest.mark.interpreter
from attnzoo.kernels.routed_attention._library import routed_triton  # noqa: E402
from attnzoo.kernels.routed_attention import _autotune  # noqa: E402  (after triton imports)


_backend_env = backend_env_fixture("ATTNZOO_ROUTED_AUTOTUNE")


# (output, gradient) bounds on ||got - want|| / ||want||, want = float64 reference.
# float32: float32 arithmetic with IEEE dot products (no TF32); measured maxima over CASES and the
# 60-case hypothesis sweep (interpreter): 1.9e-7 / 3.6e-7 (out / worst of dq, dk, dv). float16:
# P and dS are rounded to float16 for the P V, dS K and dS^T Q products and delta = rowsum(dO * O)
# uses the float16 O, as in FlashAttention; measured maxima 2.7e-4 / 1.9e-3 (dq and dk of cases
# with few keys per query, where the terms of dS cancel). bfloat16 (GPU only): 8x float16 for its
# 3 fewer mantissa bits, not measured here.
REL_TOL = {
    torch.float32: (1e-6, 2e-6),
    torch.float16: (1e-3, 6e-3),
    torch.bfloat16: (8e-3, 5e-2),
}


@dataclass(frozen=True)
class Case:
    batch: int
    h: int
    w: int
    heads: int
    num_regions: int
    topk: int
    head_dim: int = 16
    v_dim: int = 16
    pad: tuple = (0, 0)  # rows, cols of zero padding at the bottom / right before a "qkv projection"


def make_inputs(case: Case, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rand(dim):
        x = torch.randn(case.batch, case.h, case.w, case.heads, dim, generator=g)
        if any(case.pad):
            # as BiLevelRoutingAttention2d pads: the padded tokens are the qkv bias (zero input)
            bias = torch.randn(case.heads, dim, generator=g)
            x[:, case.h - case.pad[0]:] = bias
            x[:, :, case.w - case.pad[1]:] = bias
        return x.to(device=DEVICE, dtype=dtype)

    q, k, v, grad_out = rand(case.head_dim), rand(case.head_dim), rand(case.v_dim), rand(case.v_dim)
    return q, k, v, grad_out


def compare(case: Case, dtype: torch.dtype, seed: int, scale: Optional[float] = None, index="route") -> dict:
    """Triton vs float64 reference on the same inputs and index; asserts the bounds, returns the errors."""
    q, k, v, grad_out = make_inputs(case, dtype, seed)
    if isinstance(index, str):
        index = route_regions(q, k, case.num_regions, case.topk)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = routed_attention(q, k, v, case.num_regions, case.topk, scale=scale, index=index, backend="triton")
    assert out.dtype == dtype and out.shape == v.shape
    got = [out, *torch.autograd.grad(out, leaves, grad_out)]
    assert all(g.dtype == dtype and g.shape == t.shape for g, t in zip(got[1:], leaves))

    wide = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want_out = routed_attention(*wide, case.num_regions, case.topk, scale=scale, index=index, backend="reference")
    want = [want_out, *torch.autograd.grad(want_out, wide, grad_out.double())]

    out_tol, grad_tol = REL_TOL[dtype]
    # One key per query (topk 1, 1-token regions): the softmax is constant and the q and k
    # gradients are exactly zero up to the rounding of dP - delta (which cancels); those are
    # measured on the scale of the v gradient instead of their own (zero) norm.
    vanishing = case.topk * (case.h // case.num_regions) * (case.w // case.num_regions) == 1
    errors = {n: rel_error(a, b, want[3].norm() if vanishing and n in ("dq", "dk") else None)
              for n, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
    return assert_within(case, dtype, errors, out_tol, grad_tol)


# --- small cases: the interpreter on CPU, compiled kernels on a GPU ----------------------------

# biformer_tiny at 224 px: 7x7 regions, head_dim 32; stage 1: 56x56, 2 heads, topk 1 (8x8-token
# regions); stage 2: 28x28, 4 heads, topk 4 (4x4); stage 3: 14x14, 8 heads, topk 16 (2x2).
# Scaled down: fewer regions and tokens, the same heads, topk / regions ratio and packing regime.
CASES = {
    # one query tile per region (20 tokens > 16 lanes: two own tiles, two key tiles per slot)
    "stage1-like-8x10-s2-topk1": Case(1, 8, 10, 2, 2, 1),
    # 6-token regions: two (region, head) groups packed per program
    "stage2-like-6x9-s3-topk4": Case(1, 6, 9, 4, 3, 4),
    # 2x2-token regions, 8 heads: four groups per program, every region routed (topk = S * S)
    "stage3-like-6x6-s3-topk9": Case(1, 6, 6, 8, 3, 9),
    "stage3-like-6x6-s3-topk4": Case(2, 6, 6, 8, 3, 4),
    # 1-token regions: 16 groups per program
    "one-token-regions-5x5": Case(1, 5, 5, 2, 5, 3),
    "one-token-regions-3x4-h1": Case(2, 3, 4, 1, 1, 1, head_dim=24),  # S = 1: one 12-token region
    # H != W, odd, v_dim != head_dim, head dims not powers of two
    "odd-9x6-d24-dv40": Case(1, 9, 6, 3, 3, 2, head_dim=24, v_dim=40),
    # sizes below one tile
    "tiny-2x2-s2": Case(3, 2, 2, 1, 2, 2),
    # padded borders as BiLevelRoutingAttention2d makes them (7x5 input, S = 3 -> 9x6)
    "padded-9x6-s3": Case(1, 9, 6, 2, 3, 2, pad=(2, 1)),
}
FP16_CASES = ["stage2-like-6x9-s3-topk4", "stage3-like-6x6-s3-topk4", "odd-9x6-d24-dv40", "padded-9x6-s3"]


test_matches_reference_fp32, test_matches_reference_fp16 = small_case_tests(compare, CASES, FP16_CASES)


def test_topk_1_and_custom_scale():
    compare(Case(1, 6, 4, 2, 2, 1), torch.float32, seed=4, scale=0.61)


def test_every_region_routed_is_dense_attention():
    """topk = S * S: every query sees every key, whatever the index order."""
    case = Case(1, 6, 8, 2, 2, 4)
    q, k, v, _ = make_inputs(case, torch.float32, seed=9)
    index = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3], [2, 3, 1, 0], [1, 0, 3, 2]], device=DEVICE)[None]
    got = routed_attention(q, k, v, 2, 4, scale=0.3, index=index, backend="triton")
    qt, kt, vt = (t.flatten(1, 2).transpose(1, 2).double() for t in (q, k, v))  # [B, heads, N, dim]
    want = (((qt @ kt.transpose(-1, -2)) * 0.3).softmax(-1) @ vt).transpose(1, 2).reshape(v.shape)
    assert rel_error(got, want) <= REL_TOL[torch.float32][0]


def test_routes_itself():
    """index=None: routing in PyTorch (float32) inside the backend, then the kernels."""
    case = CASES["stage2-like-6x9-s3-topk4"]
    q, k, v, _ = make_inputs(case, torch.float32, seed=21)
    got = routed_attention(q, k, v, case.num_regions, case.topk, backend="triton")
    want = routed_attention(q, k, v, case.num_regions, case.topk, backend="reference")
    assert rel_error(got, want.double()) <= REL_TOL[torch.float32][0]


def test_popular_and_unrouted_key_regions():
    """Every query region routed to the same regions: one key region in every list, others in none
    (the reverse index's longest and empty lists; unrouted keys get zero gradient)."""
    case = Case(1, 6, 6, 2, 3, 2)
    index = torch.tensor([[4, 7]] * 9, device=DEVICE)[None]
    compare(case, torch.float32, seed=5, index=index)
    rev, start, count = triton_backend.reverse_index(index, 9)
    assert count.tolist() == [[0, 0, 0, 0, 9, 0, 0, 9, 0]]
    assert start[0, 4] == 0 and start[0, 7] == 9 and rev[0, :9].tolist() == list(range(9))


def test_non_contiguous_inputs():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 6, 3, 2, 16, device=DEVICE).unbind(3)  # slices of a packed qkv
    assert not q.is_contiguous()
    out = routed_attention(q, k, v, 2, 2, backend="triton")
    want = routed_attention(q, k, v, 2, 2, backend="reference")
    assert rel_error(out, want.double()) <= REL_TOL[torch.float32][0]


def test_uses_fused_kernels_not_the_reference(monkeypatch):
    """The triton backend must not run the reference's attention anywhere (e.g. in its backward)."""
    from attnzoo.kernels.routed_attention import reference

    forbid_reference(monkeypatch, reference, "_routed_reference", "_region_major")
    q, k, v, grad_out = make_inputs(Case(1, 4, 4, 2, 2, 2), torch.float32, seed=0)
    q.requires_grad_()
    routed_attention(q, k, v, 2, 2, backend="triton").backward(grad_out)
    assert torch.isfinite(q.grad).all()


def test_mixer_with_triton_backend_matches_reference():
    """BiLevelRoutingAttention2d end to end (its padding, qkv bias in the padded tokens, LePE)."""
    from attnzoo.layers.biformer_attn import BiLevelRoutingAttention2d

    torch.manual_seed(3)
    mixer = BiLevelRoutingAttention2d(32, 2, num_regions=3, topk=2).to(DEVICE)
    x = torch.randn(2, 7, 8, 32, device=DEVICE)  # padded to 9x9: 3x3-token regions
    mixer.backend = "triton"
    got = mixer(x)
    mixer.backend = "reference"
    want = mixer(x)
    assert rel_error(got, want.double()) <= 1e-5


def test_empty_batch_returns_empty(monkeypatch):
    forbid_kernel_launch(monkeypatch, triton_backend)
    q, k, v, _ = make_inputs(Case(0, 4, 4, 2, 2, 2), torch.float32, seed=0)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = routed_attention(q, k, v, 2, 2, backend="triton")
    assert out.shape == v.shape
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


# --- the kernels as torch.library custom ops -------------------------------------------------------

def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of
    ``attnzoo::routed_fwd`` and ``attnzoo::routed_bwd`` (torch.library.opcheck's whole battery)."""
    from attnzoo.kernels.routed_attention._library import routed_bwd, routed_fwd

    q, k, v, grad_out = make_inputs(Case(1, 2, 2, 1, 2, 2), torch.float32, seed=1)
    index = route_regions(q, k, 2, 2)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), index, 2, 0.25)
    torch.library.opcheck(routed_fwd, args)
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = routed_fwd(q, k, v, index, 2, 0.25)
    torch.library.opcheck(routed_bwd, (grad_out, q, k, v, index, out, lse, 2, 0.25))


def test_compiles_without_graph_breaks_and_exports_as_one_node():
    """torch.compile(fullgraph=True) over routing (PyTorch) + the fused op: forward and backward
    equal to eager; torch.export records one ``attnzoo.routed_fwd`` call."""
    q, k, v, grad_out = make_inputs(Case(1, 4, 4, 2, 2, 2), torch.float32, seed=5)

    def run(q, k, v):
        return routed_attention(q, k, v, 2, 2, backend="triton")

    targets = check_compiles_and_exports_as_one_node(run, (q, k, v), grad_out, torch.ops.attnzoo.routed_fwd.default)
    assert not any("scaled_dot_product" in str(t) for t in targets)


# --- block configurations (no kernel runs) -------------------------------------------------------

@pytest.mark.parametrize("tokens,own,inner,want", [
    (64, 64, 64, dict(OT=64, G=1, IT=64, RG=1)),  # biformer stage 1 at 224 px: one region per program
    (4, 16, 64, dict(OT=4, G=4, IT=4, RG=4)),  # stage 3: 4 heads x 4 tokens, 4 routed regions per step
    (16, 16, 64, dict(OT=16, G=1, IT=16, RG=4)),
    (1, 16, 16, dict(OT=1, G=16, IT=1, RG=1)),
    (361, 64, 32, dict(OT=64, G=1, IT=32, RG=1)),  # 19x19-token regions (512 px): tiles of a region
    (20, 64, 64, dict(OT=20, G=3, IT=20, RG=1)),
])
def test_packing(tokens, own, inner, want):
    assert _autotune.packing(tokens, own, inner, max_slots=16) == want


def test_packing_caps_region_slots_at_topk():
    assert _autotune.packing(4, 16, 64, max_slots=1)["RG"] == 1


@pytest.mark.parametrize("which", ["fwd", "dq", "dkdv"])
@pytest.mark.parametrize("tokens,head", [(1, 32), (4, 32), (64, 32), (361, 128), (1276, 64)])
def test_pruning_and_default_config(which, tokens, head):
    named = dict(RH=tokens, RW=1, D=head, DV=head, DOT_PRECISION="tf32")
    kept = _autotune.SPACES[which].kept(named)
    assert kept
    assert all(c.kwargs["BLOCK_M"] <= max(16, 2 ** (tokens - 1).bit_length()) for c in kept)
    assert which != "dkdv" or all(c.num_stages == 1 for c in kept)
    default = _autotune.SPACES[which].default_config(named)
    assert default["BLOCK_M"] in (c.kwargs["BLOCK_M"] for c in kept)


# --- dispatch ------------------------------------------------------------------------------------

def _select_args(dtype=torch.float32, head_dim=16, v_dim=16, device=DEVICE):
    q = torch.randn(1, 4, 6, 2, head_dim, dtype=dtype, device=device)
    k = torch.randn(1, 4, 6, 2, head_dim, dtype=dtype, device=device)
    v = torch.randn(1, 4, 6, 2, v_dim, dtype=dtype, device=device)
    params, scale, index = check_routed_inputs(q, k, v, 2, 2, None, None)
    return q, k, v, params, scale, index


@pytest.mark.parametrize("what,kwargs,reason", [
    ("float64", dict(dtype=torch.float64), "dtype torch.float64 is not supported \\(float16, bfloat16 or float32\\)"),
    ("head-dim-20", dict(head_dim=20), "head_dim 20 is not supported \\(a multiple of 8 in \\[16, 128\\]\\)"),
    ("head-dim-136", dict(head_dim=136), "head_dim 136"),
    ("v-dim-12", dict(v_dim=12), "v_dim 12 is not supported"),
])
def test_unsupported_input_is_refused_with_the_reason(what, kwargs, reason):
    args = _select_args(**kwargs)
    assert re.search(reason, triton_backend.can_run_triton(*args))
    with pytest.raises(BackendUnavailableError, match=reason):
        routed_attention(*args[:3], 2, 2, backend="triton")
    # backend=None falls back to the reference for the same inputs
    assert routed_attention_op.select(None, *args) is routed_attention_op.reference


def test_cpu_without_interpreter_picks_the_reference(monkeypatch):
    args = _select_args(device="cpu")
    check_cpu_without_interpreter_picks_the_reference(
        monkeypatch, routed_attention_op, args, lambda: routed_attention(*args[:3], 2, 2, backend="triton"))


def test_backend_none_picks_triton_where_it_can_run(monkeypatch):
    assert routed_attention_op.backends == ("reference", "triton")
    check_backend_none_picks_triton(monkeypatch, routed_attention_op, _select_args(), routed_triton)


# --- extended: hypothesis sweep ------------------------------------------------------------------

@st.composite
def triton_cases(draw):
    s = draw(st.integers(1, 4))
    rh, rw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    head_dim = draw(st.sampled_from([16, 24, 32]))
    return Case(
        batch=draw(st.integers(1, 2)), h=s * rh, w=s * rw, heads=draw(st.integers(1, 4)), num_regions=s,
        topk=draw(st.integers(1, s * s)), head_dim=head_dim, v_dim=draw(st.sampled_from([head_dim, 16, 40])),
    )


@pytest.mark.extended
@settings(derandomize=True, deadline=None, max_examples=60)
@given(case=triton_cases(), dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_sweep(case, dtype, seed):
    compare(case, dtype, seed)


# --- GPU: full sizes and bfloat16 ----------------------------------------------------------------

GPU_CASES = {
    # biformer_tiny at 224 px, batch 4
    "stage1-56x56-8x8-topk1": Case(4, 56, 56, 2, 7, 1, head_dim=32, v_dim=32),
    "stage2-28x28-4x4-topk4": Case(4, 28, 28, 4, 7, 4, head_dim=32, v_dim=32),
    "stage3-14x14-2x2-topk16": Case(4, 14, 14, 8, 7, 16, head_dim=32, v_dim=32),
    # segmentation at 512 px: stage 1 padded 128 -> 133 (19x19-token regions), stage 3 32 -> 35
    "seg-stage1-133x133-topk1": Case(2, 133, 133, 2, 7, 1, head_dim=32, v_dim=32, pad=(5, 5)),
    "seg-stage3-35x35-topk16": Case(2, 35, 35, 8, 7, 16, head_dim=32, v_dim=32, pad=(3, 3)),
    # large head dims, every region routed, 1-token regions
    "d128-21x14-topk49": Case(2, 21, 14, 2, 7, 49, head_dim=128, v_dim=128),
    "one-token-7x7-topk8": Case(8, 7, 7, 8, 7, 8, head_dim=64, v_dim=64),
}


# Large enough to go through the autotuner (batch * heads * tokens >= 2**18).
_TUNED = Case(32, 56, 56, 2, 7, 1, head_dim=32, v_dim=32)
test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu = gpu_tests(
    compare, GPU_CASES, CASES, ["stage2-like-6x9-s3-topk4", "one-token-regions-5x5", "odd-9x6-d24-dv40"],
    autotune_variable="ATTNZOO_ROUTED_AUTOTUNE", autotune_spaces=_autotune.SPACES,
    autotuned_case=_TUNED, autotuned_size=_TUNED.batch * _TUNED.heads * _TUNED.h * _TUNED.w,
)
