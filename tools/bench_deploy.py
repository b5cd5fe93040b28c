"""Deployed speed: eager vs torch.compile (with and without freezing), an AOTInductor package and onnxruntime, on the CPU.

``attnzoo bench-deploy`` times, for the smallest model of each family (or ``--models``), at each
``--batches`` x ``--sizes`` (``published`` is the model's published input size), fp32 on the
CPU, the forward pass of:

* ``eager``: the model on the reference backend, eval, no_grad;
* ``compile``: ``torch.compile(model)`` (Inductor, static shapes: compiled for the row's shape);
* ``compile+freezing``: the same with ``torch._inductor.config.freezing = True`` (weights become
  constants: folded and, on the CPU, prepacked for oneDNN);
* ``aoti``: one AOTInductor package per model, exported with a dynamic batch, height and width
  (``attnzoo export --format aoti``: the deployment artifact, one file for every row);
* ``onnxruntime``: one ONNX file per model, dynamic likewise, run by onnxruntime's CPU provider
  (intra-op threads = torch's, no spinning).

Each exported file is the one ``attnzoo export`` writes and checks. The variants of one row are
timed alternately (one call of each per round, ``--rounds`` rounds after ``--warmup`` calls, or
until ``--budget`` seconds), so load that drifts on a shared machine reaches every column alike;
the table gives the median ms and the speed-up over eager (eager median / variant median), and
every variant's output is compared with eager (relative error; a variant off by more than 1e-3
is flagged). Output: markdown with device, versions, date and the command, ready for
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["add_arguments", "run", "VARIANTS"]

VARIANTS = ("eager", "compile", "compile+freezing", "aoti", "onnxruntime")
CHECK_BOUND = 1e-3  # fp32 deployment vs eager: looser than export's own check, flags only real breakage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="models to time (default: the smallest model of each family)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sizes", nargs="+", default=["published", "512"], metavar="SIZE",
                        help="square input sizes: 'published' (the model's) or pixels (default: published 512)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)} (eager is always timed)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant per row")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per row (one call of each variant per round)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing per row at most (after --rounds' first 3)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of torch and onnxruntime (default: torch's)")
    parser.add_argument("--workdir", default=None, help="folder for the exported files (default: a temporary one)")


def _smallest_per_family() -> List[str]:
    import attnzoo

    first: Dict[str, str] = {}
    for name in attnzoo.list_models():
        first.setdefault(attnzoo.get_entry(name).family, name)
    return list(first.values())


def _median_ms(times: Sequence[float]) -> float:
    return statistics.median(times) * 1e3


def _rel(got, want) -> float:
    import torch

    got = torch.as_tensor(got[0] if isinstance(got, (list, tuple)) else got).double()
    want = want.double()
    return float((got - want).norm() / want.norm())


class _Deployed:
    """The exported files of one model (built once, shared by its rows)."""

    def __init__(self, name: str, model, workdir: Path, variants: Sequence[str], threads: int, log):
        import torch

        from attnzoo.tools import export as ex

        self.runners: Dict[str, Callable] = {}
        self.notes: Dict[str, str] = {}
        self.prepare_s: Dict[str, float] = {}
        wanted = [v for v in ("aoti", "onnxruntime") if v in variants]
        if not wanted:
            return
        x = torch.randn(2, 3, 96, 96)
        t0 = time.perf_counter()
        try:
            program = ex.trace(model, x, "batch,hw", name)
        except ex.ExportError as exc:
            for v in wanted:
                self.notes[v] = f"export failed: {str(exc).splitlines()[0][:120]}"
            return
        trace_s = time.perf_counter() - t0
        points = [(2, 96, 96), (1, 97, 131)]
        for variant, fmt, suffix in (("aoti", "aoti", ".pt2"), ("onnxruntime", "onnx", ".onnx")):
            if variant not in wanted:
                continue
            path = workdir / f"{name}{suffix}"
            t0 = time.perf_counter()
            try:
                ex.write_verified(fmt, program, model, path, points)
            except ex.ExportError as exc:
                self.notes[variant] = f"failed: {str(exc).splitlines()[0][:120]}"
                continue
            self.prepare_s[variant] = trace_s + time.perf_counter() - t0
            self.runners[variant] = ex._loader(fmt, path, "cpu")
            log(f"  {variant}: {path.name} ({os.path.getsize(path) / 2**20:.0f} MB) in {self.prepare_s[variant]:.0f} s")


def _compiled(model, x, freezing: bool):
    import torch

    torch._dynamo.reset()
    with torch._inductor.config.patch(freezing=freezing):
        fn = torch.compile(model, fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x)  # compiles (freezing is read at compile time)
    return fn, time.perf_counter() - t0


def _time_row(fns: Dict[str, Callable], x, warmup: int, rounds: int, budget: float) -> Dict[str, List[float]]:
    import torch

    times: Dict[str, List[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn(x)
        start = time.perf_counter()
        for r in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t0)
            if r >= 2 and time.perf_counter() - start > budget:
                break
    return times


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    import timm
    import torch

    import attnzoo
    from attnzoo.tools import export as ex

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"attnzoo bench-deploy: unknown variants {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    variants = ["eager"] + [v for v in VARIANTS[1:] if v in variants]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    names = args.models or _smallest_per_family()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731 (progress; the table goes to stdout)

    workdir_ctx = tempfile.TemporaryDirectory(prefix="attnzoo-bench-deploy-") if args.workdir is None else None
    workdir = Path(args.workdir or workdir_ctx.name)
    workdir.mkdir(parents=True, exist_ok=True)
    rows: List[List[str]] = []
    notes: List[str] = []
    try:
        for name in names:
            torch.manual_seed(0)
            model, published = ex.build_model(name)
            log(f"{name}: preparing {', '.join(v for v in variants if v in ('aoti', 'onnxruntime'))}")
            deployed = _Deployed(name, model, workdir, variants, threads, log)
            for variant, note in deployed.notes.items():
                notes.append(f"{name} {variant}: {note}")
            for size in args.sizes:
                h, w = published if size == "published" else (int(size), int(size))
                for batch in args.batches:
                    x = torch.randn(batch, 3, h, w)
                    fns: Dict[str, Callable] = {"eager": model}
                    with torch.no_grad():
                        want = model(x)
                    compile_s = {}
                    for variant, freezing in (("compile", False), ("compile+freezing", True)):
                        if variant in variants:
                            try:
                                fns[variant], compile_s[variant] = _compiled(model, x, freezing)
                            except Exception as exc:  # a compile failure is a result, not a crash
                                notes.append(f"{name} {variant} at {batch}x{h}x{w}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    fns.update({v: r for v, r in deployed.runners.items()})
                    with torch.no_grad():
                        for variant, fn in list(fns.items())[1:]:
                            err = _rel(fn(x), want)
                            if not err <= CHECK_BOUND:
                                notes.append(f"{name} {variant} at {batch}x{h}x{w}: output differs from eager (rel. error {err:.1e}); not timed")
                                del fns[variant]
                    log(f"  timing {name} batch {batch} at {h}x{w}: {', '.join(fns)}")
                    times = _time_row(fns, x, args.warmup, args.rounds, args.budget)
                    eager_ms = _median_ms(times["eager"])
                    cells = [name, str(batch), f"{h}x{w}", f"{eager_ms:.1f}"]
                    for variant in variants[1:]:
                        if variant in times:
                            ms = _median_ms(times[variant])
                            cells.append(f"{ms:.1f} ({eager_ms / ms:.2f}x)")
                        else:
                            cells.append("n/a")
                    cells.append(str(len(times["eager"])))
                    rows.append(cells)
                    print("| " + " | ".join(cells) + " |", file=sys.stderr, flush=True)
                    del fns
                    torch._dynamo.reset()
    finally:
        if workdir_ctx is not None:
            workdir_ctx.cleanup()

    import onnxruntime

    print(f"## Deployed speed on the CPU (fp32): eager vs compiled vs exported\n")
    print(f"- device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} intra-op thread(s) "
          f"(torch and onnxruntime)")
    print(f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, python {platform.python_version()}")
    print(f"- date: {datetime.date.today().isoformat()}")
    print(f"- command: `{shlex.join(['attnzoo', 'bench-deploy', *argv])}`")
    print("- median ms per forward (speed-up over eager); variants of a row timed alternately; "
          "aoti / onnxruntime: one dynamic-shape file per model (exported at 2x3x96x96, checked by attnzoo export)\n")
    headers = ["model", "batch", "size", "eager ms"] + [f"{v} ms" for v in variants[1:]] + ["rounds"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    return 0
