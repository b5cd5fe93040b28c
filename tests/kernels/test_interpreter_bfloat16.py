"""Triton's interpreter computes bfloat16 wrongly (its tl.dot on bf16 is off by orders of
magnitude): under TRITON_INTERPRET=1 the Triton backend refuses bf16 CPU inputs, so backend=None
runs the reference and backend="triton" raises naming the reason. Before, a whole nat_mini in
bf16 through backend=None came out with a relative L2 error of 1.43.

Runs in the interpreter process (``make test``'s second pytest run, TRITON_INTERPRET=1)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.interpreter

import timm  # noqa: E402

import attnzoo  # noqa: E402,F401
from attnzoo.kernels import BackendUnavailableError, OPS, gna  # noqa: E402


def test_each_fused_op_refuses_bfloat16_on_the_cpu_under_the_interpreter():
    q = torch.randn(1, 8, 8, 2, 16, dtype=torch.bfloat16)
    reason = OPS["gna"].why_not("triton", q, q, q, _gna_params(q), None, 0.25)
    assert reason is not None and "bfloat16" in reason and "interpreter" in reason
    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        gna(q, q, q, 3, backend="triton")
    # float16 still runs on the kernels under the interpreter
    assert OPS["gna"].why_not("triton", q.half(), q.half(), q.half(), _gna_params(q), None, 0.25) is None


def _gna_params(q):
    from attnzoo.kernels.gna import GNAParams

    return GNAParams((8, 8), (3, 3), (1, 1), (1, 1), (False, False))


def test_a_bfloat16_model_gives_the_reference_result_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("ATTNZOO_BACKEND", raising=False)
    torch.manual_seed(0)
    model = timm.create_model("nat_mini", dtype=torch.bfloat16).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        auto = model(x)
        monkeypatch.setenv("ATTNZOO_BACKEND", "reference")
        want = model(x)
    assert torch.equal(auto, want)  # backend=None ran the reference: the same bits
    assert want.float().norm() > 0
