"""The ``attnzoo`` command line: help and usage errors without torch, complete help texts, the
arguments each command's module reads, warnings filtered at the entry point only, ``attnzoo env``,
and ``attnzoo bench``'s model selection and FLOP accounting."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo import _registry
from attnzoo.kernels import count_op_flops, gna
from attnzoo.kernels.gna import GNAParams, gna_flops
from attnzoo.tools import _arguments, cli
from attnzoo.tools.bench import select_models
from attnzoo.tools.flops import count_flops, gflops_macs

HEAVY = ("torch", "timm", "attnzoo", "numpy")

# One process: `attnzoo --help` and `attnzoo <command> --help` for every command through the console
# script's entry (attnzoo_cli), then whether any heavy module was imported; then `import attnzoo`
# (after the third-party packages it imports) and whether that changed the warning filters (the
# library must not touch them).
_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys, warnings
    import attnzoo_cli
    HEAVY = %r
    report = {}
    for args in [["--help"], ["--version"], ["no-such-command"]] + [[c, "--help"] for c in sys.argv[1:]]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                attnzoo_cli.main(args)
                code = None
            except SystemExit as e:
                code = e.code
        report[" ".join(args)] = dict(code=code, out=out.getvalue(), err=err.getvalue())
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    import torch, torchvision, timm, numpy, tqdm, safetensors, huggingface_hub  # they set filters of their own
    filters = list(warnings.filters)
    import attnzoo, attnzoo.tools.bench, attnzoo.tools.bench_routed, attnzoo.train.trainer
    kept = filters == warnings.filters
    cpp_extension_before = "torch.utils.cpp_extension" in sys.modules  # bench-routed must not import it
    from attnzoo.tools import cli
    cli.quiet_third_party_warnings()
    import torch.utils.cpp_extension  # what torch.compile imports; its CUDA_HOME line must not show
    print(json.dumps(dict(report=report, heavy=heavy, filters_kept=kept, cpp_extension=cpp_extension_before)))
""") % (HEAVY,)


@pytest.fixture(scope="module")
def probe():
    proc = subprocess.run([sys.executable, "-c", _PROBE, *cli.COMMANDS], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), stderr=proc.stderr)


def test_help_and_usage_errors_import_nothing_heavy(probe):
    assert probe["heavy"] == []  # every command's --help, --version and a usage error: no torch, timm, numpy
    report = probe["report"]
    top = report["--help"]
    assert top["code"] == 0 and top["err"] == ""
    assert all(name in top["out"] for name in cli.COMMANDS) and "attnzoo env" in top["out"]
    assert report["--version"]["out"].startswith("attnzoo ")
    bad = report["no-such-command"]
    assert bad["code"] == 2 and "invalid choice: 'no-such-command'" in bad["err"] and "bench" in bad["err"]
    for name in cli.COMMANDS:
        sub = report[f"{name} --help"]
        assert sub["code"] == 0 and sub["err"] == "", (name, sub["err"])
        assert sub["out"].startswith(f"usage: attnzoo {name}")
        assert cli.describe(cli.COMMANDS[name])[:40] in " ".join(sub["out"].split())
    assert "--models" in report["bench --help"]["out"] and "--all" in report["bench --help"]["out"]
    assert "--checkpoint" in report["validate --help"]["out"] and "--model-kwargs" in report["train --help"]["out"]


def test_importing_attnzoo_leaves_the_warning_filters_alone(probe):
    assert probe["filters_kept"]


def test_no_cuda_home_message_from_the_command_line(probe):
    """On a CPU machine with a CUDA toolkit, importing torch.utils.cpp_extension logs "No CUDA runtime
    is found, using CUDA_HOME=...": the benchmark modules do not import it, and the command line's
    entry point silences it for torch.compile (the probe's stderr is the whole process's)."""
    assert not probe["cpp_extension"]
    assert "No CUDA runtime" not in probe["stderr"]


