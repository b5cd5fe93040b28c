"""``attnzoo bench``: parameters, GFLOPs and speed of attnzoo's models beside their published
ImageNet top-1, as a table and a picture.

By default it measures the smallest model with a published top-1 of each family, and beside each
``az_`` model timm's own model of the same name (its twin), in a few minutes on a CPU; ``--models``
picks others and ``--all`` takes every registered model. Every run writes the table (bench.md,
bench.csv) and a picture of published top-1 against measured images/s and against GFLOPs
(bench.png) into a results folder named at the end.

Speed is timed in alternating rounds (``attnzoo.tools._timing``): every model of the measurement
runs one forward per round, in an order that rotates, until the median of each has settled or
the time budget ends, so drifting load on a shared machine hits every row alike. Each row says
whether its median settled, how widely its runs spread, and how many there were; a model with
fewer than three runs shows its runs, never a median. ``--vs-timm`` and ``--compile`` print the
older per-row comparisons (each az_ model over its twin; eager over torch.compile).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import fnmatch
import gc
import importlib
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from tqdm import tqdm

import attnzoo
from attnzoo import _registry
from attnzoo.kernels import BackendUnavailableError
from attnzoo.tools import _arguments
from attnzoo.tools._report import Footnotes, device_name, markdown_table, version_of
from attnzoo.tools._timing import MIN_RUNS_FOR_MEDIAN, Timing, time_in_rounds
from attnzoo.tools.flops import gflops_macs

__all__ = ["add_arguments", "run", "select_models", "default_models", "set_backend", "timm_twin", "time_forward",
           "CSV_FIELDS"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TWIN_PREFIX = "az_"
GROUP_PARAMS_M = 400.0
"""--all: the models timed together in one group hold at most this many million parameters
(with their twins), so a group's weights stay around 2 GB in fp32 (a larger model is alone)."""

CSV_FIELDS = (
    "model", "impl", "twin_of", "family", "backend", "device", "dtype", "batch_size", "img_size",
    "params_m", "gflops", "pub_params_m", "pub_gflops", "pub_top1", "pub_img_size", "pub_source",
    "runs", "median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms", "images_per_s", "settled", "stop", "note",
)
"""Columns of bench.csv, one row per model and backend (measured figures empty where not measured)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _arguments.bench(parser)


def select_models(patterns: Optional[Sequence[str]]) -> List[str]:
    """Registered names matching any pattern, in registration order (all when ``patterns`` is empty).

    Raises ValueError when nothing is registered or a pattern matches no name.
    """
    names = _registry.list_models()
    if not names:
        raise ValueError("no attnzoo models are registered")
    if not patterns:
        return names
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise ValueError(
            f"--models pattern(s) {', '.join(map(repr, unmatched))} match no registered model; "
            f"registered: {', '.join(names)}"
        )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def param_count_m(name: str) -> float:
    """Millions of parameters of a registered model, built on the meta device (nothing allocated)."""
    model = timm.create_model(name, pretrained=False, device="meta")
    return sum(p.numel() for p in model.parameters()) / 1e6


def default_models() -> List[str]:
    """For each family, in registration order, its smallest model (fewest parameters: the published
    count, else counted) among those with a published ImageNet top-1; the smallest of all where
    none has one."""
    chosen = []
    for family in _registry.families():
        names = _registry.list_models(family)
        with_top1 = [n for n in names if _registry.get_entry(n).published.top1 is not None]

        def size(n: str) -> float:
            published = _registry.get_entry(n).published.params_m
            return published if published is not None else param_count_m(n)

        chosen.append(min(with_top1 or names, key=size))
    return chosen


def set_backend(model: torch.nn.Module, backend: Optional[str]) -> int:
    """Sets ``backend`` on every submodule that has that attribute (the mixers); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
            count += 1
    return count


def timm_twin(name: str) -> Optional[str]:
    """timm's own model of an attnzoo name (``az_<timm name>``), None when timm has none."""
    if name.startswith(TWIN_PREFIX) and name[len(TWIN_PREFIX):] in _registry.timm_builtin_names():
        return name[len(TWIN_PREFIX):]
    return None


