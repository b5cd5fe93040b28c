"""``attnzoo bench``: the timing in alternating rounds (on a fake clock: deterministic, no timing
assertions), the choice of models, the results folder (markdown, CSV, picture) of one tiny run
end to end, and the ``--compile`` comparison."""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnzoo import _registry
from attnzoo.tools import bench
from attnzoo.tools._report import Footnotes
from attnzoo.tools._timing import Timing, time_in_rounds
from attnzoo.tools.bench import CSV_FIELDS, _eager_and_compiled


class _FakeClock:
    """A clock that only moves when a timed function runs: each call of ``work(...)`` advances it."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self) -> float:
        return self.now

    def work(self, name, durations):
        it = iter(durations)

        def fn():
            self.calls.append(name)
            self.now += next(it)
        return fn


def test_steady_runs_settle_after_min_runs():
    clock = _FakeClock()
    (t,) = time_in_rounds([clock.work("a", [0.01] * 100)], min_runs=5, budget=100, clock=clock)
    assert (t.runs, t.stop, t.settled) == (5, "settled", True)
    assert [t.min, t.median, t.max] == pytest.approx([0.01] * 3)
    assert t.spread == pytest.approx(0.0)


def test_runs_continue_until_the_median_stops_moving():
    clock = _FakeClock()
    # A slow start (a cold cache), then steady: the median must first walk down to 0.01 and stay.
    durations = [0.5, 0.4, 0.3, 0.2] + [0.01] * 100
    (t,) = time_in_rounds([clock.work("a", durations)], min_runs=3, settle=0.02, budget=100, clock=clock)
    assert t.stop == "settled"
    assert t.median == pytest.approx(0.01)
    assert 6 < t.runs < 20
    assert t.max == pytest.approx(0.5)


def test_a_median_that_keeps_moving_stops_at_max_runs_or_budget():
    clock = _FakeClock()
    growing = [0.001 * 1.5 ** i for i in range(100)]  # each run slower: the median never settles
    (t,) = time_in_rounds([clock.work("a", growing)], min_runs=3, max_runs=12, budget=1e9, clock=clock)
    assert (t.runs, t.stop) == (12, "max-runs")
    clock = _FakeClock()
    (t,) = time_in_rounds([clock.work("a", [1.0] * 100)], min_runs=50, budget=3.5, clock=clock)
    assert (t.runs, t.stop) == (4, "budget")  # 4 s of runs: the budget check follows each round
    clock = _FakeClock()
    (t,) = time_in_rounds([clock.work("a", [30.0] * 100)], min_runs=5, budget=10, clock=clock)
    assert (t.runs, t.stop, t.has_median) == (1, "budget", False)  # one run always happens


def test_functions_run_in_rotating_rounds_and_each_says_whether_it_settled():
    clock = _FakeClock()
    noisy = [0.02, 0.08] * 100  # alternates: its median keeps jumping between the two values
    a, b, c = time_in_rounds([clock.work("a", [0.01] * 100), clock.work("b", noisy), clock.work("c", [0.03] * 100)],
                             min_runs=3, budget=1.5, clock=clock)
    # every round runs each function once, and the order rotates: a b c, b c a, c a b, a b c ...
    assert clock.calls[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert a.runs == b.runs == c.runs
    assert (a.stop, b.stop, c.stop) == ("settled", "budget", "settled")
    assert a.median == pytest.approx(0.01) and c.median == pytest.approx(0.03)


def test_prepare_runs_before_each_call_outside_the_clock_and_on_round_reports_progress():
    clock = _FakeClock()
    prepared, progress = [], []

    def prepare():
        prepared.append(clock.now)
        clock.now += 5.0  # would dominate the times if it were inside the clock

    (t,) = time_in_rounds([clock.work("a", [0.01] * 100)], min_runs=3, budget=1e6, clock=clock, prepare=[prepare],
                          on_round=lambda rounds, timings, spent: progress.append((rounds, timings[0].runs)))
    assert len(prepared) == t.runs == 3
    assert t.max == pytest.approx(0.01)
    assert progress == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(ValueError, match="one entry per function"):
        time_in_rounds([lambda: None], prepare=[None, None])


@pytest.mark.parametrize("kwargs", [dict(min_runs=0), dict(min_runs=5, max_runs=4), dict(budget=0), dict(settle=1.0)])
def test_bad_timing_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="min_runs"):
        time_in_rounds([lambda: None], **kwargs)


def test_a_cell_shows_a_median_only_with_enough_runs_and_flags_an_unsettled_one():
    notes = Footnotes()
    assert Timing((0.002, 0.001, 0.003), "settled").cell(notes) == "2.00 (1.00-3.00, 3)"
    assert not notes.notes
    assert Timing((0.002,), "budget").cell(notes) == "2.00 (1 run, no median [1])"
    assert Timing((0.002, 0.004), "budget").cell(notes) == "2.00, 4.00 (2 runs, no median [1])"
    assert "time budget ended" in notes.lines()[0]
    t = Timing((1.0, 2.0, 3.0, 4.0, 5.0), "settled")
    assert t.quartiles == (2.0, 4.0) and t.spread == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        Timing((), "settled")


def _row(model, impl="attnzoo", twin_of=None, times=None, stop="settled", note=None, top1=80.0):
    pub = _registry.Published(params_m=10.0, gflops=1.0, top1=top1, img_size=224, source="a paper")
    r = bench._Row(model, impl, "Fam", pub, "timm" if impl == "timm" else "auto", twin_of, 224, 10.0, 1.0)
    r.timing = None if times is None else Timing(tuple(times), stop)
    r.note = note
    return r


def _cells(lines):
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {c[0]: dict(zip(header, c)) for c in ([x.strip() for x in l.strip("|").split("|")] for l in lines[2:])}


def test_the_table_never_prints_too_few_runs_as_a_median_and_gives_twin_ratios():
    args = argparse.Namespace(no_speed=False, batch_size=2, settle=0.02, min_runs=5)
    rows = [_row("az_m", times=[0.2, 0.2, 0.2]), _row("m", "timm", "az_m", times=[0.1, 0.1, 0.1]),
            _row("one", times=[0.5], stop="budget"), _row("skipped", note="triton: needs a GPU")]
    notes = Footnotes()
    table = _cells(bench._table(rows, args, notes))
    assert table["az_m"]["images/s"] == "10.0" and table["az_m"]["ms per batch"] == "200.0"
    assert table["az_m"]["vs timm"] == "2.00x" and table["m (timm)"]["vs timm"] == "—"
    assert table["az_m"]["settled"] == "yes"
    one = table["one"]
    assert one["images/s"] == "—" and one["ms per batch"] == "500.0 (1 run, no median)" and one["spread"] == "—"
    assert one["settled"].startswith("no [")
    assert table["skipped"]["images/s"].startswith("n/a [") and table["skipped"]["runs"] == "0"
    assert any("triton: needs a GPU" in line for line in notes.lines())


def test_default_models_are_the_smallest_with_a_published_top1_per_family():
    chosen = bench.default_models()
    assert [_registry.get_entry(n).family for n in chosen] == _registry.families()
    for name in chosen:
        family = _registry.get_entry(name).family
        rivals = [n for n in _registry.list_models(family) if _registry.get_entry(n).published.top1 is not None]
        assert _registry.get_entry(name).published.top1 is not None
        assert all(_registry.get_entry(name).published.params_m <= _registry.get_entry(n).published.params_m
                   for n in rivals)
    assert {"nat_mini", "az_shvit_s1", "biformer_tiny", "transnext_micro"} <= set(chosen)


def test_all_is_timed_in_groups_of_one_family_that_fit_in_memory(monkeypatch):
    sizes = {"az_a": 300.0, "az_b": 150.0, "c": 50.0, "az_giant": 1400.0, "d": 10.0}
    families = {"az_a": "F1", "az_b": "F1", "c": "F1", "az_giant": "F2", "d": "F3"}
    monkeypatch.setattr(bench, "param_count_m", lambda n: sizes[n])
    monkeypatch.setattr(bench, "timm_twin", lambda n: n[3:] if n.startswith("az_") else None)
    monkeypatch.setattr(bench._registry, "get_entry", lambda n: argparse.Namespace(family=families[n]))
    args = argparse.Namespace(all=True, no_twins=False)
    groups = bench._plan(list(sizes), args)
    assert groups == [
        [("az_a", "attnzoo", ""), ("a", "timm", "az_a")],  # 600M with its twin: alone
        [("az_b", "attnzoo", ""), ("b", "timm", "az_b"), ("c", "attnzoo", "")],  # 350M
        [("az_giant", "attnzoo", ""), ("giant", "timm", "az_giant")],
        [("d", "attnzoo", "")],
    ]
    args = argparse.Namespace(all=False, no_twins=True)
    assert bench._plan(["az_a", "d"], args) == [[("az_a", "attnzoo", ""), ("d", "attnzoo", "")]]


def test_the_default_results_folder_is_new_each_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = bench.results_dir(None)
    first.mkdir(parents=True)
    second = bench.results_dir(None)
    assert first.parent == second.parent == tmp_path.relative_to(tmp_path) / "bench-results"
    assert second != first and not second.exists()
    assert bench.results_dir("mine") == type(first)("mine")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One small ``attnzoo bench`` run: an attnzoo model without a twin, one with its timm twin."""
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "attnzoo.tools.cli", "bench", "--models", "nat_mini", "az_shvit_s1", "--img-size", "32",
         "--batch-size", "1", "--warmup", "0", "--min-runs", "3", "--max-runs", "3", "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_a_run_prints_the_table_and_writes_markdown_csv_and_picture(tiny_run):
    proc, out = tiny_run
    assert f"torch {torch.__version__}" in proc.stdout and "load average at the start" in proc.stdout
    assert f"results in {out}/ (bench.md, bench.csv, bench.png)" in proc.stderr
    assert "3/3 models settled" in proc.stderr or "models settled" in proc.stderr  # the progress bar
    rows = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    table = _cells(rows)
    assert list(table) == ["nat_mini", "az_shvit_s1", "shvit_s1 (timm)"]
    for name, row in table.items():
        assert row["runs"] == "3" and float(row["images/s"]) > 0 and row["spread"].startswith("±")
        assert row["settled"] == "yes" or row["settled"].startswith("no [")
    assert table["az_shvit_s1"]["vs timm"].endswith("x") and table["nat_mini"]["vs timm"] == "—"
    assert float(table["nat_mini"]["top-1 (%)"]) == _registry.get_entry("nat_mini").published.top1
    md = (out / "bench.md").read_text()
    assert md.startswith("## attnzoo bench") and "\n".join(rows) in md
    with open(out / "bench.csv", newline="") as f:
        data = list(csv.DictReader(f))
    assert tuple(data[0]) == CSV_FIELDS
    assert [(d["model"], d["impl"], d["twin_of"]) for d in data] == [
        ("nat_mini", "attnzoo", ""), ("az_shvit_s1", "attnzoo", ""), ("shvit_s1", "timm", "az_shvit_s1")]
    for d in data:
        assert d["runs"] == "3" and float(d["p25_ms"]) <= float(d["median_ms"]) <= float(d["p75_ms"])
        assert float(d["images_per_s"]) == pytest.approx(1e3 / float(d["median_ms"]), rel=1e-3)
        assert d["img_size"] == "32" and d["pub_img_size"] == "224"
    assert float(data[0]["gflops"]) == pytest.approx(2.69, abs=0.01)  # counted at the published 224 px
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_picture_leaves_out_what_it_cannot_place(tmp_path):
    from attnzoo.tools.bench_plot import main, plot_results

    base = dict(backend="auto", batch_size="2", gflops="2.0", pub_top1="80", settled="yes")
    rows = [dict(base, model="az_x", impl="attnzoo", family="F", twin_of="", images_per_s="10", median_ms="200",
                 p25_ms="190", p75_ms="220"),
            dict(base, model="x", impl="timm", family="F", twin_of="az_x", images_per_s="12", median_ms="166",
                 p25_ms="160", p75_ms="170"),
            dict(base, model="y", impl="attnzoo", family="G", twin_of="", images_per_s="", median_ms="", p25_ms="",
                 p75_ms=""),
            dict(base, model="z", impl="attnzoo", family="G", twin_of="", pub_top1="", images_per_s="5",
                 median_ms="400", p25_ms="390", p75_ms="410")]
    skipped = plot_results(rows, tmp_path / "a.png")
    assert skipped == ["z: no published top-1", "y: not timed or too few runs for a median"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "b.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    assert main([str(tmp_path / "b.csv"), str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**dict(dict(warmup=0, min_runs=3, max_runs=3, budget=5.0, settle=0.5,
                                          compile_backend="eager", compile_mode=None, fullgraph=False), **kw))