def test_the_console_script_uses_the_same_light_entry():
    script = Path(sys.executable).with_name("attnzoo")
    if not script.is_file():
        pytest.skip("no attnzoo console script beside this python (not an installed environment)")
    proc = subprocess.run([str(script), "validate", "--help"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "--data-dir" in proc.stdout


_UNFINISHED = re.compile(r"(,|\(|:|;|\b(and|or|the|a|of|to|with|for|from|in))$")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_texts_are_complete_sentences(name):
    command = cli.COMMANDS[name]
    description = cli.describe(command)
    assert description.endswith((".", ")")), f"{name}: description stops mid-sentence: {description!r}"
    assert description.count("(") == description.count(")"), description
    parser = argparse.ArgumentParser()
    cli.argument_function(command)(parser)
    for action in parser._actions:
        text = (action.help or "").strip()
        if action.help is argparse.SUPPRESS or not text:
            continue
        assert not _UNFINISHED.search(text), f"{name} {action.option_strings}: {text!r}"
        assert text.count("(") == text.count(")"), f"{name} {action.option_strings}: {text!r}"


def _help_of(add) -> str:
    parser = argparse.ArgumentParser(prog="x")
    add(parser)
    return parser.format_help()


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_the_light_arguments_are_the_ones_the_command_module_reads(name):
    """The parser the command line builds without torch equals the one the command's own module
    builds (``add_arguments``), so a new argument added to either one fails here until both agree."""
    import importlib

    command = cli.COMMANDS[name]
    module = importlib.import_module(command.module)
    assert callable(module.run)
    assert _help_of(cli.argument_function(command)) == _help_of(module.add_arguments)


def test_the_lists_the_light_arguments_mirror_match_their_sources():
    from attnzoo.kernels import BACKENDS
    from attnzoo.tools import bench_ops, bench_routed

    assert _arguments.BENCH_BACKENDS == ("auto", *BACKENDS)
    assert _arguments.OP_BACKENDS == {op: m.BACKENDS for op, m in bench_ops.op_modules().items()}
    assert tuple(bench_routed.STAGES) == _arguments.ROUTED_STAGES


def test_the_entry_point_hides_third_party_notes_and_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_third_party_warnings()
        warnings.warn("pkg_resources is deprecated as an API. See https://setuptools.pypa.io", UserWarning)
        warnings.warn("NOTE: The nodes obtained by tracing the model in eval mode are a subsequence of those "
                      "obtained in train mode. ", UserWarning)
        warnings.warn("a warning of attnzoo's own", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of attnzoo's own"]


def test_env_names_versions_device_and_why_a_backend_cannot_run(capsys):
    from attnzoo.tools import env

    lines = env.report()
    text = "\n".join(lines)
    assert f"torch {torch.__version__.split('+')[0]}" in text and f"- attnzoo: {attnzoo.__version__}" in text
    ops = env.attnzoo_ops()
    assert set(ops) >= {"gna", "routed_attention", "aggregated_attention", "halo_attention", "dense"}
    for name, op in ops.items():
        (line,) = [l for l in lines if l.startswith(f"- {name}: ")]
        assert "reference: yes" in line
        assert "triton: " in line
        if "triton" not in op.backends:
            assert "no kernel for this op" in line
    cuda_ok, cuda_line = env.cuda_status()
    assert cuda_ok == torch.cuda.is_available()
    if not cuda_ok:
        assert cuda_line.startswith("no: ") and len(cuda_line) > len("no: ") + 10
        assert "triton: no: " in text or "Triton's interpreter" in text
    parser = argparse.ArgumentParser()
    env.add_arguments(parser)
    assert env.run(parser.parse_args(["--no-packages"])) == 0
    out = capsys.readouterr().out
    assert out.startswith("## attnzoo env") and "- packages:" not in out and "### Backends" in out


def _small_model() -> str:
    names = _registry.list_models()
    assert names, "import attnzoo registered no model"
    return "nat_mini" if "nat_mini" in names else names[0]


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


def _bench(argv, capsys):
    from attnzoo.tools import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    status = bench.run(parser.parse_args(argv), argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_bench_no_speed_compares_measured_and_published_figures(capsys, tmp_path):
    name = _small_model()
    status, out, err = _bench(["--models", name, "--no-speed", "--no-twins", "--no-plot", "--out", str(tmp_path)],
                              capsys)
    assert status == 0, err
    row = _table_rows(out)[name]
    assert not any(k.startswith("images/s") for k in row)
    pub = _registry.get_entry(name).published
    model = __import__("timm").create_model(name)
    assert float(row["params (M)"]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.006)
    assert float(row["GFLOPs"]) == pytest.approx(gflops_macs(model, pub.img_size), abs=0.006)
    assert float(row["pub. params (M)"]) == pytest.approx(pub.params_m)
    assert float(row["pub. GFLOPs"]) == pytest.approx(pub.gflops)
    assert row["pub. source"] == pub.source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.md"]


def test_triton_on_a_cpu_is_a_footnote_that_says_why(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the triton backend runs")
    status, out, err = _bench(["--models", "az_shvit_s1", "--no-twins", "--backends", "reference,triton",
                               "--img-size", "32", "--batch-size", "1", "--warmup", "0", "--min-runs", "3",
                               "--max-runs", "3", "--no-plot", "--out", str(tmp_path)], capsys)
    assert status == 0, err
    rows = [l for l in out.splitlines() if l.startswith("| az_shvit_s1")]
    assert len(rows) == 2  # one row per backend
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [c[5] for c in cells] == ["reference", "triton"]
    assert float(cells[0][6]) > 0
    ref = re.fullmatch(r"n/a \[(\d+)\]", cells[1][6])
    assert ref, cells[1]
    assert re.search(rf"^{ref.group(1)}\. triton: .*CUDA", out, re.M)


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


def test_unknown_pattern_exits_nonzero_with_message(capsys):
    status, out, err = _bench(["--models", "no_such_model_*"], capsys)
    assert status == 2
    assert "no_such_model_*" in err and "match no registered model" in err
    assert "|" not in out


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


def test_vs_timm_times_an_az_model_against_its_twin(capsys):
    twins = [n for n in _registry.list_models() if n.startswith("az_")]
    assert twins, "import attnzoo registered no az_ model"
    name = min(twins, key=lambda n: _registry.get_entry(n).published.params_m or 1e9)
    status, out, err = _bench(["--vs-timm", "--models", name, "--batch-size", "1", "--min-runs", "3", "--max-runs", "3",
                               "--warmup", "0", "--img-size", "64"], capsys)
    assert status == 0, err
    row = _table_rows(out)[name]
    assert row["timm twin"] == name[3:]
    assert float(row["attnzoo (ms)"].split()[0]) > 0 and float(row["timm (ms)"].split()[0]) > 0
    for cell in (row["attnzoo (ms)"], row["timm (ms)"]):
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+, 3( \[\d+\])?\)", cell), cell
    assert row["attnzoo / timm"].endswith("x")


def test_bench_routed_times_both_implementations_without_a_cuda_home_message():
    proc = subprocess.run(
        [sys.executable, "-m", "attnzoo.tools.cli", "bench-routed", "--batch-size", "1", "--stages", "stage3",
         "--kinds", "core", "--modes", "fwd+bwd", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "CUDA_HOME" not in proc.stderr and "No CUDA runtime" not in proc.stderr
    (row,) = _table_rows(proc.stdout).values()
    assert row["pass"] == "fwd+bwd"
    assert float(row["attnzoo (ms)"]) > 0 and float(row["legacy (ms)"]) > 0
    assert float(row["attnzoo peak (MiB)"]) > 0 and float(row["legacy peak (MiB)"]) > 0
    assert float(row["rel. diff of outputs"]) < 1e-5  # the same math in fp32


def test_bench_routed_rejects_a_bad_batch_size():
    from attnzoo.tools import bench_routed

    parser = argparse.ArgumentParser()
    bench_routed.add_arguments(parser)
    assert bench_routed.run(parser.parse_args(["--batch-size", "0"])) == 2