def _backend_refusal(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run any model on ``device`` (None when it may: each model is then tried)."""
    if backend in ("auto", "reference"):
        return None
    if backend == "triton":
        if device.type != "cuda":
            return "the Triton kernels run on CUDA GPUs only (attnzoo env says what this machine has)"
        from attnzoo.tools.env import attnzoo_ops

        ops = attnzoo_ops()
        if not any("triton" in op.backends for op in ops.values()):
            return f"no op has a Triton backend yet ({', '.join(ops)}: reference only)"
        try:
            importlib.import_module("triton")
        except ImportError:
            return "triton is not installed (pip install -e '.[triton]' in the checkout)"
        return None
    return f"unknown backend {backend!r}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing_rule(args: argparse.Namespace, per: str) -> str:
    return (f"after {args.warmup} warmup forward(s) each, the models are timed in rounds (one forward each per round, "
            f"the order rotating) until every median moved by < {args.settle:.0%} over its last {args.min_runs} runs "
            f"(at most {args.max_runs} rounds or {args.budget:g} s {per})")


def time_forward(models: Sequence[torch.nn.Module], x: torch.Tensor, args: argparse.Namespace) -> List[Timing]:
    """Forward latency (eval, no_grad) of each model on ``x``, timed in alternating rounds after
    ``args.warmup`` untimed forwards each."""
    with torch.no_grad():
        for model in models:
            for _ in range(args.warmup):
                model(x)
        _sync(x.device)
        return time_in_rounds([lambda m=m: m(x) for m in models], sync=lambda: _sync(x.device),
                              min_runs=args.min_runs, max_runs=args.max_runs, budget=args.budget, settle=args.settle)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _versions(triton: bool = True) -> str:
    text = f"attnzoo {attnzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
    if triton:
        text += f"triton {version_of('triton')}, "
    return text + f"python {platform.python_version()}"


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg()) + f" (1 / 5 / 15 min) on {os.cpu_count()} cores"
    except OSError:
        return "not available"


# --- the main table ------------------------------------------------------------------------------

@dataclass
class _Row:
    """One model (attnzoo's or its timm twin) under one backend, and what was measured of it."""

    model: str
    impl: str  # "attnzoo" or "timm"
    family: str
    published: _registry.Published  # of the attnzoo model (a twin has the same weights and figures)
    backend: str  # "auto" / "reference" / "triton"; "timm" for a twin
    twin_of: Optional[str] = None
    size: int = 0
    params_m: Optional[float] = None
    gflops: Optional[float] = None
    timing: Optional[Timing] = None
    note: Optional[str] = None  # why it was not timed

    @property
    def label(self) -> str:
        return f"{self.model} (timm)" if self.impl == "timm" else self.model


def _plan(names: Sequence[str], args: argparse.Namespace) -> List[List[Tuple[str, str, str]]]:
    """Groups of (model, impl, twin_of) timed together: one group, or with --all one family at a
    time in groups of at most GROUP_PARAMS_M million parameters."""
    items = []
    for name in names:
        items.append((name, "attnzoo", ""))
        twin = None if args.no_twins else timm_twin(name)
        if twin is not None:
            items.append((twin, "timm", name))
    if not args.all:
        return [items]
    groups: List[List[Tuple[str, str, str]]] = []
    current: List[Tuple[str, str, str]] = []
    weight, family = 0.0, None
    for item in items:
        name, impl, twin_of = item
        fam = _registry.get_entry(twin_of or name).family
        size = 0.0 if impl == "timm" else param_count_m(name) * (2 if not args.no_twins and timm_twin(name) else 1)
        if current and impl == "attnzoo" and (fam != family or weight + size > GROUP_PARAMS_M):
            groups.append(current)
            current, weight = [], 0.0
        current.append(item)
        weight += size
        family = fam
    if current:
        groups.append(current)
    return groups


def _create(name: str, size: int, published_size: int) -> torch.nn.Module:
    """The model, built for ``size`` where its constructor takes ``img_size`` (MaxViT sizes its
    partitions from it) and ``size`` is not the published one; others take any size as built."""
    if size != published_size:
        try:
            return timm.create_model(name, pretrained=False, img_size=size)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=False)


def size_on_meta(name: str, img_size: int) -> Tuple[float, float]:
    """(millions of parameters, GFLOPs: multiply-adds of one image at ``img_size``), counted on the
    model built on the meta device: shapes only, nothing allocated or computed, so it costs a
    fraction of a forward (and nothing for the 1.4B-parameter models with --no-speed)."""
    model = timm.create_model(name, pretrained=False, device="meta")
    return sum(p.numel() for p in model.parameters()) / 1e6, gflops_macs(model, img_size)


def _prepare(items: Sequence[Tuple[str, str, str]], args: argparse.Namespace, device: torch.device,
             refusals: Dict[str, Optional[str]], bar_desc: str):
    """Counts the parameters and GFLOPs of every model of a group (on the meta device); to time
    them, builds each and runs its warmup forwards. Returns (rows, {id(row): (module, input)}) for
    the rows that can be timed."""
    dtype = _DTYPES[args.dtype]
    rows: List[_Row] = []
    ready: Dict[int, Tuple[torch.nn.Module, torch.Tensor]] = {}
    inputs: Dict[int, torch.Tensor] = {}
    with tqdm(items, desc=bar_desc, unit="model", file=sys.stderr, dynamic_ncols=True) as bar:
        for name, impl, twin_of in bar:
            bar.set_postfix_str(name)
            entry = _registry.get_entry(twin_of or name)
            pub = entry.published
            size = args.img_size or pub.img_size
            backends = args.backends if impl == "attnzoo" else ("timm",)
            group_rows = [_Row(name, impl, entry.family, pub, b, twin_of or None, size) for b in backends]
            rows += group_rows
            try:
                params_m, gflops = size_on_meta(name, pub.img_size)
                for row in group_rows:
                    row.params_m, row.gflops = params_m, gflops
                if args.no_speed:
                    continue
                model = _create(name, size, pub.img_size).to(device=device, dtype=dtype).eval()
            except Exception as e:  # reported in the table, the other models still run
                for row in group_rows:
                    row.note = f"{name}: not built: {_first_line(e)}"
                continue
            if size not in inputs:
                torch.manual_seed(0)
                inputs[size] = torch.randn(args.batch_size, 3, size, size, device=device, dtype=dtype)
            x = inputs[size]
            for row in group_rows:
                reason = refusals.get(row.backend)
                if reason is None and row.backend in ("reference", "triton") and set_backend(model, row.backend) == 0:
                    reason = "the model has no attnzoo mixer whose backend could be set"
                if reason is None:
                    try:
                        if impl == "attnzoo":
                            set_backend(model, None if row.backend == "auto" else row.backend)
                        with torch.no_grad():
                            for _ in range(max(args.warmup, 1)):  # one forward at least: a refusal shows here
                                model(x)
                        _sync(device)
                    except BackendUnavailableError as e:
                        reason = str(e)
                    except Exception as e:
                        reason = f"the forward failed at {size}px: {_first_line(e)}"
                if reason is not None:
                    row.note = f"{row.backend}: {reason}" if impl == "attnzoo" else f"{name}: {reason}"
                else:
                    ready[id(row)] = (model, x)
    return rows, ready


def _time_group(rows: Sequence[_Row], ready: Dict[int, Tuple[torch.nn.Module, torch.Tensor]], args: argparse.Namespace,
                device: torch.device, bar_desc: str) -> None:
    """Times every ready row of a group in alternating rounds; fills ``row.timing``."""
    timed = [r for r in rows if id(r) in ready]
    if not timed:
        return

    several = len(args.backends) > 1  # then one module is timed under each backend in turn

    def switch(row: _Row):
        if not several or row.impl != "attnzoo":
            return None
        model, backend = ready[id(row)][0], None if row.backend == "auto" else row.backend
        return lambda: set_backend(model, backend)

    bar = tqdm(total=len(timed), desc=f"{bar_desc}: round 0", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc} |{bar:24}| {n}/{total} models settled")

    def on_round(rounds: int, timings: List[Timing], spent: float) -> None:
        bar.n = sum(t.settled for t in timings)
        bar.set_description_str(f"{bar_desc}: round {rounds}, {spent:.0f} of {args.budget:g} s", refresh=False)
        bar.refresh()

    with torch.no_grad():
        for row in timed:  # with one backend per module it is set once, before the rounds
            if row.impl == "attnzoo" and not several:
                set_backend(ready[id(row)][0], None if row.backend == "auto" else row.backend)
        try:
            timings = time_in_rounds([lambda m=ready[id(r)][0], x=ready[id(r)][1]: m(x) for r in timed],
                                     prepare=[switch(r) for r in timed], sync=lambda: _sync(device),
                                     min_runs=args.min_runs, max_runs=args.max_runs, budget=args.budget,
                                     settle=args.settle, on_round=on_round)
        finally:
            bar.close()
    for row, timing in zip(timed, timings):
        row.timing = timing


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _rate(row: _Row, batch: int) -> Optional[float]:
    return batch / row.timing.median if row.timing is not None and row.timing.has_median else None


def _twin_ratio(row: _Row, rows: Sequence[_Row]) -> Optional[float]:
    """attnzoo ms / timm ms for an az_ row whose twin was timed in the same rounds."""
    if row.impl != "attnzoo" or row.timing is None or not row.timing.has_median:
        return None
    twin = next((r for r in rows if r.twin_of == row.model and r.timing is not None and r.timing.has_median), None)
    return None if twin is None else row.timing.median / twin.timing.median


def _table(rows: Sequence[_Row], args: argparse.Namespace, notes: Footnotes) -> List[str]:
    out = []
    if args.no_speed:
        headers = ["model", "family", "params (M)", "GFLOPs", "pub. params (M)", "pub. GFLOPs", "pub. top-1 (%)",
                   "pub. source"]
        right = [False, False, True, True, True, True, True, False]
        for r in rows:
            pub = r.published
            label = r.label + (f" {notes.ref(r.note)}" if r.note else "")
            out.append([label, r.family, _fmt(r.params_m), _fmt(r.gflops),
                        *("—" if v is None else f"{v:g}" for v in (pub.params_m, pub.gflops, pub.top1)), pub.source])
        return markdown_table(headers, out, right)
    headers = ["model", "family", "params (M)", "GFLOPs", "top-1 (%)", "backend", "images/s", "ms per batch",
               "spread", "runs", "settled", "vs timm"]
    right = [False, False, True, True, True, False, True, True, True, True, False, True]
    unsettled = ("no: still moving when the time budget ended (a busy machine); read it as a rough figure, or rerun "
                 "with a larger --budget")
    for r in rows:
        top1 = "—" if r.published.top1 is None else f"{r.published.top1:g}"
        head = [r.label, r.family, _fmt(r.params_m), _fmt(r.gflops), top1, r.backend]
        t = r.timing
        if t is None:
            out.append(head + [f"n/a {notes.ref(r.note or 'not timed')}", "—", "—", "0", "—", "—"])
            continue
        rate = _rate(r, args.batch_size)
        if t.has_median:
            ms = f"{t.median * 1e3:.1f}"
            spread = f"±{t.spread:.0%}"
        else:
            ms = ", ".join(f"{v * 1e3:.1f}" for v in t.times) + f" ({t.runs} run{'s' if t.runs > 1 else ''}, no median)"
            spread = "—"
        settled = "yes" if t.settled else f"no {notes.ref(unsettled if t.stop == 'budget' else 'no: still moving after --max-runs rounds')}"
        ratio = _twin_ratio(r, rows)
        out.append(head + ["—" if rate is None else (f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}"), ms, spread,
                           str(t.runs), settled, "—" if ratio is None else f"{ratio:.2f}x"])
    return markdown_table(headers, out, right)


def _legend(args: argparse.Namespace) -> List[str]:
    if args.no_speed:
        return []
    return [
        "How to read it: images/s = batch / median time of one forward; ms per batch = that median; spread = half "
        "the interquartile range over the median (half of the runs lie within it); settled = yes when the median "
        f"moved by < {args.settle:.0%} over the last {args.min_runs} runs; a model with fewer than "
        f"{MIN_RUNS_FOR_MEDIAN} runs shows its runs, not a median; vs timm = this model's time over its timm twin's "
        "(same input, same rounds; below 1.00x attnzoo is faster); top-1 = published ImageNet-1k top-1 (the twin's "
        "weights are the same); a (timm) row is timm's own model.",
    ]


def _csv_rows(rows: Sequence[_Row], args: argparse.Namespace, device: torch.device) -> List[Dict[str, object]]:
    result = []
    for r in rows:
        t, pub = r.timing, r.published
        q1, q3 = t.quartiles if t is not None else (None, None)
        ms = lambda v: "" if v is None else f"{v * 1e3:.4f}"
        rate = _rate(r, args.batch_size)
        result.append({
            "model": r.model, "impl": r.impl, "twin_of": r.twin_of or "", "family": r.family, "backend": r.backend,
            "device": device.type, "dtype": args.dtype, "batch_size": args.batch_size, "img_size": r.size,
            "params_m": "" if r.params_m is None else f"{r.params_m:.4f}",
            "gflops": "" if r.gflops is None else f"{r.gflops:.4f}",
            "pub_params_m": "" if pub.params_m is None else pub.params_m,
            "pub_gflops": "" if pub.gflops is None else pub.gflops,
            "pub_top1": "" if pub.top1 is None else pub.top1, "pub_img_size": pub.img_size, "pub_source": pub.source,
            "runs": 0 if t is None else t.runs,
            "median_ms": ms(t.median) if t is not None and t.has_median else "",
            "p25_ms": ms(q1) if t is not None and t.has_median else "",
            "p75_ms": ms(q3) if t is not None and t.has_median else "",
            "min_ms": ms(t.min) if t is not None else "", "max_ms": ms(t.max) if t is not None else "",
            "images_per_s": "" if rate is None else f"{rate:.4f}",
            "settled": "" if t is None else ("yes" if t.settled else "no"), "stop": "" if t is None else t.stop,
            "note": r.note or "",
        })
    return result


def results_dir(out: Optional[str]) -> Path:
    """``--out``, or a new folder bench-results/<date>-<time> (a suffix keeps an existing one intact)."""
    if out:
        return Path(out)
    base = Path("bench-results") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def _main_table(args: argparse.Namespace, device: torch.device, names: Sequence[str], argv: Sequence[str]) -> int:
    prog = "attnzoo bench"
    out_dir = results_dir(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(f"{prog}: error: --out {str(out_dir)!r} is not a writable folder ({e.strerror or e})", file=sys.stderr)
        return 2
    groups = _plan(names, args)
    selection = ("every registered model" if args.all else f"--models {' '.join(args.models)}" if args.models
                 else "the smallest model with a published top-1 of each family")
    n_models = sum(len(g) for g in groups)
    header = [
        f"## attnzoo bench, {_now()}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- models: {selection}" + ("" if args.no_twins else ", each az_ model with its timm twin")
        + f" ({n_models} models" + (f" in {len(groups)} groups, one family at a time" if len(groups) > 1 else "") + ")",
        f"- device: {device_name(device)}; load average at the start {_load()}",
        f"- versions: {_versions()}",
        "- GFLOPs: multiply-adds of one image at the published img_size, attention ops counted by their math",
    ]
    if not args.no_speed:
        at = f"{args.img_size}px" if args.img_size else "each model's published img_size"
        header += [
            f"- speed: forward of batch {args.batch_size} at {at}, {args.dtype}, eval, no_grad, attnzoo on the "
            f"{'/'.join(args.backends)} backend; {_timing_rule(args, 'per group' if len(groups) > 1 else 'in all')}",
            "- the fused kernels alone: attnzoo bench-ops" + (
                " (on a CUDA GPU: on this CPU every model runs the reference ops)" if device.type != "cuda" else ""),
        ]
    print("\n".join(header), end="\n\n", flush=True)

    refusals = {b: _backend_refusal(b, device) for b in args.backends}
    rows: List[_Row] = []
    start = time.perf_counter()
    for i, items in enumerate(groups):
        tag = f" [group {i + 1}/{len(groups)}]" if len(groups) > 1 else ""
        group_rows, ready = _prepare(items, args, device, refusals, f"build + GFLOPs{tag}")
        if not args.no_speed:
            _time_group(group_rows, ready, args, device, f"timing{tag}")
        rows += group_rows
        del ready
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - start

    notes = Footnotes()
    lines = _table(rows, args, notes)
    if notes.notes:
        lines += ["", *notes.lines()]
    legend = _legend(args)
    if legend:
        lines += ["", *legend]
    lines += ["", f"Measured in {elapsed / 60:.1f} min; load average at the end {_load()}."]
    if not (args.no_speed or args.no_ops or args.models or args.all):
        from attnzoo.tools.bench_ops import headline

        lines += ["", *headline(device)]
    print("\n".join(lines), flush=True)

    (out_dir / "bench.md").write_text("\n".join(header + [""] + lines) + "\n")
    table = _csv_rows(rows, args, device)
    with open(out_dir / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(table)
    written = ["bench.md", "bench.csv"]
    if not args.no_plot:
        from attnzoo.tools.bench_plot import plot_results

        title = (f"attnzoo bench, {_now()}: {device_name(device)}, batch {args.batch_size}, {args.dtype}"
                 if not args.no_speed else f"attnzoo bench --no-speed, {_now()}")
        try:
            skipped = plot_results(table, out_dir / "bench.png", title=title)
        except ImportError as e:
            print(f"{prog}: no picture: matplotlib is missing ({e}); pip install -e '.[train]' in the checkout",
                  file=sys.stderr)
        else:
            written.append("bench.png")
            if skipped:
                print(f"{prog}: not in the picture: {'; '.join(skipped)}", file=sys.stderr)
    print(f"{prog}: results in {out_dir}/ ({', '.join(written)})", file=sys.stderr, flush=True)
    return 0


# --- --vs-timm and --compile: one row at a time --------------------------------------------------

def _build_at(name: str, size: int, device: torch.device) -> torch.nn.Module:
    """The model built for ``size`` px where its constructor takes ``img_size`` (MaxViT sizes its
    partitions from it), else as registered."""
    try:
        model = timm.create_model(name, pretrained=False, img_size=size)
    except TypeError:
        model = timm.create_model(name, pretrained=False)
    return model.to(device).eval()


def _vs_timm(args: argparse.Namespace, device: torch.device, names: Sequence[str], argv: Sequence[str]) -> int:
    prog = "attnzoo bench --vs-timm"
    pairs = [(n, timm_twin(n)) for n in names]
    pairs = [(n, t) for n, t in pairs if t is not None]
    if not pairs:
        print(f"{prog}: error: none of the selected models has a timm twin (az_<timm name>)", file=sys.stderr)
        return 2
    size = args.img_size or 224
    print("\n".join([
        f"## attnzoo bench --vs-timm, {_now()}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- device: {device_name(device)}; load average at the start {_load()}",
        f"- versions: {_versions(triton=False)}",
        f"- latency: one forward of batch {args.batch_size} at {size}x{size}, {args.dtype}, eval, no_grad, attnzoo on "
        f"the reference backend, the two models of a row timed alternately on the same input; "
        f"{_timing_rule(args, 'per row')}; cells: median ms (min-max, runs)",
    ]), end="\n\n", flush=True)
    notes = Footnotes()
    rows = []
    dtype = _DTYPES[args.dtype]
    with tqdm(pairs, desc=prog, unit="model", file=sys.stderr, dynamic_ncols=True) as bar:
        for name, twin in bar:
            bar.set_postfix_str(name)
            ours = _build_at(name, size, device).to(dtype)
            set_backend(ours, "reference")
            theirs = _build_at(twin, size, device).to(dtype)
            native = theirs.pretrained_cfg.get("input_size", (3, size, size))[1]
            row, failures = None, []
            for at in dict.fromkeys((size, native)):  # timm may refuse `size` (HaloNet: multiples of 8 only)
                torch.manual_seed(0)
                x = torch.randn(args.batch_size, 3, at, at, device=device, dtype=dtype)
                try:
                    t_ours, t_timm = time_forward([ours, theirs], x, args)  # alternately: load drifts hit both
                except Exception as e:  # reported, not fatal
                    failures.append(f"{name} at {at}px: {type(e).__name__}: {e}".strip())
                    continue
                where = "" if at == size else f" {notes.ref(f'timm refuses {size}px for this model; timed at its native {at}px')}"
                ratio = f"{t_ours.median / t_timm.median:.2f}x" if t_ours.has_median and t_timm.has_median else "—"
                row = [name + where, twin, t_ours.cell(notes), t_timm.cell(notes), ratio]
                break
            rows.append(row or [name, twin, "—", "—", f"n/a {notes.ref('; '.join(failures))}"])
            del ours, theirs
            gc.collect()
    lines = markdown_table(["model", "timm twin", "attnzoo (ms)", "timm (ms)", "attnzoo / timm"], rows,
                           [False, False, True, True, True])
    if notes.notes:
        lines += ["", *notes.lines()]
    print("\n".join(lines), flush=True)
    return 0


def _compile_first_call(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace):
    """(compiled model, seconds of its first forward: trace + compile + one run). Inductor's on-disk
    caches are off for that call, so the time is a cold compile (a user's first run), not a cache
    hit left by an earlier benchmark."""
    compiled = torch.compile(model, backend=args.compile_backend, mode=args.compile_mode, fullgraph=args.fullgraph)
    import torch._inductor.config as inductor_config

    cold = {"force_disable_caches": True} if hasattr(inductor_config, "force_disable_caches") else {}
    with torch.no_grad(), inductor_config.patch(**cold):
        start = time.perf_counter()
        compiled(x)
        _sync(x.device)
    return compiled, time.perf_counter() - start


def _eager_and_compiled(models: Sequence[Tuple[str, torch.nn.Module]], x: torch.Tensor, args: argparse.Namespace,
                        notes: Footnotes) -> List[List[str]]:
    """Per (label, model): [eager cell, compiled cell, compile seconds, speed-up]. Every model is
    compiled first; then the eager and compiled forwards of all of them are timed alternately
    (eval, no_grad), so load that drifts during the measurement hits every column alike."""
    torch._dynamo.reset()  # fresh compiles: no cache hits, no recompile limit carried over
    runs, slots = [], []
    for label, model in models:
        try:
            compiled, compile_s = _compile_first_call(model, x, args)
        except Exception as e:  # reported in the table, not fatal
            compiled, compile_s = None, f"n/a {notes.ref(f'{label}: torch.compile failed: {_first_line(e)}')}"
        slots.append((len(runs), compile_s))
        runs += [model] if compiled is None else [model, compiled]
    try:
        timings = time_forward(runs, x, args)
    finally:
        torch._dynamo.reset()
    cells = []
    for at, compile_s in slots:
        eager = timings[at]
        if isinstance(compile_s, str):
            cells.append([eager.cell(notes), compile_s, "—", "—"])
        else:
            timing = timings[at + 1]
            speedup = f"{eager.median / timing.median:.2f}x" if eager.has_median and timing.has_median else "—"
            cells.append([eager.cell(notes), timing.cell(notes), f"{compile_s:.1f}", speedup])
    return cells


def _compiled(args: argparse.Namespace, device: torch.device, names: Sequence[str], argv: Sequence[str]) -> int:
    prog = "attnzoo bench --compile"
    size_text = f"{args.img_size}px" if args.img_size else "each model's published img_size"
    mode = args.compile_mode or "default"
    print("\n".join([
        f"## attnzoo bench --compile, {_now()}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- device: {device_name(device)}; load average at the start {_load()}",
        f"- versions: {_versions()}",
        f"- compile: torch.compile(backend={args.compile_backend!r}, mode={mode!r}, fullgraph={args.fullgraph}); "
        "compile (s) = wall time of the first compiled forward (trace, compile, one run) with inductor's caches off; "
        "attnzoo on its default "
        "backend dispatch; az_ models' timm twins compiled the same way; a model's eager and compiled forwards and its "
        "twin's are timed alternately, so load drifting during the run hits every column alike",
        f"- latency: batch {args.batch_size} at {size_text}, {args.dtype}, eval, no_grad; "
        f"{_timing_rule(args, 'per row')}; cells: median ms (min-max, runs)",
    ]), end="\n\n", flush=True)
    notes = Footnotes()
    rows = []
    dtype = _DTYPES[args.dtype]
    with tqdm(names, desc=prog, unit="model", file=sys.stderr, dynamic_ncols=True) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            size = args.img_size or _registry.get_entry(name).published.img_size
            torch.manual_seed(0)
            x = torch.randn(args.batch_size, 3, size, size, device=device, dtype=dtype)
            models = [(name, _build_at(name, size, device).to(dtype))]
            twin = timm_twin(name)
            refused = None
            if twin is not None:
                try:  # timm may refuse the size (HaloNet: multiples of 8)
                    models.append((twin, _build_at(twin, size, device).to(dtype)))
                    with torch.no_grad():
                        models[-1][1](x)
                except Exception as e:
                    del models[1:]
                    refused = [f"n/a {notes.ref(f'{twin}: {_first_line(e)}')}", "—", "—", "—"]
            cells = _eager_and_compiled(models, x, args, notes)
            row = [name, *cells[0]]
            if twin is None:
                row += ["—"] * 5
            else:
                row += [twin, *(cells[1] if refused is None else refused)]
            rows.append(row)
            del models
            gc.collect()
    headers = ["model", "eager (ms)", "compiled (ms)", "compile (s)", "speed-up",
               "timm twin", "timm eager (ms)", "timm compiled (ms)", "timm compile (s)", "timm speed-up"]
    lines = markdown_table(headers, rows, [False, True, True, True, True, False, True, True, True, True])
    if notes.notes:
        lines += ["", *notes.lines()]
    print("\n".join(lines), flush=True)
    return 0


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Runs the benchmark described by parsed ``args``; ``argv`` is echoed in the header."""
    prog = "attnzoo bench"
    if args.vs_timm:
        args.device = args.device or "cpu"
        args.batch_size = args.batch_size or 8
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device cuda but CUDA is not available (attnzoo env says why)", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    per_row = args.vs_timm or args.compile
    for key, value in _arguments.BENCH_DEFAULTS[device.type].items():
        if key == "row_budget":
            continue
        if getattr(args, key) is None:
            setattr(args, key, _arguments.BENCH_DEFAULTS[device.type]["row_budget"] if key == "budget" and per_row else value)
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}" for k in ("batch_size", "min_runs")
                if getattr(args, k) < 1]
    if args.max_runs < args.min_runs:
        problems.append(f"--max-runs must be >= --min-runs ({args.min_runs}), got {args.max_runs}")
    if not 0 <= args.settle < 1:
        problems.append(f"--settle must be in [0, 1), got {args.settle}")
    if args.warmup < 0:
        problems.append(f"--warmup must be >= 0, got {args.warmup}")
    if args.img_size is not None and args.img_size < 1:
        problems.append(f"--img-size must be >= 1, got {args.img_size}")
    if args.vs_timm and args.compile:
        problems.append("--vs-timm and --compile are separate runs; give one")
    if args.all and args.models:
        problems.append("--all and --models both select models; give one")
    if problems:
        print(f"{prog}: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        names = select_models(args.models) if (args.models or args.all) else default_models()
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    if args.vs_timm:
        return _vs_timm(args, device, names, argv)
    if args.compile:
        return _compiled(args, device, names, argv)
    return _main_table(args, device, names, argv)
