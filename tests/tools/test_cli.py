"""``attnzoo bench`` end to end (in a subprocess) and the FLOP accounting behind it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo import _registry
from attnzoo.kernels import count_op_flops, gna
from attnzoo.kernels.gna import GNAParams, gna_flops
from attnzoo.tools.bench import select_models
from attnzoo.tools.flops import count_flops, gflops_macs


def _small_model() -> str:
    names = _registry.list_models()
    assert names, "import attnzoo registered no model"
    return "nat_mini" if "nat_mini" in names else names[0]


def _attnzoo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnzoo.tools.cli", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


_HELP_PROBE = """
import json, sys
import attnzoo_cli
try:
    attnzoo_cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps(dict(code=code, heavy=sorted(m for m in ("torch", "timm", "attnzoo", "numpy") if m in sys.modules))))
"""


def _help_probe(*args: str) -> tuple:
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_imports_neither_torch_nor_the_models_and_prints_no_warning():
    from attnzoo.tools.cli import COMMANDS

    proc, report = _help_probe("--help")
    assert report == {"code": 0, "heavy": []}
    assert proc.stderr == ""
    for name, (_, help_text) in COMMANDS.items():
        assert name in proc.stdout
    # The installed console script goes through the same light entry point.
    script = Path(sys.executable).with_name("attnzoo")
    if script.is_file():
        proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert all(name in proc.stdout for name in COMMANDS)


def test_version_and_unknown_command_stay_light():
    proc, report = _help_probe("--version")
    assert report == {"code": 0, "heavy": []}
    assert proc.stdout.startswith("attnzoo ")
    proc, report = _help_probe("no-such-command")
    assert report == {"code": 2, "heavy": []}
    assert "invalid choice: 'no-such-command'" in proc.stderr and "bench" in proc.stderr


def test_a_sub_command_loads_its_module_only_when_named():
    proc, report = _help_probe("bench", "--help")
    assert report["code"] == 0 and "torch" in report["heavy"]
    assert "--models" in proc.stdout and "bench-routed" not in proc.stdout
    assert "No CUDA runtime" not in proc.stderr


def _table_rows(stdout: str) -> dict:
    """Data rows of the markdown table, by model name."""
    lines = [l for l in stdout.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-:"), lines[1]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_bench_one_model_prints_measured_and_published_figures():
    name = _small_model()
    proc = _attnzoo("bench", "--models", name, "--img-size", "64", "--min-runs", "1", "--max-runs", "1",
                    "--batch-size", "1", "--warmup", "0", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"torch {torch.__version__}" in out and "timm " in out and "triton " in out
    assert f"`attnzoo bench --models {name} --img-size 64" in out
    rows = _table_rows(out)
    assert list(rows) == [name]
    row = rows[name]
    pub = _registry.get_entry(name).published
    assert row["family"] == _registry.get_entry(name).family
    model = __import__("timm").create_model(name)
    assert float(row["params (M)"]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.006)
    assert float(row["GFLOPs"]) == pytest.approx(gflops_macs(model, pub.img_size), abs=0.006)
    assert float(row["pub. params (M)"]) == pytest.approx(pub.params_m)
    assert float(row["pub. GFLOPs"]) == pytest.approx(pub.gflops)
    assert row["pub. source"] == pub.source
    assert float(row["img/s reference"]) > 0
    # median (min-max, runs) in ms; one run: all three equal
    med, lo, hi, runs = re.fullmatch(r"([\d.]+) \(([\d.]+)-([\d.]+), (\d+)\)", row["ms reference"]).groups()
    assert med == lo == hi and runs == "1"
    assert float(row["img/s reference"]) == pytest.approx(1e3 / float(med), rel=0.02)
    # No CUDA here: the triton column says why in a footnote.
    if not torch.cuda.is_available():
        ref = re.fullmatch(r"n/a \[(\d+)\]", row["img/s triton"])
        assert ref, row["img/s triton"]
        assert re.search(rf"^{ref.group(1)}\. triton: .*CUDA", out, re.M)


def test_bench_no_speed_has_no_speed_columns():
    name = _small_model()
    proc = _attnzoo("bench", "--models", name, "--no-speed")
    assert proc.returncode == 0, proc.stderr
    row = _table_rows(proc.stdout)[name]
    assert not any(k.startswith("img/s") for k in row)


def test_models_patterns_select_matching_names_only():
    names = attnzoo.list_models()
    first = _small_model()
    prefix = first.split("_")[0] + "_*"
    expected = [n for n in names if n.startswith(first.split("_")[0] + "_")]
    assert select_models([prefix]) == expected
    assert select_models([first]) == [first]
    assert select_models([first, first, prefix]) == expected  # no duplicates, registration order
    assert select_models(None) == names
    with pytest.raises(ValueError, match="no_such_model"):
        select_models([first, "no_such_model*"])


def test_unknown_pattern_exits_nonzero_with_message():
    proc = _attnzoo("bench", "--models", "no_such_model_*", timeout=120)
    assert proc.returncode != 0
    assert "no_such_model_*" in proc.stderr and "match no registered model" in proc.stderr
    assert "|" not in proc.stdout


class _TinyAttention(nn.Module):
    """qkv projection -> gna -> output projection, channels-last ``[B, H, W, C]``."""

    def __init__(self, dim: int = 16, heads: int = 2, kernel_size: int = 3, dilation: int = 2):
        super().__init__()
        self.heads, self.kernel_size, self.dilation = heads, kernel_size, dilation
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h, w, 3, self.heads, c // self.heads).unbind(3)
        out = gna(q, k, v, self.kernel_size, dilation=self.dilation, backend="reference")
        return self.proj(out.reshape(b, h, w, c))


def test_count_flops_counts_attention_by_math_and_linears_as_flop_counter():
    torch.manual_seed(0)
    m = _TinyAttention()
    x = torch.randn(2, 9, 11, 16)
    with torch.no_grad():
        total = count_flops(m, x)

        with FlopCounterMode(display=False) as lin:
            m.qkv(x)
            m.proj(x)
        linear_flops = lin.get_total_flops()
        assert linear_flops == 2 * (2 * 9 * 11) * 16 * (3 * 16 + 16)

        # Nesting: the op's own counter passes its aten calls on to an outer one.
        with FlopCounterMode(display=False) as outer, count_op_flops() as records:
            m(x)
    assert [r.op for r in records] == ["gna"]
    params = GNAParams((9, 11), (3, 3), (1, 1), (2, 2), (False, False))
    math = gna_flops(params, batch=2, heads=2, head_dim=8, v_dim=8)
    assert records[0].math == math
    assert records[0].executed > 0
    assert outer.get_total_flops() == linear_flops + records[0].executed
    assert total == linear_flops + math


def test_gflops_macs_is_half_the_flops_per_image():
    m = _TinyAttention()
    g = gflops_macs(nn.Sequential(_ChannelsLast(), m), 10)
    with torch.no_grad():
        flops = count_flops(m, torch.zeros(1, 10, 10, 16))
    assert g == pytest.approx(flops / 2 / 1e9)
    assert m.training  # mode restored


class _ChannelsLast(nn.Module):
    """``[B, 3, H, W]`` -> ``[B, H, W, 16]`` without FLOPs (zero-pads channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x.permute(0, 2, 3, 1), (0, 13))


