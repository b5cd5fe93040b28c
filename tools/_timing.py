"""Timing in alternating rounds, for the benchmarks of ``attnzoo bench``.

On a shared machine the load drifts while a benchmark runs. Timing one model after another gives
each model a different slice of that drift, so two rows of one table disagree for reasons that
have nothing to do with the models. Here every function of a measurement runs once per round, in
an order that rotates from round to round, until each one's median has settled or the time budget
ends; a drift then hits every function alike, and a row that did not settle says so.

No torch here: ``sync`` (e.g. ``torch.cuda.synchronize``) and the clock are passed in, so the
logic is tested on a fake clock.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["MIN_RUNS_FOR_MEDIAN", "SETTLE", "Timing", "time_in_rounds"]

SETTLE = 0.02
"""Default tolerance: a median is settled when it moved by less than 2% over the last rounds."""

MIN_RUNS_FOR_MEDIAN = 3
"""Fewer runs than this are shown as what they are (one or two runs), never as a median."""

STOP_REASONS = ("settled", "budget", "max-runs")


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run of one function, and why the runs stopped: 'settled' (its median
    moved by less than the tolerance over the last ``min_runs`` rounds), 'budget' (the time budget
    ended first) or 'max-runs'."""

    times: Tuple[float, ...]
    stop: str

    def __post_init__(self):
        if not self.times:
            raise ValueError("a Timing needs at least one run")
        if self.stop not in STOP_REASONS:
            raise ValueError(f"stop must be one of {STOP_REASONS}, got {self.stop!r}")

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def settled(self) -> bool:
        return self.stop == "settled"

    @property
    def has_median(self) -> bool:
        """Whether there are enough runs for a median to mean something (``MIN_RUNS_FOR_MEDIAN``)."""
        return self.runs >= MIN_RUNS_FOR_MEDIAN

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def quartiles(self) -> Tuple[float, float]:
        """(25th, 75th) percentile of the runs (inclusive method; equal to the median for one run)."""
        if self.runs == 1:
            return self.times[0], self.times[0]
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q3

    @property
    def spread(self) -> float:
        """Half the interquartile range over the median: the +- fraction within which half the runs lie."""
        q1, q3 = self.quartiles
        return (q3 - q1) / 2 / self.median

    def cell(self, notes=None) -> str:
        """``median (min-max, runs)`` in ms, or ``value (1 run)`` / ``a, b (2 runs)`` when there are too
        few runs for a median; an unsettled measurement carries a footnote (``notes.ref``) saying why."""
        mark = ""
        if not self.settled and notes is not None:
            mark = " " + notes.ref("the median had not settled when the " +
                                   ("time budget ended (--budget)" if self.stop == "budget" else "run limit came (--max-runs)"))
        if not self.has_median:
            values = ", ".join(f"{t * 1e3:.2f}" for t in self.times)
            return f"{values} ({self.runs} run{'s' if self.runs > 1 else ''}, no median{mark})"
        return f"{self.median * 1e3:.2f} ({self.min * 1e3:.2f}-{self.max * 1e3:.2f}, {self.runs}{mark})"


def time_in_rounds(fns: Sequence[Callable[[], object]], *, sync: Callable[[], None] = lambda: None, min_runs: int = 5,
                   max_runs: int = 200, budget: float = 10.0, settle: float = SETTLE,
                   clock: Callable[[], float] = time.perf_counter,
                   on_round: Optional[Callable[[int, List[Timing], float], None]] = None,
                   prepare: Optional[Sequence[Optional[Callable[[], object]]]] = None) -> List[Timing]:
    """Times ``fns`` in rounds until every one's median has settled, or ``max_runs`` rounds or
    ``budget`` seconds have passed; one Timing per function, in the order given.

    Each round calls every function once, timed alone (``sync()`` after the call, before the clock
    stops); the order rotates by one each round, so no function always follows the same other
    one. A median is settled when the medians after each of its last ``min_runs`` runs lie within
    ``settle`` times the current median. At least ``min_runs`` rounds run unless the budget ends
    first, and at least one round always runs. ``on_round(rounds done, timings so far, seconds
    spent)`` is called after each round (a progress bar). ``prepare[i]``, when given, runs before
    each call of ``fns[i]``, outside the clock (e.g. switching a shared module's backend).
    """
    if min_runs < 1 or max_runs < min_runs or budget <= 0 or not 0 <= settle < 1:
        raise ValueError(f"need 1 <= min_runs <= max_runs, budget > 0 and 0 <= settle < 1; got min_runs={min_runs}, "
                         f"max_runs={max_runs}, budget={budget}, settle={settle}")
    n = len(fns)
    if n == 0:
        return []
    if prepare is not None and len(prepare) != n:
        raise ValueError(f"prepare needs one entry per function ({n}), got {len(prepare)}")
    times: List[List[float]] = [[] for _ in fns]
    medians: List[List[float]] = [[] for _ in fns]

    def is_settled(ms: List[float]) -> bool:
        return len(ms) >= min_runs and max(ms[-min_runs:]) - min(ms[-min_runs:]) <= settle * ms[-1]

    start = clock()
    rounds = 0
    while True:
        for i in range(n):
            j = (i + rounds) % n
            if prepare is not None and prepare[j] is not None:
                prepare[j]()
            t0 = clock()
            fns[j]()
            sync()
            times[j].append(clock() - t0)
            medians[j].append(statistics.median(times[j]))
        rounds += 1
        settled = [is_settled(ms) for ms in medians]
        spent = clock() - start
        if all(settled):
            stop = None
        elif rounds >= max_runs:
            stop = "max-runs"
        elif spent >= budget:
            stop = "budget"
        else:
            if on_round is not None:
                on_round(rounds, [Timing(tuple(ts), "settled" if s else "budget") for ts, s in zip(times, settled)], spent)
            continue
        result = [Timing(tuple(ts), "settled" if s else stop) for ts, s in zip(times, settled)]
        if on_round is not None:
            on_round(rounds, result, spent)
        return result
