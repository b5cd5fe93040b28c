"""halo_attention against a brute-force per-query oracle (``halo_attention_oracle.py``): outputs and
the gradients of q, k, v and both relative tables, with a relative error ``||got - want|| / ||want||``
bounded per dtype; low-precision inputs are compared against the oracle on the same inputs upcast
to float64. Plus the semantics that are easy to get wrong (unmasked zero keys at the border), the
FLOP count, dispatch and bad input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from attnzoo.kernels import BackendUnavailableError, count_op_flops
from attnzoo.kernels.halo_attention import HaloParams, halo_attention, halo_attention_flops, halo_attention_op

from .halo_attention_oracle import halo_attention_oracle

# (output, gradients). The reference runs in float32 (float64 for float64 inputs); the fp16 / bf16
# bounds cover the rounding of the output and of the gradients to the input dtype.
REL_TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@dataclass(frozen=True)
class Case:
    height: int
    width: int
    block_size: int
    halo_size: int
    query_stride: int = 1
    heads: int = 2
    head_dim: int = 8
    v_dim: int = 8
    batch: int = 2
    scale: Optional[float] = None

    def inputs(self, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        s = self.query_stride
        win = self.block_size + 2 * self.halo_size
        shapes = dict(
            q=(self.batch, self.height // s, self.width // s, self.heads, self.head_dim),
            k=(self.batch, self.height, self.width, self.heads, self.head_dim),
            v=(self.batch, self.height, self.width, self.heads, self.v_dim),
            height_rel=(2 * win - 1, self.head_dim),
            width_rel=(2 * win - 1, self.head_dim),
        )
        return {n: torch.randn(shape, generator=g).to(dtype).requires_grad_() for n, shape in shapes.items()}

    def kwargs(self):
        return dict(block_size=self.block_size, halo_size=self.halo_size, query_stride=self.query_stride, scale=self.scale)


CASES = [
    Case(8, 8, 4, 1),
    Case(8, 12, 4, 2, query_stride=2, v_dim=6),  # strided queries (timm's stride-2 blocks), v_dim != head_dim
    Case(6, 9, 3, 0, heads=1, head_dim=4, v_dim=4),  # no halo: plain blocked attention; odd sizes
    Case(4, 8, 2, 3, head_dim=4, v_dim=5),  # halo wider than the block: windows reach far past the grid
    Case(7, 7, 7, 2, query_stride=1, batch=1, scale=0.3),  # one block (haloregnetz_b's block size), custom scale
    Case(8, 8, 4, 1, query_stride=4, batch=1),  # one query per block
]


def _rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def _check(case: Case, dtype):
    inputs = case.inputs(dtype)
    out = halo_attention(**inputs, **case.kwargs(), backend="reference")
    assert out.dtype == dtype and out.shape == inputs["q"].shape[:4] + (case.v_dim,)
    upcast = {n: t.detach().double().requires_grad_() for n, t in inputs.items()}
    want = halo_attention_oracle(**upcast, **case.kwargs())
    out_tol, grad_tol = REL_TOL[dtype]
    assert _rel_err(out, want) <= out_tol

    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_out.to(dtype))
    want.backward(grad_out)
    for name in inputs:
        got, ref = inputs[name].grad, upcast[name].grad
        assert got is not None and got.dtype == dtype, name
        assert _rel_err(got, ref) <= grad_tol, f"{name}: {_rel_err(got, ref):.2e}"


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_oracle_outputs_and_gradients(case, dtype):
    _check(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_oracle_in_low_precision(dtype):
    _check(CASES[1], dtype)


def test_zero_padded_keys_take_part_in_the_softmax():
    """With q = 0 every logit is 0, so each query averages its whole window; at the border the
    window's outside positions are zero values that still count: a corner query of a 8x8 grid with
    4x4 blocks and halo 2 sees 6 x 6 inside positions out of 8 x 8."""
    q = torch.zeros(1, 8, 8, 1, 4)
    k = torch.randn(1, 8, 8, 1, 4)
    v = torch.ones(1, 8, 8, 1, 1)
    rel = torch.randn(2 * 8 - 1, 4)
    out = halo_attention(q, k, v, rel, rel, block_size=4, halo_size=2)
    torch.testing.assert_close(out[0, 0, 0, 0, 0], torch.tensor(36 / 64))
    torch.testing.assert_close(out[0, 3, 3, 0, 0], torch.tensor(36 / 64))  # same block, same window
    # without a halo there is no padding and every weight is inside
    out = halo_attention(q, k, v, rel[4:-4], rel[4:-4], block_size=4, halo_size=0)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_relative_logits_are_shared_by_heads_and_not_scaled():
    """Equal heads give equal outputs (one table for all heads), and the relative logits are not
    multiplied by ``scale``: with k = 0 the scale must not matter."""
    case = Case(8, 8, 4, 1, heads=1)
    x = case.inputs(torch.float64)
    q, v = x["q"].detach(), x["v"].detach()
    k = torch.zeros_like(v)
    q2, k2, v2 = (t.expand(-1, -1, -1, 2, -1) for t in (q, k, v))
    out = halo_attention(q2, k2, v2, x["height_rel"].detach(), x["width_rel"].detach(), 4, 1)
    torch.testing.assert_close(out[..., 0, :], out[..., 1, :], rtol=0, atol=0)
    scaled = halo_attention(q2, k2, v2, x["height_rel"].detach(), x["width_rel"].detach(), 4, 1, scale=7.0)
    torch.testing.assert_close(scaled, out)


def test_flop_count_is_the_math():
    case = CASES[1]
    inputs = {n: t.detach() for n, t in case.inputs(torch.float32).items()}
    with count_op_flops() as records:
        halo_attention(**inputs, **case.kwargs())
    (rec,) = records
    queries = (case.height // 2) * (case.width // 2)
    win = case.block_size + 2 * case.halo_size
    expected = 2 * case.batch * case.heads * queries * (win * win * (case.head_dim + case.v_dim) + 2 * win * case.head_dim)
    assert rec.op == "halo_attention" and rec.math == expected
    assert halo_attention_flops(HaloParams((case.height, case.width), 4, 2, 2), case.batch, case.heads, case.head_dim, case.v_dim) == expected
    assert rec.executed > 0


def test_dispatch_uses_the_reference_and_refuses_missing_backends():
    case = CASES[0]
    inputs = {n: t.detach() for n, t in case.inputs(torch.float32).items()}
    assert halo_attention_op.backends == ("reference", "triton")  # triton refuses CPU inputs (below)
    torch.testing.assert_close(halo_attention(**inputs, **case.kwargs()), halo_attention(**inputs, **case.kwargs(), backend="reference"))
    with pytest.raises(BackendUnavailableError, match="triton"):
        halo_attention(**inputs, **case.kwargs(), backend="triton")
    with pytest.raises(ValueError, match="backend"):
        halo_attention(**inputs, **case.kwargs(), backend="cuda")


def _bad(**changes):
    inputs = {n: t.detach() for n, t in Case(8, 8, 4, 1).inputs(torch.float32).items()}
    kwargs = dict(block_size=4, halo_size=1, query_stride=1, scale=None)
    for key, value in changes.items():
        (inputs if key in inputs else kwargs)[key] = value
    return inputs, kwargs


@pytest.mark.parametrize("changes,match", [
    (dict(block_size=0), "block_size must be an int >= 1"),
    (dict(block_size=3), "multiple of block_size"),
    (dict(halo_size=-1), "halo_size must be an int >= 0"),
    (dict(query_stride=3), "query_stride must divide block_size"),
    (dict(query_stride=2), "q must be"),
    (dict(k=torch.randn(2, 8, 8, 2)), "k must be"),
    (dict(k=torch.randn(2, 8, 8, 2, 8).long()), "k must be a floating point"),
    (dict(q=torch.randn(2, 8, 8, 2, 4)), "q must be"),
    (dict(v=torch.randn(2, 8, 4, 2, 8)), "v must be"),
    (dict(v=torch.randn(2, 8, 8, 2, 8).double()), "v must have the dtype of k"),
    (dict(height_rel=torch.randn(9, 8)), "height_rel must have shape"),
    (dict(width_rel=torch.randn(11, 4)), "width_rel must have shape"),
    (dict(width_rel=[0.0]), "width_rel must be a torch.Tensor"),
    (dict(scale=float("nan")), "scale must be None or a finite float"),
    (dict(halo_size=1.5), "halo_size must be an int"),
])
def test_bad_input_raises_value_error_naming_the_argument(changes, match):
    inputs, kwargs = _bad(**changes)
    with pytest.raises(ValueError, match=match):
        halo_attention(**inputs, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_on_cuda_matches_oracle(dtype):
    case = CASES[1]
    inputs = {n: t.detach().cuda().requires_grad_() for n, t in case.inputs(dtype).items()}
    out = halo_attention(**inputs, **case.kwargs())
    want = halo_attention_oracle(**{n: t.detach().cpu() for n, t in inputs.items()}, **case.kwargs())
    assert _rel_err(out.cpu(), want) <= REL_TOL[dtype][0]
