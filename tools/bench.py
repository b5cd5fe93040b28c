"""``attnzoo bench``: parameters, GFLOPs and forward latency of the registered models.

For each model (``--models`` fnmatch patterns over ``attnzoo._registry.list_models()``) it builds
the model, measures its parameters and its GFLOPs at the published resolution (multiply-adds,
attention counted by its math: ``attnzoo.tools.flops``), shows the published figures beside
them, and times the forward pass (eval, no_grad) once per backend. Timing is adaptive
(``time_until_settled``): after the warmup it runs until the median of the runs so far has moved
by less than ``--settle`` over the last ``--min-runs`` runs, or ``--max-runs`` / the ``--budget``
seconds end, and reports min / median / max with the number of runs. ``--vs-timm`` times each
az_ model against its timm twin; ``--compile`` times eager against ``torch.compile`` (with the
compile time) for each model and its timm twin. The output is markdown: header, table and
footnotes can be pasted into BENCHMARKS.md as they are.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import importlib
import pkgutil
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from tqdm import tqdm

import attnzoo
import attnzoo.kernels
from attnzoo import _registry
from attnzoo.kernels import BACKENDS, BackendUnavailableError
from attnzoo.kernels._dispatch import Op
from attnzoo.tools.flops import gflops_macs

__all__ = ["add_arguments", "run", "select_models", "set_backend"]

# Per-device defaults. Timing runs until the median settles (SETTLE over the last min_runs runs) or
# the per-measurement budget (seconds) or max_runs ends.
_DEFAULTS = {
    "cpu": {"batch_size": 2, "warmup": 1, "min_runs": 5, "max_runs": 200, "budget": 10.0},
    "cuda": {"batch_size": 64, "warmup": 5, "min_runs": 10, "max_runs": 1000, "budget": 5.0},
}
SETTLE = 0.02
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _backend_list(text: str) -> Tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(BACKENDS)}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="PATTERN",
                        help="fnmatch patterns over the registered names, e.g. 'nat_*' dinat_tiny (default: all)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="images per forward for the speed runs (default: 2 on cpu, 64 on cuda)")
    parser.add_argument("--img-size", type=int, metavar="N",
                        help="resolution of the speed runs (default: each model's published img_size; "
                             "GFLOPs are always measured at the published img_size)")
    parser.add_argument("--warmup", type=int, metavar="N", help="untimed forwards first (default: 1 on cpu, 5 on cuda)")
    parser.add_argument("--min-runs", type=int, metavar="N",
                        help="timed forwards at least, and the window the median must settle over (default: 5 on cpu, "
                             "10 on cuda)")
    parser.add_argument("--max-runs", type=int, metavar="N", help="timed forwards at most (default: 200 on cpu, 1000 on cuda)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="time limit of one measurement (one model and backend; default: 10 on cpu, 5 on cuda)")
    parser.add_argument("--settle", type=float, default=SETTLE, metavar="FRACTION",
                        help=f"stop when the median moved by less than this fraction over the last --min-runs runs "
                             f"(default: {SETTLE})")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="default: float32")
    parser.add_argument("--backends", type=_backend_list, default=BACKENDS, metavar="LIST",
                        help=f"comma-separated backends to time (default: {','.join(BACKENDS)})")
    parser.add_argument("--no-speed", action="store_true", help="only parameters and GFLOPs, no timing")
    parser.add_argument("--vs-timm", action="store_true",
                        help="instead: forward latency of each az_ model over its timm twin (same batch, size, device; "
                             "reference backend; defaults batch 8, 224 px, cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="instead: eager vs torch.compile latency and the compile time of each model, and of the "
                             "timm twin of each az_ model compiled the same way (same device, batch, size)")
    parser.add_argument("--compile-backend", default="inductor", metavar="NAME",
                        help="torch.compile backend for --compile (default: inductor)")
    parser.add_argument("--compile-mode", default=None, metavar="MODE",
                        help="torch.compile mode for --compile (default: torch's default)")
    parser.add_argument("--fullgraph", action="store_true", help="--compile with fullgraph=True (a graph break is an error)")


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


def set_backend(model: torch.nn.Module, backend: Optional[str]) -> int:
    """Sets ``backend`` on every submodule that has that attribute (the mixers); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
            count += 1
    return count


