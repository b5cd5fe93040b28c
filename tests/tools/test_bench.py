"""``attnzoo bench``'s adaptive timing (on a fake clock: deterministic, no timing assertions) and
its ``--compile`` comparison."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from attnzoo.tools.bench import Timing, _eager_and_compiled, _Footnotes, time_until_settled


class _FakeClock:
    """A clock that only moves when a timed function runs: each call of ``work(seconds)`` advances it."""

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
    (t,) = time_until_settled([clock.work("a", [0.01] * 100)], min_runs=5, budget=100, clock=clock)
    assert (t.runs, t.stop) == (5, "settled")
    assert [t.min, t.median, t.max] == pytest.approx([0.01] * 3)


def test_runs_continue_until_the_median_stops_moving():
    clock = _FakeClock()
    # A slow start (a cold cache), then steady: the median must first walk down to 0.01 and stay.
    durations = [0.5, 0.4, 0.3, 0.2] + [0.01] * 100
    (t,) = time_until_settled([clock.work("a", durations)], min_runs=3, settle=0.02, budget=100, clock=clock)
    assert t.stop == "settled"
    assert t.median == pytest.approx(0.01)
    assert 6 < t.runs < 20
    assert t.max == pytest.approx(0.5)


def test_a_median_that_keeps_moving_stops_at_max_runs_or_budget():
    clock = _FakeClock()
    growing = [0.001 * 1.5 ** i for i in range(100)]  # each run slower: the median never settles
    (t,) = time_until_settled([clock.work("a", growing)], min_runs=3, max_runs=12, budget=1e9, clock=clock)
    assert (t.runs, t.stop) == (12, "max-runs")
    clock = _FakeClock()
    (t,) = time_until_settled([clock.work("a", [1.0] * 100)], min_runs=50, budget=3.5, clock=clock)
    assert (t.runs, t.stop) == (4, "budget")  # 4 s of runs: the budget check follows each run
    clock = _FakeClock()
    (t,) = time_until_settled([clock.work("a", [30.0] * 100)], min_runs=5, budget=10, clock=clock)
    assert (t.runs, t.stop) == (1, "budget")  # one run always happens


def test_several_functions_are_timed_in_turn_until_all_settle():
    clock = _FakeClock()
    a, b = time_until_settled([clock.work("a", [0.01] * 100), clock.work("b", [0.3, 0.2] + [0.02] * 100)],
                              min_runs=3, budget=100, clock=clock)
    assert clock.calls[:4] == ["a", "b", "a", "b"]
    assert a.runs == b.runs and a.stop == b.stop == "settled"
    assert a.median == pytest.approx(0.01) and b.median == pytest.approx(0.02)


@pytest.mark.parametrize("kwargs", [dict(min_runs=0), dict(min_runs=5, max_runs=4), dict(budget=0), dict(settle=1.0)])
def test_bad_timing_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="min_runs"):
        time_until_settled([lambda: None], **kwargs)


def test_a_cell_shows_median_min_max_and_runs_and_flags_an_unsettled_median():
    notes = _Footnotes()
    assert Timing((0.002, 0.001, 0.003), "settled").cell(notes) == "2.00 (1.00-3.00, 3)"
    assert not notes.notes
    assert Timing((0.002,), "budget").cell(notes) == "2.00 (2.00-2.00, 1 [1])"
    assert "time budget ended" in notes.lines()[0]


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**dict(dict(warmup=0, min_runs=2, max_runs=3, budget=5.0, settle=0.5,
                                          compile_backend="eager", compile_mode=None, fullgraph=False), **kw))


def test_eager_and_compiled_cells_for_a_module_that_compiles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU()).eval()
    twin = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    rows = _eager_and_compiled([("m", model), ("twin", twin)], torch.randn(2, 8), _args(), _Footnotes())
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
    notes = _Footnotes()
    fine = nn.Linear(8, 8).eval()
    broken, ok = _eager_and_compiled([("m", _GraphBreak().eval()), ("fine", fine)], torch.randn(2, 8),
                                     _args(fullgraph=True), notes)
    (failure,) = [n for n in notes.lines() if ". m: torch.compile failed: " in n]
    assert broken[1] == f"n/a [{failure.split('.')[0]}]" and broken[2] == "—" and broken[0][0].isdigit()
    assert ok[1][0].isdigit() and ok[3].endswith("x")  # the other model is still compiled and timed


def test_compile_bench_times_an_az_model_and_its_timm_twin():
    proc = subprocess.run(
        [sys.executable, "-m", "attnzoo.tools.cli", "bench", "--compile", "--compile-backend", "eager", "--models",
         "az_shvit_s1", "--img-size", "64", "--batch-size", "1", "--warmup", "1", "--min-runs", "1", "--max-runs", "2",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.compile(backend='eager'" in proc.stdout
    lines = [l for l in proc.stdout.splitlines() if l.startswith("| az_shvit_s1")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[5] == "shvit_s1"
    for i in (1, 2, 6, 7):  # eager / compiled latency of ours and of timm's
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+, [12]( \[\d+\])?\)", cells[i]), cells
    for i in (3, 8):
        assert float(cells[i]) > 0


def test_bench_rejects_bad_timing_options():
    proc = subprocess.run([sys.executable, "-m", "attnzoo.tools.cli", "bench", "--min-runs", "3", "--max-runs", "2",
                           "--budget", "0"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "--max-runs must be >= --min-runs (3), got 2" in proc.stderr and "--budget must be > 0" in proc.stderr
