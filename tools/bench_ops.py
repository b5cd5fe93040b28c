"""``attnzoo bench-ops``: each op's fused Triton kernels against the alternatives, case by case.

Every op has a case module with the same interface; this file only drives them (arguments,
timing, the roofline, peak memory, the tables):

* ``gna``: tools/bench_ops_gna.py (NA, DiNAT, MaxViT block / grid, NA1D / NA3D, blocked patterns)
* ``routed_attention``: tools/bench_ops_routed.py (BiFormer's stages; the authors' gather path)
* ``aggregated_attention``: tools/bench_ops_aggregated.py (TransNeXt's stages)
* ``halo_attention``: tools/bench_ops_halo.py (HaloNet's stages)

An op names its case module where it registers its Triton backend (``bench=``), so a new op's
case module needs no line here.

A case module defines ``OP``; ``BACKENDS`` (the first is the one the ratio columns divide by);
``NOTES`` (lines for the header); ``CASES`` and ``SMALL_CASES`` (name -> case with
``.describe()``); ``min_bytes(case, elem, backward)`` and ``attention_flops(case, backward)`` for
the roofline; and ``runner(backend, case, device, dtype, backward, cache)``, which prepares the
inputs and returns ``(step, None)``, ``step()`` being one forward (or forward + backward), or
``(None, why the backend cannot run the case)``.

Next to the times each table prints a roofline: the larger of (minimum bytes / copy bandwidth) and
(FLOPs / matmul rate), both rates measured on the device when the run starts; on CUDA also each
backend's peak memory for one step beyond its inputs (``max_memory_allocated`` minus what was
allocated before the step). Output is markdown, as ``attnzoo bench``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shlex
import statistics
import sys
import time
from types import ModuleType
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import attnzoo
import attnzoo.kernels
from attnzoo.tools import _arguments
from attnzoo.tools._report import Footnotes, device_name, markdown_table, version_of

__all__ = ["add_arguments", "run", "headline", "OP_MODULES", "op_modules", "measure_rates", "make_step"]

OP_MODULES = {name: op.bench for name, op in attnzoo.kernels.OPS.items() if op.bench is not None}
"""op name -> its case module (imported when the command runs): every registered op with a Triton
backend names one (``Op.register_triton(..., bench=)``)."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEFAULTS = {"cpu": {"warmup": 1, "iters": 3}, "cuda": {"warmup": 10, "iters": 30}}


