"""``attnzoo bench-ops`` (tools/bench_ops.py, gna's cases in tools/bench_ops_gna.py): its table on the
CPU, the FlexAttention mask it builds for each gna pattern, and its roofline accounting."""
from __future__ import annotations

import argparse
import math
import warnings

import pytest
import torch

from attnzoo.kernels import gna
from attnzoo.kernels.gna import GNAParams
from attnzoo.tools import bench_ops, bench_ops_gna

from ..kernels.gna_oracle import attended_pair_count, neighborhood


def _run(argv, capsys):
    parser = argparse.ArgumentParser()
    bench_ops.add_arguments(parser)
    status = bench_ops.run(parser.parse_args(argv), argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _table(stdout: str):
    lines = [l for l in stdout.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-:"), lines[1]
    return header, [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def _is_number(text: str) -> bool:
    try:
        return float(text.rstrip("x")) > 0
    except ValueError:
        return False


def test_small_cpu_run_prints_a_markdown_table(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton must be refused with its reason
    argv = ["--small", "--device", "cpu", "--cases", "small-na1d-64-k7-causal,small-maxvit-block-14-p7",
            "--backends", "reference,sdpa,triton", "--iters", "1", "--warmup", "0"]
    status, out, _ = _run(argv, capsys)
    assert status == 0
    assert "`attnzoo bench-ops --small --device cpu" in out
    assert f"torch {torch.__version__}" in out and "GB/s" in out and "TFLOP/s" in out
    assert "- small-maxvit-block-14-p7: 14x14, kernel 7x7, stride 7x7" in out
    header, rows = _table(out)
    assert header == ["case", "pass", "roofline ms (bound)", "reference ms", "sdpa ms", "triton ms",
                      "sdpa / reference", "triton / reference"]
    assert [(r["case"], r["pass"]) for r in rows] == [
        ("small-na1d-64-k7-causal", "fwd"), ("small-na1d-64-k7-causal", "fwd+bwd"),
        ("small-maxvit-block-14-p7", "fwd"), ("small-maxvit-block-14-p7", "fwd+bwd"),
    ]
    for row in rows:
        roof, bound = row["roofline ms (bound)"].split()
        assert _is_number(roof) and bound in ("(mem)", "(math)")
        assert _is_number(row["reference ms"]) and _is_number(row["sdpa ms"]) and _is_number(row["sdpa / reference"])
        assert row["triton ms"].startswith("n/a [") and row["triton / reference"].startswith("— [")
    assert "triton: inputs are on cpu" in out  # the footnote says why
    assert "a ratio needs both times: no triton time" in out
    assert "- on a CPU: the triton column and every ratio over it need a CUDA GPU" in out


def test_forward_only_and_bad_arguments(capsys):
    status, out, _ = _run(["--small", "--device", "cpu", "--cases", "small-blocked-8-k4", "--backends", "sdpa",
                           "--no-backward", "--iters", "1", "--warmup", "0"], capsys)
    assert status == 0
    _, rows = _table(out)
    assert [(r["case"], r["pass"]) for r in rows] == [("small-blocked-8-k4", "fwd")]
    status, _, err = _run(["--small", "--cases", "na2d-56-k7"], capsys)  # a full-set name in the small set
    assert status == 2 and "--cases" in err
    status, _, err = _run(["--small", "--iters", "0"], capsys)
    assert status == 2 and "--iters" in err
    with pytest.raises(SystemExit):
        _run(["--backends", "natten"], capsys)
    with pytest.raises(SystemExit):
        _run(["--ops", "gna,halo"], capsys)


def test_each_op_gets_its_own_table(capsys):
    """Every op's small set runs on the CPU through the same driver: one table per op, headed by
    the op's name, rows for each of its small cases."""
    modules = bench_ops.op_modules()
    argv = ["--small", "--device", "cpu", "--backends", "reference", "--no-backward", "--iters", "1", "--warmup", "0"]
    status, out, _ = _run(argv, capsys)
    assert status == 0
    for op, module in modules.items():
        assert f"### {op}" in out
        section = out.split(f"### {op}")[1].split("### ")[0]
        _, rows = _table(section)
        assert [r["case"] for r in rows] == list(module.SMALL_CASES)
        assert all(_is_number(r["reference ms"]) for r in rows)


PATTERNS = [
    ((11,), (3,), (1,), (3,), (False,)),
    ((13,), (4,), (3,), (1,), (True,)),
    ((9, 7), (3, 2), (2, 2), (2, 3), (True, False)),
    ((8, 6), (4, 3), (4, 3), (2, 2), (False, False)),
    ((3, 4, 5), (2, 3, 3), (1, 2, 1), (1, 1, 2), (False, True, False)),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=[str(p[0]) for p in PATTERNS])
def test_flex_mask_and_bias_are_the_gna_pattern(pattern):
    """mask_mod and score_mod, evaluated on every (query, key) pair, against the brute-force
    oracle's neighborhood and rpb offsets."""
    spatial, kernel, stride, dilation, causal = pattern
    params = GNAParams(spatial, kernel, stride, dilation, causal)
    heads = 2
    rpb = torch.randn(heads, *(2 * k - 1 for k in kernel), dtype=torch.float64)
    mask_mod, score_mod = bench_ops_gna.flex_mods(params, rpb)
    n = math.prod(spatial)
    q_idx = torch.arange(n).view(n, 1)
    kv_idx = torch.arange(n).view(1, n)
    want_mask, want_rel = neighborhood(spatial, kernel, stride, dilation, causal)
    assert torch.equal(mask_mod(0, 0, q_idx, kv_idx), want_mask)
    for h in range(heads):
        bias = score_mod(torch.zeros(n, n, dtype=torch.float64), 0, h, q_idx, kv_idx)
        want_bias = rpb[h][tuple(want_rel[..., a] for a in range(len(spatial)))]
        assert torch.equal(bias[want_mask], want_bias[want_mask])


def test_flex_attention_with_those_mods_matches_gna():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    case = bench_ops_gna.SMALL_CASES["small-dinat-16-k3-d4"]
    q, k, v, rpb, _ = bench_ops_gna._inputs(case, torch.device("cpu"), torch.float32, backward=False)
    mask_mod, score_mod = bench_ops_gna.flex_mods(case.params, rpb)
    block_mask = flex.create_block_mask(mask_mod, None, None, case.tokens, case.tokens, device="cpu")
    flat = [bench_ops_gna._flat(t, case) for t in (q, k, v)]
    with warnings.catch_warnings():  # eager flex_attention asks for torch.compile (once per process)
        warnings.simplefilter("ignore", UserWarning)
        out = flex.flex_attention(*flat, score_mod=score_mod, block_mask=block_mask)
    want = gna(q, k, v, case.kernel_size, case.stride, case.dilation, case.is_causal, rpb=rpb, backend="reference")
    got = out.transpose(1, 2).reshape(want.shape)
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_roofline_accounting():
    case = bench_ops_gna.SMALL_CASES["small-blocked-8-k4"]  # 8x8, 4x4 blocks, B 1, H 2, d 16, no rpb
    pairs = attended_pair_count(case.spatial, case.kernel_size, case.stride, case.dilation, case.is_causal)
    assert pairs == 64 * 16  # every query sees its 16-position block
    assert bench_ops_gna.attention_flops(case, backward=False) == 2 * 2 * pairs * (16 + 16)
    assert bench_ops_gna.attention_flops(case, backward=True) == 2 * 2 * pairs * (2 * 16 + 5 * 16)
    act = 1 * 64 * 2 * 16 * 2  # one fp16 [B, N, H, D] tensor in bytes
    lse = 1 * 64 * 2 * 4
    assert bench_ops_gna.min_bytes(case, 2, backward=False) == 4 * act  # q, k, v in, out
    # + lse out; q, k, v, out, dout, lse in; dq, dk, dv out
    assert bench_ops_gna.min_bytes(case, 2, backward=True) == 4 * act + lse + 5 * act + lse + 3 * act


def test_headline_for_attnzoo_bench_has_one_row_per_op_and_says_what_needs_a_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lines = bench_ops.headline(torch.device("cpu"), warmup=0, iters=1)
    assert lines[0].startswith("Fused ops (forward, float32, median of 1 after 0 warmup")
    header, rows = _table("\n".join(lines))
    assert header[:5] == ["op", "case", "fused (triton) ms", "reference ms", "fastest other, ms"]
    assert [r["op"] for r in rows] == list(bench_ops.OP_MODULES)
    for row in rows:
        module = bench_ops.op_modules([row["op"]])[row["op"]]
        assert row["case"] == next(iter(module.SMALL_CASES))  # the CPU-sized set's first case
        assert _is_number(row["reference ms"])
        best, ms = row["fastest other, ms"].split()
        assert best in module.BACKENDS[2:] and _is_number(ms)
        assert row["fused (triton) ms"].startswith("n/a [")  # on the CPU, with the reason as a footnote
        assert row["fused speed-up vs reference"].startswith("— [")
    assert any("triton: inputs are on cpu" in line for line in lines)
