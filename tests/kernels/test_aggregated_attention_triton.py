"""aggregated_attention's fused Triton backend (TransNeXt) against the reference, output and the
gradient of every tensor input.

On a machine without CUDA the kernels run through Triton's interpreter, in a process started with
``TRITON_INTERPRET=1`` (the ``interpreter`` marker; tests/conftest.py). The interpreter runs every
``tl`` op as a numpy call, so the cases here are small maps; full transnext_micro stage sizes and
bfloat16 (which the interpreter does not emulate faithfully) run on a GPU in the tests marked
``gpu``.

Every comparison takes fresh seeded random inputs (the small learned tensors at trained-model
scales, never zeros) and checks ``||got - want|| / ||want||`` of the output and of the gradients of
q, k, v, k_pool, v_pool, query_embedding, temperature, pool_bias, local_bias, learnable_tokens
and learnable_bias, with ``want`` from the reference run on the same inputs upcast to float64.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.kernels import BackendUnavailableError
from attnzoo.kernels.aggregated_attention import (
    aggregated_attention, aggregated_attention_op, length_scaled_attention,
)
from attnzoo.kernels.aggregated_attention._params import check_aggregated_inputs
from tests.kernels._triton_interp import (
    CUDA, DEVICE, backend_env_fixture, assert_within, check_backend_none_picks_triton,
    check_compiles_and_exports_as_one_node, check_cpu_without_interpreter_picks_the_reference,
    forbid_reference, gpu_tests, import_triton_backend, rel_error, small_case_tests,
)

triton_backend = import_triton_backend("attnzoo.kernels.aggregated_attention.triton")
pytestmark = pytest.mark.interpreter
from attnzoo.kernels.aggregated_attention._library import aggregated_triton  # noqa: E402
from attnzoo.kernels.aggregated_attention import _autotune  # noqa: E402  (after triton imports)


_backend_env = backend_env_fixture("ATTNZOO_AGGREGATED_AUTOTUNE")


# (output, gradient) bounds on ||got - want|| / ||want||, want = float64 reference.
# float32: float32 arithmetic with IEEE dot products (no TF32); measured maxima over the
# interpreter cases below (one seed each): 1.3e-7 (output) / 8.5e-7 (worst gradient, k_pool's).
# float16: s, the normalised pooled keys, the softmax weights and dS are rounded to float16 for
# the tl.dot products (as in FlashAttention), delta uses the float16 output; measured maxima
# 3.4e-4 / 1.2e-3 (k_pool's; all gradients but temperature's, see TEMPERATURE_TOL).
# bfloat16 (GPU only): 8x float16 for its 3 fewer mantissa bits, not measured here.
REL_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 5e-3),
    torch.bfloat16: (8e-3, 4e-2),
}
# temperature's gradient is one number per head, a sum over every (query, key) pair of
# dS * logit whose terms cancel; in float16 the logits carry the rounding of s and k^ to float16
# (tensor-core operands): measured maxima 6.9e-6 (float32) and 5.6e-3 (float16, the bias-free
# length-scaled 3x4 case: one head, 12 queries).
TEMPERATURE_TOL = {torch.float32: 5e-5, torch.float16: 2e-2, torch.bfloat16: 1.6e-1}

NAMES = ("q", "k", "v", "k_pool", "v_pool", "query_embedding", "temperature", "pool_bias", "local_bias",
         "learnable_tokens", "learnable_bias")
OPTIONAL = ("pool_bias", "local_bias", "learnable_tokens", "learnable_bias")


@dataclass(frozen=True)
class Case:
    height: int
    width: int
    heads: int
    pool: int  # P; for length-scaled (window None) it must be height * width
    window: Optional[int] = 3
    batch: int = 1
    head_dim: int = 16
    v_dim: int = 16
    optional: bool = True  # pool_bias, local_bias, learnable_tokens, learnable_bias given


def make_inputs(case: Case, dtype: torch.dtype, seed: int, small_dtype: Optional[torch.dtype] = None) -> dict:
    """Every tensor input of the op, seeded; the small tensors at the scales a trained model reaches."""
    g = torch.Generator().manual_seed(seed)
    b, h, w, nh, d, dv, P = case.batch, case.height, case.width, case.heads, case.head_dim, case.v_dim, case.pool

    def r(*shape, std=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * std).to(device=DEVICE, dtype=dt)

    sd = small_dtype or dtype
    i = dict(q=r(b, h, w, nh, d), query_embedding=r(nh, d, std=0.3, dt=sd), temperature=r(nh, std=0.5, dt=sd))
    if case.window is None:
        i.update(k=r(b, h, w, nh, d), v=r(b, h, w, nh, dv))
        if case.optional:
            i["pool_bias"] = r(nh, h * w, h * w, std=0.5, dt=sd)
        return i
    L = case.window ** 2
    i.update(k=r(b, h, w, nh, d), v=r(b, h, w, nh, dv), k_pool=r(b, P, nh, d), v_pool=r(b, P, nh, dv))
    if case.optional:
        i.update(pool_bias=r(nh, h * w, P, std=0.5, dt=sd), local_bias=r(nh, L, std=0.5, dt=sd),
                 learnable_tokens=r(nh, d, L, std=0.3, dt=sd), learnable_bias=r(nh, L, std=0.3, dt=sd))
    return i


def call(i: dict, case: Case, backend: str) -> torch.Tensor:
    if case.window is None:
        return length_scaled_attention(i["q"], i["k"], i["v"], query_embedding=i["query_embedding"],
                                       temperature=i["temperature"], bias=i.get("pool_bias"), backend=backend)
    return aggregated_attention(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                                temperature=i["temperature"], pool_bias=i.get("pool_bias"), local_bias=i.get("local_bias"),
                                learnable_tokens=i.get("learnable_tokens"), learnable_bias=i.get("learnable_bias"),
                                window_size=case.window, backend=backend)


def compare(case: Case, dtype: torch.dtype, seed: int, small_dtype: Optional[torch.dtype] = None) -> dict:
    """Triton vs float64 reference on the same inputs; asserts the bounds, returns the errors."""
    inputs = make_inputs(case, dtype, seed, small_dtype)
    names = [n for n in NAMES if n in inputs]
    for t in inputs.values():
        t.requires_grad_()
    out = call(inputs, case, "triton")
    assert out.dtype == dtype and out.shape == (case.batch, case.height, case.width, case.heads, case.v_dim)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=DEVICE, dtype=dtype)
    got = [out, *torch.autograd.grad(out, [inputs[n] for n in names], grad_out)]
    assert all(g.dtype == inputs[n].dtype for g, n in zip(got[1:], names))

    wide = {n: t.detach().double().requires_grad_() for n, t in inputs.items()}
    want_out = call(wide, case, "reference")
    want = [want_out, *torch.autograd.grad(want_out, [wide[n] for n in names], grad_out.double())]

    out_tol, grad_tol = REL_TOL[dtype]
    errors = {n: rel_error(a, b) for n, a, b in zip(("out", *names), got, want)}
    return assert_within(case, dtype, errors, out_tol, grad_tol, bounds=dict(temperature=TEMPERATURE_TOL[dtype]))


# --- small cases: the interpreter on CPU, compiled kernels on a GPU ----------------------------

CASES = {
    # H != W, not powers of two, two tiles of 16 queries; P = 20: two pooled blocks
    "odd-5x7-p20": Case(5, 7, heads=2, pool=20),
    # v_dim != head_dim, non-power-of-two head_dim, batch 2 (pool_bias's gradient sums the batch)
    "dims-24-32-batch2": Case(4, 3, heads=1, pool=6, batch=2, head_dim=24, v_dim=32),
    # transnext_micro's stages scaled down: head_dim 24 throughout, heads 2 / 4 / 8 / 16, pooled
    # grid (H // sr) x (W // sr) with sr 8 / 4 / 2, stage 4 length-scaled (P = H * W)
    "micro-stage1-8x17-sr8": Case(8, 17, heads=2, pool=1 * 2, head_dim=24, v_dim=24),
    "micro-stage2-4x9-sr4": Case(4, 9, heads=4, pool=1 * 2, head_dim=24, v_dim=24),
    "micro-stage3-4x5-sr2": Case(4, 5, heads=8, pool=2 * 2, head_dim=24, v_dim=24),
    "micro-stage4-3x5-full": Case(3, 5, heads=16, pool=15, window=None, head_dim=24, v_dim=24),
    # smaller than one tile; window 5 crossing every border
    "tiny-3x4-window5": Case(3, 4, heads=1, pool=3, window=5),
    # window larger than the map, single row, one pooled token
    "window7-on-2x3": Case(2, 3, heads=1, pool=1, window=7),
    "row-1x9-p1": Case(1, 9, heads=1, pool=1),
    # window 1 (centre only)
    "window1-4x4": Case(4, 4, heads=1, pool=2, window=1),
    # no optional tensors (zeros): the HAS_* = False paths
    "bare-4x5": Case(4, 5, heads=2, pool=3, optional=False),
    "length-scaled-bare-3x4": Case(3, 4, heads=1, pool=12, window=None, optional=False),
}
FP16_CASES = ["odd-5x7-p20", "dims-24-32-batch2", "micro-stage4-3x5-full"]


test_matches_reference_fp32, test_matches_reference_fp16 = small_case_tests(compare, CASES, FP16_CASES)


def test_float32_small_params_with_float16_activations():
    """fp32 parameters meet fp16 activations (autocast): cast by the op, gradients stay float32."""
    compare(CASES["tiny-3x4-window5"], torch.float16, seed=4, small_dtype=torch.float32)


def test_non_contiguous_inputs():
    case = CASES["bare-4x5"]
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 4, 5, 2, 2, 16, generator=g).to(DEVICE).unbind(3)  # slices of a packed kv
    assert not k.is_contiguous()
    i = dict(make_inputs(case, torch.float32, seed=1), k=k, v=v)
    out = call(i, case, "triton")
    assert rel_error(out, call(i, case, "reference").double()) <= REL_TOL[torch.float32][0]


def test_uses_fused_kernels_not_the_reference(monkeypatch):
    """The triton backend must not call the reference anywhere (e.g. in its backward)."""
    from attnzoo.kernels.aggregated_attention import reference

    forbid_reference(monkeypatch, reference, "_aggregated_reference", "_windows")
    forbid_reference(monkeypatch, aggregated_attention_op, "reference")
    case = CASES["tiny-3x4-window5"]
    i = make_inputs(case, torch.float32, seed=0)
    i["q"].requires_grad_()
    call(i, case, "triton").sum().backward()
    assert torch.isfinite(i["q"].grad).all()


@pytest.mark.parametrize("window", [3, None])
def test_empty_batch_returns_empty(window):
    case = replace(CASES["bare-4x5"], window=window, pool=20 if window is None else 3)
    i = {n: (t[:0] if n in ("q", "k", "v", "k_pool", "v_pool") else t).requires_grad_()
         for n, t in make_inputs(case, torch.float32, seed=0).items()}
    out = call(i, case, "triton")
    assert out.shape == (0, 4, 5, 2, 16)
    out.sum().backward()
    assert i["q"].grad.shape == i["q"].shape and i["k"].grad.shape == i["k"].shape
    assert (i["temperature"].grad == 0).all()


# --- the kernels as torch.library custom ops -------------------------------------------------------

OP_ORDER = ("q", "k", "v", "k_pool", "v_pool", "pool_bias", "local_bias", "query_embedding", "temperature",
            "learnable_tokens", "learnable_bias")  # the custom ops' (and the dispatcher's) argument order


def _op_args(case: Case, seed: int = 0):
    i = make_inputs(case, torch.float32, seed)
    return tuple(i.get(n) for n in OP_ORDER) + (case.window,)


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of
    ``attnzoo::aggregated_fwd`` and ``attnzoo::aggregated_bwd`` (torch.library.opcheck's battery)."""
    from attnzoo.kernels.aggregated_attention._library import aggregated_bwd, aggregated_fwd

    case = Case(2, 3, heads=1, pool=2)
    args = _op_args(case)
    for t in args[:-1]:
        t.requires_grad_()
    torch.library.opcheck(aggregated_fwd, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, lse = aggregated_fwd(*plain)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    torch.library.opcheck(aggregated_bwd, (grad_out, *plain[:-1], out, lse, case.window, True))


def test_custom_op_compiles_without_graph_breaks_and_exports_as_one_node():
    """torch.compile(fullgraph=True) captures the fused op (forward and backward equal to eager), and
    torch.export records one ``attnzoo.aggregated_fwd`` call, not the Python around it."""
    case = Case(3, 4, heads=1, pool=2)
    inputs = make_inputs(case, torch.float32, seed=5)
    grad_out = torch.randn(1, 3, 4, 1, 16, generator=torch.Generator().manual_seed(6)).to(DEVICE)

    def run(*tensors):
        return call(dict(zip(NAMES, tensors)), case, "triton")

    args = tuple(inputs[n] for n in NAMES)
    targets = check_compiles_and_exports_as_one_node(run, args, grad_out, torch.ops.attnzoo.aggregated_fwd.default)
    assert not any("einsum" in str(t) or "softmax" in str(t) for t in targets)


# --- dispatch and refusals -----------------------------------------------------------------------

def _select_args(dtype=torch.float32, head_dim=16, v_dim=16, window=3, device=DEVICE):
    case = Case(3, 4, heads=2, pool=2, window=window, head_dim=head_dim, v_dim=v_dim)
    i = {n: t.to(device) for n, t in make_inputs(case, dtype, seed=0).items()}
    params = check_aggregated_inputs(*(i.get(n) for n in ("q", "k", "v", "k_pool", "v_pool", "pool_bias", "local_bias",
                                                            "query_embedding", "temperature", "learnable_tokens",
                                                            "learnable_bias")), window)
    return case, i, tuple(i.get(n) for n in ("q", "k", "v", "k_pool", "v_pool", "pool_bias", "local_bias",
                                               "query_embedding", "temperature", "learnable_tokens",
                                               "learnable_bias")) + (params,)


@pytest.mark.parametrize("what,kwargs,reason", [
    ("float64", dict(dtype=torch.float64), "q dtype torch.float64 is not supported"),
    ("head-dim-20", dict(head_dim=20), r"head_dim 20 is not supported \(a multiple of 8 in \[16, 128\]\)"),
    ("head-dim-136", dict(head_dim=136), "head_dim 136"),
    ("v-dim-12", dict(v_dim=12), "v_dim 12"),
    ("window-9", dict(window=9), r"window_size 9 is not supported \(odd, 1 to 7\)"),
])
def test_unsupported_input_is_refused_with_the_reason(what, kwargs, reason):
    case, i, args = _select_args(**kwargs)
    assert triton_backend.can_run_triton(*args) is not None
    import re
    assert re.search(reason, triton_backend.can_run_triton(*args))
    with pytest.raises(BackendUnavailableError, match=reason):
        call(i, case, "triton")
    # backend=None falls back to the reference for the same inputs
    assert aggregated_attention_op.select(None, *args) is aggregated_attention_op.reference


def test_cpu_without_interpreter_picks_the_reference(monkeypatch):
    case, i, args = _select_args(device="cpu")
    check_cpu_without_interpreter_picks_the_reference(
        monkeypatch, aggregated_attention_op, args, lambda: call(i, case, "triton"))


@pytest.mark.parametrize("window", [3, None])
def test_backend_none_picks_triton_where_it_can_run(monkeypatch, window):
    """Both public functions (length_scaled_attention is window None) dispatch to the kernels."""
    case = Case(3, 4, heads=2, pool=12 if window is None else 2, window=window)
    i = make_inputs(case, torch.float32, seed=0)
    k_pool = i["k"].flatten(1, 2) if window is None else i["k_pool"]
    v_pool = i["v"].flatten(1, 2) if window is None else i["v_pool"]
    k, v = (None, None) if window is None else (i["k"], i["v"])
    params = check_aggregated_inputs(i["q"], k, v, k_pool, v_pool, i.get("pool_bias"), i.get("local_bias"),
                                     i["query_embedding"], i["temperature"], i.get("learnable_tokens"),
                                     i.get("learnable_bias"), window)
    args = (i["q"], k, v, k_pool, v_pool, i.get("pool_bias"), i.get("local_bias"), i["query_embedding"],
            i["temperature"], i.get("learnable_tokens"), i.get("learnable_bias"), params)
    check_backend_none_picks_triton(monkeypatch, aggregated_attention_op, args, aggregated_triton)


# --- tile configurations (no kernel runs) --------------------------------------------------------

def _named(h, w, pool, d=24, window=3):
    return dict(HH=h, WW=w, P=pool, D=d, DV=d, WS=window)


@pytest.mark.parametrize("which", ["fwd", "bwd_q", "bwd_k"])
def test_pruning_fits_the_pooled_length_and_registers(which):
    space = _autotune.SPACES[which]
    kept = space.kept(_named(56, 56, 49))
    assert kept
    assert all(c.kwargs.get("BLOCK_P", 64) <= 64 for c in kept)
    small = space.kept(_named(56, 56, 9))
    assert all(c.kwargs.get("BLOCK_P", 16) == 16 for c in small)
    big = space.kept(_named(56, 56, 49, d=128))
    assert big and all(c.kwargs["BLOCK_M"] * 128 <= 64 * 128 or c.num_warps == 8 for c in big)


def test_pruning_of_tiny_maps_keeps_the_fewest_lanes():
    kept = _autotune.SPACES["fwd"].kept(_named(2, 3, 1))
    assert kept and len({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_P"]) for c in kept}) == 1


# --- bench-ops case module -----------------------------------------------------------------------

def test_bench_small_cases_run_and_agree():
    """Every small bench-ops case runs one forward and one forward+backward step on this machine
    for each backend that can, and the backends' outputs agree."""
    from attnzoo.tools import bench_ops_aggregated as bench

    device = torch.device(DEVICE)
    for name, case in bench.SMALL_CASES.items():
        assert case.name == name and case.describe()
        assert bench.min_bytes(case, 4, True) > bench.min_bytes(case, 4, False) > 0
        assert bench.attention_flops(case, True) > bench.attention_flops(case, False) > 0
        outputs = {}
        for backend in bench.BACKENDS:
            step, reason = bench.runner(backend, case, device, torch.float32, False, {})
            if step is None:
                assert reason, backend
                continue
            outputs[backend] = step()
            back, reason = bench.runner(backend, case, device, torch.float32, True, {})
            if back is None:  # FlexAttention has no backward on the CPU
                assert backend == "flex" and not CUDA, reason
                continue
            assert all(torch.isfinite(g).all() for g in back())
        assert "reference" in outputs and ("triton" in outputs or not CUDA and not triton_backend.INTERPRETER)
        for backend, out in outputs.items():
            assert rel_error(out, outputs["reference"].double()) <= 1e-5, (name, backend)


# --- extended: hypothesis sweep ------------------------------------------------------------------

@st.composite
def triton_cases(draw):
    window = draw(st.sampled_from([1, 3, 3, 5, 7, None]))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    head_dim = draw(st.sampled_from([16, 24, 32]))
    pool = h * w if window is None else draw(st.integers(1, 20))
    return Case(h, w, heads=draw(st.integers(1, 2)), pool=pool, window=window, batch=draw(st.integers(1, 2)),
                head_dim=head_dim, v_dim=draw(st.sampled_from([head_dim, 16, 40])), optional=draw(st.booleans()))


@pytest.mark.extended
@settings(derandomize=True, deadline=None, max_examples=40)
@given(case=triton_cases(), dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_sweep(case, dtype, seed):
    compare(case, dtype, seed)


# --- GPU: full sizes and bfloat16 ----------------------------------------------------------------

# transnext_micro at 224 px (heads 2 / 4 / 8 / 16, head_dim 24, P = 7 x 7) and a detection-size
# stage 1 of transnext_tiny (800 x 1216 input: 200 x 304 map, P = 25 x 38, heads 3)
GPU_CASES = {
    "micro-stage1-56x56": Case(56, 56, heads=2, pool=49, batch=2, head_dim=24, v_dim=24),
    "micro-stage2-28x28": Case(28, 28, heads=4, pool=49, batch=2, head_dim=24, v_dim=24),
    "micro-stage3-14x14": Case(14, 14, heads=8, pool=49, batch=2, head_dim=24, v_dim=24),
    "micro-stage4-7x7": Case(7, 7, heads=16, pool=49, window=None, batch=2, head_dim=24, v_dim=24),
    "tiny-detection-stage1-200x304": Case(200, 304, heads=3, pool=25 * 38, head_dim=24, v_dim=24),
    "odd-45x61-d128-window5": Case(45, 61, heads=2, pool=77, window=5, head_dim=128, v_dim=128),
}


# Large enough to go through the autotuner (batch * heads * positions >= 2**18).
_TUNED = replace(GPU_CASES["micro-stage1-56x56"], batch=48)
test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu = gpu_tests(
    compare, GPU_CASES, CASES, ["odd-5x7-p20", "micro-stage4-3x5-full", "window7-on-2x3"],
    autotune_variable="ATTNZOO_AGGREGATED_AUTOTUNE", autotune_spaces=_autotune.SPACES,
    autotuned_case=_TUNED, autotuned_size=_TUNED.batch * _TUNED.heads * _TUNED.height * _TUNED.width,
)
