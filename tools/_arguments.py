"""Arguments of the ``attnzoo`` commands whose own modules import torch at their top: ``bench``,
``bench-ops`` and ``bench-routed``.

This module imports the standard library only, so ``attnzoo <command> --help`` (and any usage
error) answers without importing torch, timm or the models. Each command's module takes its
choices and defaults from here; tests/tools/test_cli.py checks the lists that mirror the
modules' own (backends, op names, stages) against them.
"""
from __future__ import annotations

import argparse
from typing import Sequence, Tuple

__all__ = ["bench", "bench_ops", "bench_routed", "name_list", "BENCH_BACKENDS", "BENCH_DEFAULTS", "DTYPES",
           "OP_BACKENDS", "ROUTED_STAGES"]

DTYPES = ("float32", "float16", "bfloat16")

BENCH_BACKENDS = ("auto", "reference", "triton")
"""``auto`` is the default dispatch (``backend=None``: a Triton kernel where it can run the inputs,
else the reference); the others pin every mixer (``attnzoo.kernels.BACKENDS``)."""

BENCH_DEFAULTS = {
    # Per device. budget: seconds of timing for one measurement, i.e. all models timed together
    # in the main table (one group of --all), one row in --vs-timm / --compile (row_budget).
    "cpu": {"batch_size": 1, "warmup": 1, "min_runs": 5, "max_runs": 200, "budget": 60.0, "row_budget": 10.0},
    "cuda": {"batch_size": 64, "warmup": 5, "min_runs": 10, "max_runs": 1000, "budget": 20.0, "row_budget": 5.0},
}

OP_BACKENDS = {
    "gna": ("triton", "reference", "flex", "sdpa"),
    "routed_attention": ("triton", "reference", "gather", "flex"),
    "aggregated_attention": ("triton", "reference", "flex"),
    "halo_attention": ("triton", "reference", "flex"),
}
"""Each op's bench-ops backends, the first being the one its ratio columns divide by (each case
module's ``BACKENDS``)."""

ROUTED_STAGES = ("stage1", "stage3")
"""bench-routed's biformer_tiny stage shapes (``attnzoo.tools.bench_routed.STAGES``)."""


def name_list(allowed: Sequence[str], what: str):
    """An argparse ``type``: a comma-separated list of names from ``allowed``, duplicates dropped."""

    def parse(text: str) -> Tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what} from {', '.join(allowed)}, "
                                             f"got {text!r}")
        return names

    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def bench(parser: argparse.ArgumentParser) -> None:
    cpu, cuda = BENCH_DEFAULTS["cpu"], BENCH_DEFAULTS["cuda"]
    what = parser.add_argument_group("what to measure")
    what.add_argument("--models", nargs="+", metavar="PATTERN",
                      help="fnmatch patterns over the registered names, e.g. 'nat_*' dinat_tiny (default: the smallest "
                           "model with a published ImageNet top-1 of each family)")
    what.add_argument("--all", action="store_true",
                      help="every registered model, the 1.4B-parameter giants included (long on a CPU; models are "
                           "timed in groups that fit in memory, one family at a time, each group with its own --budget)")
    what.add_argument("--no-twins", action="store_true",
                      help="leave out the timm twins (by default each az_ model is timed beside timm's own model of "
                           "the same name, in the same rounds)")
    what.add_argument("--no-speed", action="store_true", help="parameters and GFLOPs only, no timing")
    what.add_argument("--no-ops", action="store_true",
                      help="leave out the fused ops' headline table (one row per op, after the models; timed by "
                           "default unless --no-speed or --models / --all select models)")
    what.add_argument("--vs-timm", action="store_true",
                      help="instead of the main table: forward latency of each selected az_ model over its timm twin, "
                           "one row at a time (reference backend; defaults: batch 8, 224 px, cpu)")
    what.add_argument("--compile", action="store_true",
                      help="instead of the main table: eager vs torch.compile latency and the compile time of each "
                           "selected model, and of the timm twin of each az_ model compiled the same way")
    what.add_argument("--compile-backend", default="inductor", metavar="NAME",
                      help="torch.compile backend for --compile (default: inductor)")
    what.add_argument("--compile-mode", default=None, metavar="MODE",
                      help="torch.compile mode for --compile (default: torch's default)")
    what.add_argument("--fullgraph", action="store_true", help="--compile with fullgraph=True (a graph break is an error)")

    how = parser.add_argument_group("how")
    how.add_argument("--batch-size", type=int, metavar="N",
                     help=f"images per forward (default: {cpu['batch_size']} on cpu, {cuda['batch_size']} on cuda)")
    how.add_argument("--img-size", type=int, metavar="N",
                     help="resolution of the timed forwards (default: each model's published img_size; GFLOPs are "
                          "always counted at the published img_size)")
    how.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    how.add_argument("--dtype", choices=DTYPES, default="float32", help="default: float32")
    how.add_argument("--backends", type=name_list(BENCH_BACKENDS, "backends"), default=("auto",), metavar="LIST",
                     help="comma-separated backends to time, one row each: auto (the default dispatch: a Triton kernel "
                          "where it runs the inputs, else the reference), reference, triton (default: auto)")

    timing = parser.add_argument_group(
        "timing", "The models of one measurement run once per round, in turn, until the median of every one has "
                  "settled (moved by less than --settle over its last --min-runs runs) or --budget seconds pass.")
    timing.add_argument("--warmup", type=int, metavar="N",
                        help=f"untimed forwards of each model first (default: {cpu['warmup']} on cpu, "
                             f"{cuda['warmup']} on cuda)")
    timing.add_argument("--min-runs", type=int, metavar="N",
                        help=f"rounds at least, and the window the median must settle over (default: "
                             f"{cpu['min_runs']} on cpu, {cuda['min_runs']} on cuda)")
    timing.add_argument("--max-runs", type=int, metavar="N",
                        help=f"rounds at most (default: {cpu['max_runs']} on cpu, {cuda['max_runs']} on cuda)")
    timing.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                        help=f"time limit of one measurement: all models of the main table together (default: "
                             f"{cpu['budget']:g} on cpu, {cuda['budget']:g} on cuda), one row of --vs-timm / --compile "
                             f"(default: {cpu['row_budget']:g} on cpu, {cuda['row_budget']:g} on cuda)")
    timing.add_argument("--settle", type=float, default=0.02, metavar="FRACTION",
                        help="a median is settled when it moved by less than this fraction over the last --min-runs "
                             "runs (default: 0.02)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR",
                     help="results folder for the table (bench.md, bench.csv) and the picture (bench.png) (default: "
                          "bench-results/<date>-<time>; the path is printed at the end)")
    out.add_argument("--no-plot", action="store_true", help="write the tables only, no picture")