def test_eager_and_compiled_cells_for_a_module_that_compiles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU()).eval()
    twin = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    rows = _eager_and_compiled([("m", model), ("twin", twin)], torch.randn(2, 8), _args(), Footnotes())
    assert len(rows) == 2
    for eager, compiled, compile_s, speedup in rows:
        for cell in (eager, compiled):
            assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+, \d+( \[\d+\])?\)", cell), cell
        assert float(compile_s) >= 0 and speedup.endswith("x")
    # timed alternately: every column of one measurement has the same number of runs
    runs = {re.search(r", (\d+)", cell).group(1) for row in rows for cell in row[:2]}
    assert len(runs) == 1, rows


class _GraphBreak(nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()  # what a .item() or an untraceable call does; fullgraph=True refuses it
        return x * 2


def test_a_failed_compile_is_a_footnote_not_a_crash():
    notes = Footnotes()
    fine = nn.Linear(8, 8).eval()
    broken, ok = _eager_and_compiled([("m", _GraphBreak().eval()), ("fine", fine)], torch.randn(2, 8),
                                     _args(fullgraph=True), notes)
    (failure,) = [n for n in notes.lines() if ". m: torch.compile failed: " in n]
    assert broken[1] == f"n/a [{failure.split('.')[0]}]" and broken[2] == "—" and broken[0][0].isdigit()
    assert ok[1][0].isdigit() and ok[3].endswith("x")  # the other model is still compiled and timed


def test_compile_bench_times_an_az_model_and_its_timm_twin():
    proc = subprocess.run(
        [sys.executable, "-m", "attnzoo.tools.cli", "bench", "--compile", "--compile-backend", "eager", "--models",
         "az_shvit_s1", "--img-size", "64", "--batch-size", "1", "--warmup", "1", "--min-runs", "3", "--max-runs", "3",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile(backend='eager'" in proc.stdout
    lines = [l for l in proc.stdout.splitlines() if l.startswith("| az_shvit_s1")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[5] == "shvit_s1"
    for i in (1, 2, 6, 7):  # eager / compiled latency of ours and of timm's
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+, 3( \[\d+\])?\)", cells[i]), cells
    for i in (3, 8):
        assert float(cells[i]) > 0


def test_bench_rejects_bad_options_before_importing_torch(capsys):
    probe = ("import sys, attnzoo_cli\ntry:\n    attnzoo_cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print(e.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, "bench", "--min-runs", "3", "--budget", "0"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.stdout.split() == ["2", "False"]  # a usage error, found without importing torch
    assert "argument --budget: must be > 0, got 0" in proc.stderr
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--min-runs", "3", "--max-runs", "2", "--all", "--models", "nat_mini"])
    assert bench.run(args) == 2
    err = capsys.readouterr().err
    assert "--max-runs must be >= --min-runs (3), got 2" in err and "--all and --models" in err
