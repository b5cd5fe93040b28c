"""``attnzoo bench``: parameters, GFLOPs and forward throughput of the registered models.

For each model (``--models`` fnmatch patterns over ``attnzoo._registry.list_models()``) it builds
the model, measures its parameters and its GFLOPs at the published resolution (multiply-adds,
attention counted by its math: ``attnzoo.tools.flops``), shows the published figures beside
them, and times the forward pass (eval, no_grad, median of timed iterations after warmup) once
per backend. The output is markdown: header, table and footnotes can be pasted into
BENCHMARKS.md as they are.
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

# Per-device defaults: the CPU ones keep a run over every model to a few minutes on 2 cores.
_DEFAULTS = {
    "cpu": {"batch_size": 2, "warmup": 1, "iters": 2},
    "cuda": {"batch_size": 64, "warmup": 5, "iters": 20},
}
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
    parser.add_argument("--iters", type=int, metavar="N", help="timed forwards per backend (default: 2 on cpu, 20 on cuda)")
    parser.add_argument("--warmup", type=int, metavar="N", help="untimed forwards first (default: 1 on cpu, 5 on cuda)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="default: float32")
    parser.add_argument("--backends", type=_backend_list, default=BACKENDS, metavar="LIST",
                        help=f"comma-separated backends to time (default: {','.join(BACKENDS)})")
    parser.add_argument("--no-speed", action="store_true", help="only parameters and GFLOPs, no timing")
    parser.add_argument("--vs-timm", action="store_true",
                        help="instead: forward latency of each az_ model over its timm twin (same batch, size, device; "
                             "reference backend; defaults batch 8, 224 px, cpu)")


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


def images_per_second(model: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int) -> float:
    """``batch / median forward time`` of ``iters`` timed forwards after ``warmup`` untimed ones."""
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        _sync(x.device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            _sync(x.device)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


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
        lines.append(
            f"- images/s: batch {args.batch_size} at {at}, {args.dtype}, eval, no_grad; "
            f"batch / median of {args.iters} timed forwards after {args.warmup} warmup"
        )
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
                rate = images_per_second(model, x, args.warmup, args.iters)
                row.append(f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}")
                continue
            except BackendUnavailableError as e:
                reason = str(e)
        row.append(f"n/a {notes.ref(f'{backend}: {reason}')}")
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


def forward_seconds(model: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int) -> float:
    """Median seconds of one forward (eval, no_grad) over ``iters`` timed runs after ``warmup``."""
    return x.shape[0] / images_per_second(model, x, warmup, iters)


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
        f"the reference backend; median of {args.iters} timed forwards after {args.warmup} warmup, the two models "
        "timed alternately on the same input",
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
                    t_ours, t_timm = [], []
                    for _ in range(args.iters):  # alternate so drifts in machine load hit both
                        t_ours.append(forward_seconds(ours, x, args.warmup, 1))
                        t_timm.append(forward_seconds(theirs, x, args.warmup, 1))
                except Exception as e:  # reported, not fatal
                    failures.append(f"{name} at {at}px: {type(e).__name__}: {e}".strip())
                    continue
                a, b = statistics.median(t_ours), statistics.median(t_timm)
                where = "" if at == size else f" {notes.ref(f'timm refuses {size}px for this model; timed at its native {at}px')}"
                row = [name + where, twin, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{a / b:.2f}x"]
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
    for key in ("batch_size", "iters"):
        if getattr(args, key) < 1:
            print(f"{prog}: error: --{key.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.warmup < 0 or (args.img_size is not None and args.img_size < 1):
        print(f"{prog}: error: --warmup must be >= 0 and --img-size >= 1", file=sys.stderr)
        return 2
    try:
        names = select_models(args.models)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    if args.vs_timm:
        return _vs_timm(args, device, names, argv)
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
        headers += [f"img/s {b}" for b in args.backends]
        right += [True] * len(args.backends)
    lines = _markdown_table(headers, rows, right)
    if notes.notes:
        lines += ["", *notes.lines()]
    print("\n".join(lines), flush=True)
    return 0