def _ops() -> Dict[str, Op]:
    """Every attnzoo op (``attnzoo.kernels.<op>.<op>_op``) by name."""
    ops = {}
    for info in pkgutil.iter_modules(attnzoo.kernels.__path__):
        if info.ispkg:
            op = getattr(importlib.import_module(f"attnzoo.kernels.{info.name}"), f"{info.name}_op", None)
            if isinstance(op, Op):
                ops[op.name] = op
    return ops


def _backend_refusal(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run any model on ``device`` (None when it may: each model is then tried)."""
    if backend == "reference":
        return None
    if backend == "triton":
        if device.type != "cuda":
            return "the Triton kernels run on CUDA devices only"
        ops = _ops()
        if not any("triton" in op.backends for op in ops.values()):
            return f"no op has a Triton backend yet ({', '.join(ops)}: reference only)"
        try:
            importlib.import_module("triton")
        except ImportError:
            return "triton is not installed (pip install 'attnzoo[triton]')"
        return None
    return f"unknown backend {backend!r}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run and why the runs stopped: 'settled' (the median moved by less than
    the tolerance over the last ``min_runs`` runs), 'budget' (time ran out) or 'max-runs'."""

    times: Tuple[float, ...]
    stop: str

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def cell(self, notes: Optional["_Footnotes"] = None) -> str:
        """``median (min-max, runs)`` in ms; an unsettled run count carries a footnote saying why."""
        mark = ""
        if self.stop != "settled" and notes is not None:
            mark = " " + notes.ref("the median had not settled when the " +
                                   ("time budget ended (--budget)" if self.stop == "budget" else "run limit came (--max-runs)"))
        return f"{self.median * 1e3:.2f} ({self.min * 1e3:.2f}-{self.max * 1e3:.2f}, {self.runs}{mark})"


def time_until_settled(fns: Sequence, *, sync=lambda: None, min_runs: int = 5, max_runs: int = 200,
                       budget: float = 10.0, settle: float = SETTLE, clock=time.perf_counter) -> List[Timing]:
    """Times ``fns`` (called in turn, so drifts in machine load hit all of them alike) until each one's
    median is settled, or ``max_runs`` rounds or ``budget`` seconds pass; one Timing per function.

    A median is settled when the medians after each of the last ``min_runs`` runs lie within
    ``settle`` times the current median. At least ``min_runs`` rounds run unless the budget ends
    first; at least one always runs.
    """
    if min_runs < 1 or max_runs < min_runs or budget <= 0 or not 0 <= settle < 1:
        raise ValueError(f"need 1 <= min_runs <= max_runs, budget > 0 and 0 <= settle < 1; got min_runs={min_runs}, "
                         f"max_runs={max_runs}, budget={budget}, settle={settle}")
    times: List[List[float]] = [[] for _ in fns]
    medians: List[List[float]] = [[] for _ in fns]
    start = clock()
    while True:
        for fn, ts, ms in zip(fns, times, medians):
            t0 = clock()
            fn()
            sync()
            ts.append(clock() - t0)
            ms.append(statistics.median(ts))
        n = len(times[0])
        if n >= min_runs and all(max(ms[-min_runs:]) - min(ms[-min_runs:]) <= settle * ms[-1] for ms in medians):
            stop = "settled"
        elif n >= max_runs:
            stop = "max-runs"
        elif clock() - start >= budget:
            stop = "budget"
        else:
            continue
        return [Timing(tuple(ts), stop) for ts in times]


def time_forward(models: Sequence[torch.nn.Module], x: torch.Tensor, args: argparse.Namespace) -> List[Timing]:
    """Forward latency (eval, no_grad) of each model on ``x``, timed in turn after ``args.warmup``
    untimed forwards each."""
    with torch.no_grad():
        for model in models:
            for _ in range(args.warmup):
                model(x)
        _sync(x.device)
        return time_until_settled([lambda m=m: m(x) for m in models], sync=lambda: _sync(x.device),
                                  min_runs=args.min_runs, max_runs=args.max_runs, budget=args.budget, settle=args.settle)


def _timing_rule(args: argparse.Namespace) -> str:
    return (f"after {args.warmup} warmup, timed runs until the median moved by < {args.settle:.0%} over the last "
            f"{args.min_runs} runs (at most {args.max_runs} runs or {args.budget:g} s per measurement); cells: "
            "median ms (min-max, runs)")


@dataclass
class _Footnotes:
    notes: Dict[str, int] = field(default_factory=dict)

    def ref(self, text: str) -> str:
        return f"[{self.notes.setdefault(text, len(self.notes) + 1)}]"

    def lines(self) -> List[str]:
        return [f"{ref}. {text}" for text, ref in self.notes.items()]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu: {name}, {torch.get_num_threads()} threads"


def _version(module_name: str) -> str:
    try:
        return importlib.import_module(module_name).__version__
    except ImportError:
        return "not installed"


def _header(args: argparse.Namespace, device: torch.device, argv: Sequence[str]) -> List[str]:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"## attnzoo bench, {now}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- device: {_device_name(device)}",
        f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
        f"triton {_version('triton')}, python {platform.python_version()}",
        "- GFLOPs: multiply-adds of one image at the published img_size, attention ops counted by their math",
    ]
    if not args.no_speed:
        at = f"{args.img_size}px" if args.img_size else "each model's published img_size"
        lines.append(f"- latency: batch {args.batch_size} at {at}, {args.dtype}, eval, no_grad; {_timing_rule(args)}; "
                     "images/s = batch / median")
    return lines


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return [fmt(headers), rule, *(fmt(r) for r in rows)]


