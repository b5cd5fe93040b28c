"""The compile gate: every fused kernel compiled by Triton's real compiler for real GPU targets
(no GPU needed), through the kernels' own launch code, with its resources checked.

CI runs ``attnzoo kernels`` for sm_80 and sm_90 in float16 and bfloat16 at every model's published
size and the detection sizes: a compile error, shared memory over the target's limit or a spill
in a default (untuned) config fails it. The extended tier adds sm_100, float32 and every autotune
config that pruning keeps.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnzoo.kernels import OPS  # noqa: E402
from attnzoo.kernels._triton import aot  # noqa: E402
from attnzoo.kernels._triton.launch import launch  # noqa: E402

# the kernels each fused op launches in a training step (forward and backward)
KERNELS = {
    "gna": {"_gna_fwd_kernel", "_gna_bwd_dq_kernel", "_gna_bwd_dkdv_kernel"},
    "routed_attention": {"_routed_fwd_kernel", "_routed_bwd_dq_kernel", "_routed_bwd_dkdv_kernel"},
    "halo_attention": {"_halo_fwd_kernel", "_halo_bwd_kernel"},
    "aggregated_attention": {"_fwd_kernel", "_bwd_query_kernel", "_bwd_key_kernel"},
}


def _gate(tmp_path, *flags):
    out = tmp_path / "gate.csv"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "attnzoo.tools.cli", "kernels", "--csv", str(out), *flags],
                          capture_output=True, text=True, env=env)
    rows = list(csv.DictReader(open(out))) if out.exists() else []
    return proc, rows


def test_every_fused_op_is_in_the_gate():
    assert {name for name, op in OPS.items() if "triton" in op.backends} == set(KERNELS)


def test_ci_gate_sm80_sm90_fp16_bf16(tmp_path):
    """The CI gate itself: every kernel of every fused op compiles for both targets in both dtypes
    at every case, within shared memory, without a spill in a default config."""
    proc, rows = _gate(tmp_path, "--targets", "sm_80,sm_90", "--dtypes", "float16,bfloat16")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for op, kernels in KERNELS.items():
        for target in ("sm_80", "sm_90"):
            for dtype in ("float16", "bfloat16"):
                built = {r["kernel"] for r in rows if (r["op"], r["target"], r["dtype"]) == (op, target, dtype)}
                assert built == kernels, (op, target, dtype, built)
    assert all(r["status"] == "ok" for r in rows)
    # the cases reached the detection sizes, and MaxViT's blocked fast path was built
    assert any("@800x1216" in r["cases"] for r in rows)
    assert any(r["label"] == "blocked" for r in rows if r["op"] == "gna")


def test_quick_gate(tmp_path):
    proc, rows = _gate(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {r["target"] for r in rows} == {"sm_90"} and {r["dtype"] for r in rows} == {"bfloat16"}
    assert {r["op"] for r in rows} == set(KERNELS)


def test_bad_arguments_are_named(tmp_path):
    proc, _ = _gate(tmp_path, "--targets", "sm_75")
    assert proc.returncode == 2 and "--targets" in proc.stderr and "sm_80" in proc.stderr
    proc, _ = _gate(tmp_path, "--sizes", "512")
    assert proc.returncode == 2 and "--sizes" in proc.stderr


# --- the session's verdicts, on toy kernels through the shared launch helper -----------------------

@triton.jit
def _copy_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < N), mask=offs < N)


@triton.jit
def _shape_change_kernel(X, Y, N, BLOCK: tl.constexpr):
    # the aggregated kernel's old bug: a name bound before a loop, rebound with another shape in it
    offs = tl.arange(0, BLOCK)
    a = tl.load(X + offs, mask=offs < N, other=0.0)
    for _ in range(0, N, BLOCK):
        a = a[:, None] * a[None, :]
    tl.store(Y + offs, tl.sum(a, 0), mask=offs < N)


@triton.jit
def _big_smem_kernel(X, Y, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    tile = tl.load(X + rows[:, None] * BLOCK + rows[None, :])
    tl.store(Y + rows[:, None] * BLOCK + rows[None, :], tl.dot(tile, tile))


def _launch(session_target, kernel, config, *args, **kwargs):
    with aot.compile_session(aot.TARGETS[session_target]) as session:
        with session.context("toy", "case", "float16"):
            launch(kernel, lambda meta: (1,), args, kwargs, config)
    return session.builds


def test_session_compiles_through_launch_and_reads_resources():
    x = torch.empty(1000, dtype=torch.float16, device="meta")
    builds = _launch("sm_90", _copy_kernel, dict(BLOCK=128, num_warps=4, num_stages=1), x, x, 1000)
    (build,) = builds
    assert build.error is None and build.kernel == "_copy_kernel" and build.problems() == []
    assert 0 < build.registers <= 255 and build.spill_bytes == 0 and 0 < build.occupancy <= 1


def test_session_reports_a_compile_error_the_interpreter_would_accept():
    x = torch.empty(64, dtype=torch.float32, device="meta")
    (build,) = _launch("sm_90", _shape_change_kernel, dict(BLOCK=16, num_warps=4, num_stages=1), x, x, 64)
    assert build.error is not None and "Loop-carried" in build.error
    assert build.problems() and build.problems()[0].startswith("does not compile")


def test_session_flags_shared_memory_over_the_target_limit():
    x = torch.empty(256 * 256, dtype=torch.float32, device="meta")
    (build,) = _launch("sm_80", _big_smem_kernel, dict(BLOCK=256, num_warps=8, num_stages=1), x, x)
    if build.error is not None:  # some Triton versions refuse it at compile time instead
        assert "shared" in build.error.lower() or "resources" in build.error.lower()
    else:
        assert build.shared > aot.TARGETS["sm_80"].smem_per_block
        assert any("shared memory" in p for p in build.problems())


def test_occupancy_follows_the_limits():
    h100 = aot.TARGETS["sm_90"]
    assert h100.occupancy(4, 32, 0) == 1.0  # 16 blocks of 128 threads at 32 registers fill the SM
    assert h100.occupancy(4, 64, 0) == 0.5  # 64 registers: 65536 / (64 * 128) = 8 blocks
    assert h100.occupancy(4, 255, 0) == pytest.approx(0.125)  # register-bound: 2 blocks
    assert h100.occupancy(4, 32, 100 * 1024) == pytest.approx(2 * 128 / 2048)  # shared-memory-bound


@pytest.mark.extended
def test_extended_gate_sm100_fp32_every_kept_config(tmp_path):
    """Every autotune config that pruning keeps compiles for sm_80, sm_90 and sm_100 in every dtype
    and fits shared memory (spills in tuned configs are reported, not failed: the autotuner times
    them); default configs also for float32 and sm_100."""
    proc, rows = _gate(tmp_path, "--targets", "sm_80,sm_90,sm_100", "--dtypes", "float16,bfloat16,float32",
                       "--configs", "all")
    failed = [r for r in rows if r["status"] != "ok"]
    assert not failed, [(r["op"], r["kernel"], r["target"], r["dtype"], r["label"], r["config"], r["status"])
                        for r in failed][:20]
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.extended
def test_gate_with_the_oldest_triton(tmp_path):
    """Triton 3.6 (torch 2.11's) compiles every kernel too, within shared memory: the CI gate from
    the second venv that `make setup-triton36` builds."""
    python = os.path.join(os.path.dirname(__file__), "..", "..", ".venv-triton36", "bin", "python")
    if not os.path.exists(python):
        pytest.skip("no .venv-triton36: make setup-triton36")
    version = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    assert version.startswith("3.6"), version
    out = tmp_path / "gate36.csv"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([python, "-m", "attnzoo.tools.cli", "kernels", "--csv", str(out)], capture_output=True,
                          text=True, env=env)
    rows = list(csv.DictReader(open(out)))
    assert {r["op"] for r in rows} == set(KERNELS), proc.stdout[-4000:] + proc.stderr[-2000:]
    # every kernel compiles and fits; Triton 3.6 allocates registers differently from the pinned 3.8
    # and spills 8-24 B in 47 of 564 builds on sm_80 (gna dk/dv at 255 registers, halo backward
    # with 16-wide heads, routed dq at 512 px; 2026-12-03): listed, not failed
    broken = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("spills")]
    assert not broken, [(r["op"], r["kernel"], r["target"], r["dtype"], r["status"]) for r in broken][:20]
    spills = sorted({(r["op"], r["kernel"], r["target"]) for r in rows if r["status"].startswith("spills")})
    print("Triton 3.6 spills (not failed):", spills)
