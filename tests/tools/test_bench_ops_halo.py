"""tools/bench_ops_halo.py: every small case runs on the CPU for the PyTorch backends, and the
backends compute the same thing (so the benchmark compares like with like)."""
from __future__ import annotations

import pytest
import torch

from attnzoo.tools import bench_ops_halo as cases


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("name", list(cases.SMALL_CASES))
def test_small_case_backends_run_and_agree(name):
    case = cases.SMALL_CASES[name]
    cpu = torch.device("cpu")
    outs = {}
    for backend in ("reference", "flex"):
        step, reason = cases.runner(backend, case, cpu, torch.float32, False, {})
        assert step is not None, reason
        out = step()
        if backend == "flex":
            out = cases.from_block_major(out, case.h // case.stride, case.w // case.stride, case.params.query_block)
        assert out.shape == (case.batch, case.h // case.stride, case.w // case.stride, case.heads, case.head_dim)
        outs[backend] = out
    assert _rel(outs["flex"], outs["reference"]) <= 1e-5
    # forward + backward steps return a gradient per input (q, k, v and both tables)
    step, _ = cases.runner("reference", case, cpu, torch.float32, True, {})
    assert len(step()) == 5
    step, reason = cases.runner("flex", case, cpu, torch.float32, True, {})
    assert step is None and "backward" in reason


def test_block_major_round_trip():
    t = torch.randn(2, 4, 6, 3, 5)
    bm = cases.block_major(t, 2)
    assert bm.shape == (2, 3, 24, 5)
    assert torch.equal(bm[0, 1, :4], t[0, :2, :2, 1].reshape(4, 5))  # block 0's 2x2 queries first
    assert torch.equal(cases.from_block_major(bm, 4, 6, 2), t)


def test_cases_describe_and_roofline():
    for case in (*cases.CASES.values(), *cases.SMALL_CASES.values()):
        assert case.h % case.block == 0 and case.w % case.block == 0, case.name
        assert case.describe()
        assert cases.min_bytes(case, 2, True) > cases.min_bytes(case, 2, False) > 0
        assert cases.attention_flops(case, True) == 3.5 * cases.attention_flops(case, False)
    assert set(cases.CASES) >= {"cls256-s2", "seg512-s3", "det800x1216-s4"}


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = cases.SMALL_CASES["small-b8-h3-16x16"]
    step, reason = cases.runner("triton", case, torch.device("cpu"), torch.float32, False, {})
    assert step is None and "CUDA" in reason