def _bench_model(name: str, args: argparse.Namespace, device: torch.device, refusals: Dict[str, Optional[str]],
                 notes: _Footnotes) -> List[str]:
    entry = _registry.get_entry(name)
    pub = entry.published
    model = timm.create_model(name, pretrained=False).to(device=device, dtype=_DTYPES[args.dtype]).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = gflops_macs(model, pub.img_size)
    row = [
        name, entry.family, f"{params_m:.2f}", f"{gflops:.2f}",
        *("—" if v is None else f"{v:g}" for v in (pub.params_m, pub.gflops, pub.top1)), pub.source,
    ]
    if args.no_speed:
        return row

    size = args.img_size or pub.img_size
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, size, size, device=device, dtype=_DTYPES[args.dtype])
    for backend in args.backends:
        reason = refusals[backend]
        if reason is None and set_backend(model, backend) == 0 and backend != "reference":
            reason = "the model has no attnzoo mixer whose backend could be set"
        if reason is None:
            try:
                (timing,) = time_forward([model], x, args)
                rate = x.shape[0] / timing.median
                row += [f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}", timing.cell(notes)]
                continue
            except BackendUnavailableError as e:
                reason = str(e)
        row += [f"n/a {notes.ref(f'{backend}: {reason}')}", "—"]
    del model, x
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


TWIN_PREFIX = "az_"


def timm_twin(name: str) -> Optional[str]:
    """timm's own model of an attnzoo name (``az_<timm name>``), None when timm has none."""
    if name.startswith(TWIN_PREFIX) and name[len(TWIN_PREFIX):] in _registry.timm_builtin_names():
        return name[len(TWIN_PREFIX):]
    return None


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
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print("\n".join([
        f"## attnzoo bench --vs-timm, {now}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- device: {_device_name(device)}",
        f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
        f"python {platform.python_version()}",
        f"- latency: one forward of batch {args.batch_size} at {size}x{size}, {args.dtype}, eval, no_grad, attnzoo on "
        f"the reference backend, the two models timed alternately on the same input; {_timing_rule(args)}",
    ]), end="\n\n", flush=True)
    notes = _Footnotes()
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
                row = [name + where, twin, t_ours.cell(notes), t_timm.cell(notes), f"{t_ours.median / t_timm.median:.2f}x"]
                break
            rows.append(row or [name, twin, "—", "—", f"n/a {notes.ref('; '.join(failures))}"])
            del ours, theirs
            gc.collect()
    lines = _markdown_table(["model", "timm twin", "attnzoo (ms)", "timm (ms)", "attnzoo / timm"], rows,
                            [False, False, True, True, True])
    if notes.notes:
        lines += ["", *notes.lines()]
    print("\n".join(lines), flush=True)
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


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
                        notes: _Footnotes) -> List[List[str]]:
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
            cells.append([eager.cell(notes), timing.cell(notes), f"{compile_s:.1f}", f"{eager.median / timing.median:.2f}x"])
    return cells