def test_timm_twin_maps_az_names_onto_timm_builtins():
    from attnzoo.tools.bench import timm_twin

    assert timm_twin("az_resnet50") == "resnet50"
    assert timm_twin("nat_mini") is None
    assert timm_twin("az_nat_mini") is None  # not a timm built-in


def test_vs_timm_times_an_az_model_against_its_twin():
    twins = [n for n in _registry.list_models() if n.startswith("az_")]
    assert twins, "import attnzoo registered no az_ model"
    name = min(twins, key=lambda n: _registry.get_entry(n).published.params_m or 1e9)
    proc = _attnzoo("bench", "--vs-timm", "--models", name, "--batch-size", "1", "--min-runs", "1", "--max-runs", "1",
                    "--warmup", "0", "--img-size", "64")
    assert proc.returncode == 0, proc.stderr
    row = _table_rows(proc.stdout)[name]
    assert row["timm twin"] == name[3:]
    assert float(row["attnzoo (ms)"].split()[0]) > 0 and float(row["timm (ms)"].split()[0]) > 0
    assert row["attnzoo (ms)"].endswith(", 1)") and row["timm (ms)"].endswith(", 1)")
    assert row["attnzoo / timm"].endswith("x")


def test_bench_routed_times_both_implementations_and_their_memory():
    proc = _attnzoo("bench-routed", "--batch-size", "1", "--stages", "stage3", "--kinds", "core", "--modes", "fwd+bwd",
                    "--rounds", "1", "--min-run-time", "0.01", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    (row,) = _table_rows(proc.stdout).values()
    assert row["pass"] == "fwd+bwd"
    assert float(row["attnzoo (ms)"]) > 0 and float(row["legacy (ms)"]) > 0
    assert float(row["attnzoo peak (MiB)"]) > 0 and float(row["legacy peak (MiB)"]) > 0
    assert float(row["rel. diff of outputs"]) < 1e-5  # the same math in fp32


def test_bench_routed_rejects_a_bad_batch_size():
    proc = _attnzoo("bench-routed", "--batch-size", "0")
    assert proc.returncode == 2 and "--batch-size" in proc.stderr