def op_modules(names: Sequence[str] = tuple(OP_MODULES)) -> Dict[str, ModuleType]:
    return {name: importlib.import_module(OP_MODULES[name]) for name in names}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_rates(device: torch.device, dtype: torch.dtype) -> Tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, matmul FLOP/s in ``dtype``) on ``device``."""
    n_bytes = (512 if device.type == "cuda" else 64) * 2**20
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = _median_seconds(lambda: dst.copy_(src), device, 3, 10)
    bandwidth = 2 * n_bytes / t
    del src, dst
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = _median_seconds(lambda: a @ b, device, 3, 10)
    return bandwidth, 2 * n**3 / t


def make_step(call: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor], grad: torch.Tensor,
              backward: bool) -> Callable[[], object]:
    """What a case module times: ``call()`` under no_grad, or with ``backward`` its forward and the
    gradients of ``leaves`` for the output gradient ``grad`` (leaves are made to require grad)."""
    if not backward:
        def step():
            with torch.no_grad():
                return call()
        return step
    for t in leaves:
        t.requires_grad_()

    def step():
        return torch.autograd.grad(call(), leaves, grad)
    return step


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    _arguments.bench_ops(parser)


def _peak_mib(step: Callable[[], object], device: torch.device) -> float:
    """Memory one ``step()`` allocates beyond what was allocated before it, in MiB (CUDA only)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _op_table(module: ModuleType, names: Sequence[str], pool: dict, backends: Sequence[str], args, device, dtype,
              bandwidth: float, matmul_rate: float, prog: str) -> List[str]:
    passes = [False] if args.no_backward else [False, True]
    cuda = device.type == "cuda"
    notes = Footnotes()
    rows = []
    cache: Dict[Tuple, Callable] = {}
    elem = torch.tensor([], dtype=dtype).element_size()
    for name in names:
        case = pool[name]
        for backward in passes:
            t_mem = module.min_bytes(case, elem, backward) / bandwidth
            t_math = module.attention_flops(case, backward) / matmul_rate
            row = [name, "fwd+bwd" if backward else "fwd",
                   f"{_fmt_ms(max(t_mem, t_math))} ({'mem' if t_mem >= t_math else 'math'})"]
            times: Dict[str, float] = {}
            peaks: Dict[str, float] = {}
            for backend in backends:
                try:
                    step, reason = module.runner(backend, case, device, dtype, backward, cache)
                    if step is not None:
                        times[backend] = _median_seconds(step, device, args.warmup, args.iters)
                        if cuda:
                            peaks[backend] = _peak_mib(step, device)
                except Exception as e:  # reported in the table, the other backends still run
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
                row.append(_fmt_ms(times[backend]) if backend in times else f"n/a {notes.ref(f'{backend}: {reason}')}")
                if cuda:
                    torch.cuda.empty_cache()
            base = backends[0]
            for other in backends[1:]:
                if base in times and other in times:
                    row.append(f"{times[other] / times[base]:.3g}x")
                else:
                    missing = " and ".join(b for b in (other, base) if b not in times)
                    row.append(f"— {notes.ref(f'a ratio needs both times: no {missing} time (see its column)')}")
            if cuda:
                row += [f"{peaks[b]:.0f}" if b in peaks else "—" for b in backends]
            rows.append(row)
            print(f"{prog}: {module.OP} {name} {row[1]} done", file=sys.stderr, flush=True)

    headers = ["case", "pass", "roofline ms (bound)"] + [f"{b} ms" for b in backends] \
        + [f"{b} / {backends[0]}" for b in backends[1:]] + ([f"{b} peak MiB" for b in backends] if cuda else [])
    right = [False, False] + [True] * (len(headers) - 2)
    lines = markdown_table(headers, rows, right)
    if notes.notes:
        lines += ["", *notes.lines()]
    return lines


