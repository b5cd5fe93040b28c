"""attnzoo selftest: nothing to test without a GPU (exit 0, says why); --small runs the fused
kernels under Triton's interpreter against the float64 reference and prints one row per call."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch


def _selftest(*flags, env_extra=None):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "attnzoo.tools.cli", "selftest", *flags],
                          capture_output=True, text=True, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_a_gpu_there_is_nothing_to_test():
    proc = _selftest()
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout and "--small" in proc.stdout
    assert "|" not in proc.stdout  # no table: nothing ran


def test_small_runs_the_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    proc = _selftest("--small", "--models", "biformer_tiny", "--size", "32x32")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| routed_attention")]
    # biformer_tiny's three routed stages, in float32 and float16
    assert len(rows) == 6, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "pass"
        out_err = float(cells[4])
        assert 0 < out_err < 3e-3  # a real comparison: not zero, within the float16 bound
    assert re.search(r"6 checks, 0 failed", proc.stdout)


def test_small_refuses_bfloat16_naming_why():
    proc = _selftest("--small", "--dtypes", "bfloat16")
    assert proc.returncode == 2 and "interpreter" in proc.stderr
    proc = _selftest("--size", "64")
    assert proc.returncode == 2 and "--size" in proc.stderr