def bench_ops(parser: argparse.ArgumentParser) -> None:
    every_backend = tuple(dict.fromkeys(b for bs in OP_BACKENDS.values() for b in bs))
    parser.add_argument("--ops", metavar="LIST", default=tuple(OP_BACKENDS), type=name_list(tuple(OP_BACKENDS), "ops"),
                        help=f"comma-separated ops to benchmark (default: all, {','.join(OP_BACKENDS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: float16 on cuda, float32 on cpu")
    parser.add_argument("--small", action="store_true",
                        help="each op's tiny case set (CPU-sized) instead of the full-size one")
    parser.add_argument("--cases", metavar="LIST",
                        help="comma-separated case names (default: every case of the selected ops' set); each table "
                             "lists its cases, and an unknown name is refused with the list of known ones")
    parser.add_argument("--backends", metavar="LIST", type=name_list(every_backend, "backends"),
                        help="comma-separated, in table order; each op runs those it knows, the first of them is the "
                             "one its ratios divide by (default: each op's own list: "
                             + "; ".join(f"{op}: {','.join(bs)}" for op, bs in OP_BACKENDS.items()) + ")")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--iters", type=int, metavar="N", help="timed runs per measurement (default: 3 on cpu, 30 on cuda)")
    parser.add_argument("--warmup", type=int, metavar="N", help="untimed runs first (default: 1 on cpu, 10 on cuda)")


def bench_routed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per call (default: 8)")
    parser.add_argument("--stages", nargs="+", choices=ROUTED_STAGES, default=list(ROUTED_STAGES),
                        help="biformer_tiny stage shapes at 224 px: stage1 56x56, C=64, 2 heads, topk 1; stage3 "
                             "14x14, C=256, 8 heads, topk 16 (default: both)")
    parser.add_argument("--kinds", nargs="+", choices=("mixer", "core"), default=["mixer", "core"],
                        help="the whole mixer and/or the attention core (default: both)")
    parser.add_argument("--modes", nargs="+", choices=("fwd", "fwd+bwd"), default=["fwd", "fwd+bwd"],
                        help="inference forward and/or forward + backward (default: both)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights and inputs of both implementations (default: float32)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="alternating timing rounds per implementation; the median is reported (default: 3)")
    parser.add_argument("--min-run-time", type=float, default=1.0, metavar="S",
                        help="seconds of each blocked measurement within a round (default: 1.0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's own default, the number of cores)")
    parser.add_argument("--no-memory", action="store_true", help="time only, no peak-memory subprocesses")
