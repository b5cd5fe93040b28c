"""tools/bench_ops_routed.py: every small case runs on the CPU for the PyTorch backends, and the
backends compute the same thing (so the benchmark compares like with like)."""
from __future__ import annotations

import pytest
import torch

from attnzoo.tools import bench_ops_routed as cases


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("name", list(cases.SMALL_CASES))
def test_small_case_backends_run_and_agree(name):
    case = cases.SMALL_CASES[name]
    cpu = torch.device("cpu")
    outs = {}
    for backend in ("reference", "gather", "flex"):
        step, reason = cases.runner(backend, case, cpu, torch.float32, False, {})
        assert step is not None, reason
        out = step()
        if backend == "flex":
            out = cases.from_region_major(out, case.h, case.w, case.num_regions)
        assert out.shape == (case.batch, case.h, case.w, case.heads, case.head_dim)
        outs[backend] = out
    assert _rel(outs["gather"], outs["reference"]) <= 1e-5
    assert _rel(outs["flex"], outs["reference"]) <= 1e-5
    # forward + backward steps return a gradient per input
    step, _ = cases.runner("reference", case, cpu, torch.float32, True, {})
    assert len(step()) == 3


def test_region_major_round_trip():
    t = torch.randn(2, 6, 9, 3, 4)
    rm = cases.region_major(t, 3)
    assert rm.shape == (2, 3, 54, 4)
    assert torch.equal(rm[0, 1, :6], t[0, :2, :3, 1].reshape(6, 4))  # region 0's 2x3 tokens first
    assert torch.equal(cases.from_region_major(rm, 6, 9, 3), t)


def test_cases_describe_and_roofline():
    for case in (*cases.CASES.values(), *cases.SMALL_CASES.values()):
        assert case.h % case.num_regions == 0 and case.w % case.num_regions == 0, case.name
        assert case.describe()
        assert cases.min_bytes(case, 2, True) > cases.min_bytes(case, 2, False) > 0
        assert cases.attention_flops(case, True) == 3.5 * cases.attention_flops(case, False)
    assert set(cases.CASES) >= {"cls224-s1", "seg512-s3", "det800x1216-s2"}


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = cases.SMALL_CASES["small-s3-8x8-r4"]
    step, reason = cases.runner("triton", case, torch.device("cpu"), torch.float32, False, {})
    assert step is None and "CUDA" in reason