def _compiled(args: argparse.Namespace, device: torch.device, names: Sequence[str], argv: Sequence[str]) -> int:
    prog = "attnzoo bench --compile"
    size_text = f"{args.img_size}px" if args.img_size else "each model's published img_size"
    mode = args.compile_mode or "default"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print("\n".join([
        f"## attnzoo bench --compile, {now}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench', *argv])}`",
        f"- device: {_device_name(device)}",
        f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
        f"triton {_version('triton')}, python {platform.python_version()}",
        f"- compile: torch.compile(backend={args.compile_backend!r}, mode={mode!r}, fullgraph={args.fullgraph}); "
        "compile (s) = wall time of the first compiled forward (trace, compile, one run) with inductor's caches off; "
        "attnzoo on its default "
        "backend dispatch; az_ models' timm twins compiled the same way; a model's eager and compiled forwards and its "
        "twin's are timed alternately, so load drifting during the run hits every column alike",
        f"- latency: batch {args.batch_size} at {size_text}, {args.dtype}, eval, no_grad; {_timing_rule(args)}",
    ]), end="\n\n", flush=True)
    notes = _Footnotes()
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
    lines = _markdown_table(headers, rows, [False, True, True, True, True, False, True, True, True, True])
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
        print(f"{prog}: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for key, value in _DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}" for k in ("batch_size", "min_runs")
                if getattr(args, k) < 1]
    if args.max_runs < args.min_runs:
        problems.append(f"--max-runs must be >= --min-runs ({args.min_runs}), got {args.max_runs}")
    if not args.budget > 0:
        problems.append(f"--budget must be > 0 seconds, got {args.budget}")
    if not 0 <= args.settle < 1:
        problems.append(f"--settle must be in [0, 1), got {args.settle}")
    if args.warmup < 0:
        problems.append(f"--warmup must be >= 0, got {args.warmup}")
    if args.img_size is not None and args.img_size < 1:
        problems.append(f"--img-size must be >= 1, got {args.img_size}")
    if args.vs_timm and args.compile:
        problems.append("--vs-timm and --compile are separate runs; give one")
    if problems:
        print(f"{prog}: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        names = select_models(args.models)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    if args.vs_timm:
        return _vs_timm(args, device, names, argv)
    if args.compile:
        return _compiled(args, device, names, argv)
    print("\n".join(_header(args, device, argv)), end="\n\n", flush=True)
    refusals = {b: _backend_refusal(b, device) for b in args.backends}
    notes = _Footnotes()
    rows = []
    with tqdm(names, desc=prog, unit="model", file=sys.stderr, dynamic_ncols=True) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            rows.append(_bench_model(name, args, device, refusals, notes))

    headers = ["model", "family", "params (M)", "GFLOPs", "pub. params (M)", "pub. GFLOPs", "pub. top-1 (%)", "pub. source"]
    right = [False, False, True, True, True, True, True, False]
    if not args.no_speed:
        headers += [h for b in args.backends for h in (f"img/s {b}", f"ms {b}")]
        right += [True] * (2 * len(args.backends))
    lines = _markdown_table(headers, rows, right)
    if notes.notes:
        lines += ["", *notes.lines()]
    print("\n".join(lines), flush=True)
    return 0