def headline(device: torch.device, warmup: int = 1, iters: int = 3) -> List[str]:
    """The op table's headline, for ``attnzoo bench``: one row per op, its first case (the first
    of the CPU-sized set on a CPU), forward, float16 on CUDA / float32 on a CPU: the fused kernels'
    time, the reference's, the fastest other backend's, and the fused kernels' speed-up over each.
    ``attnzoo bench-ops`` has the full tables (every case, forward + backward, the roofline)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    notes = Footnotes()
    rows = []
    for op, module in op_modules().items():
        pool = module.CASES if device.type == "cuda" else module.SMALL_CASES
        name = next(iter(pool))
        fused = module.BACKENDS[0]
        times: Dict[str, float] = {}
        why: Dict[str, str] = {}
        cache: Dict[Tuple, Callable] = {}
        for backend in module.BACKENDS:
            try:
                step, reason = module.runner(backend, pool[name], device, dtype, False, cache)
                if step is not None:
                    times[backend] = _median_seconds(step, device, warmup, iters)
                    continue
            except Exception as e:  # named in the row, the other backends still run
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            why[backend] = reason

        def cell(backend: str) -> str:
            return _fmt_ms(times[backend]) if backend in times else f"n/a {notes.ref(f'{backend}: {why[backend]}')}"

        others = [b for b in module.BACKENDS[2:] if b in times]
        best = min(others, key=times.__getitem__) if others else None
        ratios = []
        for other in ("reference", best):
            if other is not None and fused in times and other in times:
                ratios.append(f"{times[other] / times[fused]:.3g}x")
            else:
                ratios.append("—" if other is None else
                              f"— {notes.ref('a speed-up needs the fused time (see its column)')}")
        rows.append([op, name, cell(fused), cell("reference"), f"{best} {_fmt_ms(times[best])}" if best else "—",
                     *ratios])
        print(f"attnzoo bench: op headline {op} done", file=sys.stderr, flush=True)
    headers = ["op", "case", "fused (triton) ms", "reference ms", "fastest other, ms", "fused speed-up vs reference",
               "fused speed-up vs fastest other"]
    lines = [f"Fused ops (forward, {str(dtype).replace('torch.', '')}, median of {iters} after {warmup} warmup; "
             "every case, forward + backward and the roofline: attnzoo bench-ops):", ""]
    lines += markdown_table(headers, rows, [False, False] + [True] * 5)
    if notes.notes:
        lines += ["", *notes.lines()]
    return lines


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Runs the benchmark described by parsed ``args``; ``argv`` is echoed in the header."""
    prog = "attnzoo bench-ops"
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _DTYPES[args.dtype or ("float16" if device.type == "cuda" else "float32")]
    for key, value in _DEFAULTS[device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.iters < 1 or args.warmup < 0:
        print(f"{prog}: error: --iters must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    modules = op_modules(args.ops)
    pools = {op: (m.SMALL_CASES if args.small else m.CASES) for op, m in modules.items()}
    every = [n for pool in pools.values() for n in pool]
    try:
        wanted = _arguments.name_list(tuple(every), "cases")(args.cases) if args.cases else tuple(every)
    except argparse.ArgumentTypeError as e:
        print(f"{prog}: error: --cases: {e}", file=sys.stderr)
        return 2
    plan = []  # (module, case names, backends) per op with something to run
    for op, m in modules.items():
        names = [n for n in wanted if n in pools[op]]
        backends = [b for b in (args.backends or m.BACKENDS) if b in m.BACKENDS]
        if names and backends:
            plan.append((m, names, backends))
    if not plan:
        print(f"{prog}: error: --backends {','.join(args.backends or ())} names no backend of the ops of the "
              f"selected cases", file=sys.stderr)
        return 2

    bandwidth, matmul_rate = measure_rates(device, dtype)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    interp = " (TRITON_INTERPRET=1: Triton's CPU interpreter, not a speed figure)" \
        if os.environ.get("TRITON_INTERPRET", "") == "1" else ""
    header = [
        f"## attnzoo bench-ops, {now}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench-ops', *argv])}`",
        f"- device: {device_name(device)}{interp}",
        f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, triton {version_of('triton')}, "
        f"python {platform.python_version()}",
        f"- {dtype}, median of {args.iters} timed runs after {args.warmup} warmup; ms per call",
        f"- measured at start: copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write), "
        f"matmul {matmul_rate / 1e12:.3g} TFLOP/s ({dtype})",
        "- roofline: max(minimum bytes / bandwidth, FLOPs / matmul rate); "
        "fwd+bwd counts FlashAttention-2's backward (5 products, QK^T recomputed)",
        "- flex: FlexAttention " + ("(torch.compile)" if device.type == "cuda" else
                                    "(eager: compiling it on the CPU takes minutes)"),
    ]
    if device.type == "cuda":
        header.append("- peak MiB: memory one step allocates beyond its inputs (torch.cuda.max_memory_allocated)")
    else:
        header.append("- on a CPU: the triton column and every ratio over it need a CUDA GPU (the Triton kernels run "
                      "on CUDA only), as do the peak-memory columns; the other columns are this CPU's times")
    print("\n".join(header), flush=True)

    for m, names, backends in plan:
        lines = ["", f"### {m.OP}", "", *(f"- {n}" for n in m.NOTES), "", "Cases:",
                 *(f"- {n}: {pools[m.OP][n].describe()}" for n in names), ""]
        print("\n".join(lines), flush=True)
        table = _op_table(m, names, pools[m.OP], backends, args, device, dtype, bandwidth, matmul_rate, prog)
        print("\n".join(table), flush=True)
    return 0
