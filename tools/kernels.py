"""Compile every fused Triton kernel for named GPU targets, without a GPU, and check its resources.

The cases are the attention calls of real models: the smallest model of each family with a fused
op is run on ``meta`` tensors (shapes only) at its published size and at detection sizes, and the
dispatcher records each op call (``attnzoo.kernels._dispatch.record_calls``). Each distinct call
is then compiled in every dtype for every target through the op's own host code
(``step_launches``: forward and backward, the launch code's configs; ``kernels/_triton/aot.py``).
One row per distinct binary: registers, spilled bytes, shared memory against the target's
limit, warps, stages, theoretical occupancy, compile time, and the cases that asked for it.

Exit status 1 when a kernel does not compile, needs more shared memory than the target has, or
spills registers in a default (untuned) or blocked config; 0 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["add_arguments", "run", "collect_patterns", "compile_unit", "GATE_MODELS"]

GATE_MODELS = ("nat_mini", "dinat_mini", "az_maxvit_rmlp_pico_rw_256", "az_maxvit_tiny_tf_224", "az_davit_tiny",
               "az_halonet26t", "az_eca_halonext26ts", "biformer_tiny", "transnext_micro")
"""The smallest model of each family with a fused op, and the second pattern where a family has
two: MaxViT's 8x8 (rw) and 7x7 (tf) windows, HaloNet's 64 and 16-wide heads (eca_halonext)."""
DTYPES = ("float16", "bfloat16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", default="sm_80,sm_90",
                        help="comma-separated targets among sm_80 (A100), sm_90 (H100 / H200), sm_100 (B200); default sm_80,sm_90")
    parser.add_argument("--dtypes", default="float16,bfloat16",
                        help=f"comma-separated dtypes among {', '.join(DTYPES)}; default float16,bfloat16")
    parser.add_argument("--sizes", default="published,512x512,800x1216",
                        help="comma-separated input sizes: 'published' (each model's own) or HxW; default published,512x512,800x1216")
    parser.add_argument("--configs", choices=("default", "all"), default="default",
                        help="'default': the untuned config of each launch (and the blocked fast path); "
                             "'all': also every autotune config that pruning keeps for the case")
    parser.add_argument("--models", default=None,
                        help="comma-separated model names (default: the smallest model of each family with a fused op: "
                             + ", ".join(GATE_MODELS) + ")")
    parser.add_argument("--ops", default=None, help="comma-separated op names to compile (default: every op with Triton kernels)")
    parser.add_argument("--quick", action="store_true",
                        help="the pre-commit check: sm_90, bfloat16, published sizes, default configs")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: the number of CPU cores)")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the recorded calls (default 2)")


def _published_size(model) -> Tuple[int, int]:
    return tuple(model.pretrained_cfg["input_size"][1:])


def collect_patterns(models: Sequence[str], sizes: Sequence[str], batch: int = 2
                     ) -> Dict[str, Dict[tuple, List[str]]]:
    """``{op name: {pattern: [case, ...]}}`` of the fused-op calls of ``models`` at ``sizes``,
    recorded from a forward on meta tensors. A case is ``model@HxW``."""
    import timm
    import torch

    import attnzoo  # noqa: F401  (registers the models)
    from attnzoo.kernels import OPS
    from attnzoo.kernels._dispatch import record_calls
    from attnzoo.kernels._triton.aot import pattern_of

    fused = {name for name, op in OPS.items() if "triton" in op.backends}
    found: Dict[str, Dict[tuple, List[str]]] = defaultdict(dict)
    for name in models:
        model = timm.create_model(name, device="meta")
        model.train()  # the training forward: the calls the backward kernels will serve
        for size in sizes:
            hw = _published_size(model) if size == "published" else tuple(int(n) for n in size.split("x"))
            x = torch.empty(batch, 3, *hw, device="meta", requires_grad=True)
            with record_calls() as calls:
                model(x)
            for op, args, kwargs in calls:
                if op.name in fused:
                    found[op.name].setdefault(pattern_of(args, kwargs), []).append(f"{name}@{hw[0]}x{hw[1]}")
    return found


def compile_unit(unit: tuple) -> Tuple[list, list]:
    """Compiles one (target, dtype, op, patterns, all_configs) unit: ``(builds, refusals)``.
    Runs in a worker process."""
    target_name, dtype_name, op_name, patterns, all_configs = unit
    import torch

    import attnzoo.kernels as kernels
    from attnzoo.kernels._triton.aot import TARGETS, compile_session, meta_arguments

    module = kernels.OPS[op_name].triton_kernels()
    dtype = getattr(torch, dtype_name)
    refusals = []
    with compile_session(TARGETS[target_name], all_configs=all_configs) as session:
        for pattern, cases in patterns:
            args, kwargs = meta_arguments(pattern, dtype)
            reason = module.can_run_triton(*args, **kwargs)
            if reason is not None:
                refusals.append((op_name, target_name, dtype_name, ", ".join(cases), reason))
                continue
            with session.context(op_name, ", ".join(cases), dtype_name):
                module.step_launches(*args, **kwargs, backward=True)
    return session.builds, refusals


def _units(found, targets, dtypes, all_configs) -> List[tuple]:
    units = []
    for target in targets:
        for dtype in dtypes:
            for op_name, patterns in found.items():
                units.append((target, dtype, op_name, list(patterns.items()), all_configs))
    # the largest first, so that the workers finish together
    return sorted(units, key=lambda u: -len(u[3]) * (3 if u[2] == "gna" else 1))


def _kib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def _varying(builds) -> Dict[str, List[str]]:
    """Per kernel, the constexprs whose values differ between its builds: what tells its rows apart."""
    values: Dict[str, Dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for b in builds:
        for k, v in b.spec.items():
            values[b.kernel][k].add(repr(v))
    return {kernel: [k for k, vs in names.items() if len(vs) > 1] for kernel, names in values.items()}


def _rows(builds) -> List[Dict[str, str]]:
    rows = []
    varying = _varying(builds)
    for b in sorted(builds, key=lambda b: (b.op, b.kernel, b.target.name, b.dtype, b.label, str(b.spec), b.config)):
        problems = b.problems()
        cases = sorted(set(b.cases))
        rows.append({
            "op": b.op, "kernel": b.kernel, "target": b.target.name, "dtype": b.dtype, "label": b.label,
            "pattern": " ".join(f"{k}={b.spec[k]}" for k in varying.get(b.kernel, ()) if k in b.spec),
            "config": b.config, "registers": "-" if b.registers is None else str(b.registers),
            "spill B": "-" if b.spill_bytes is None else str(b.spill_bytes),
            "smem KiB": _kib(b.shared), "limit KiB": _kib(b.target.smem_per_block),
            "warps": str(b.num_warps), "stages": str(b.num_stages),
            "occupancy": "-" if b.occupancy is None else f"{b.occupancy:.0%}",
            "compile s": f"{b.compile_s:.1f}", "status": "ok" if not problems else "; ".join(problems),
            "cases": f"{len(cases)}: {', '.join(cases[:3])}{' ...' if len(cases) > 3 else ''}",
        })
    return rows


_SHOWN = ("op", "kernel", "target", "dtype", "label", "pattern", "registers", "spill B", "smem KiB", "limit KiB", "warps", "stages",
          "occupancy", "compile s", "status")


def _print_table(rows: List[Dict[str, str]], columns=_SHOWN) -> None:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns} if rows else {c: len(c) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        print("| " + " | ".join(r[c].ljust(widths[c]) for c in columns) + " |")


def summary_rows(builds) -> List[Dict[str, str]]:
    """One row per (op, kernel, target): how many builds, the worst registers / spill / shared
    memory and the range of occupancy over them, default / blocked configs and tuned ones apart."""
    groups: Dict[tuple, list] = defaultdict(list)
    for b in builds:
        groups[(b.op, b.kernel, b.target.name, "tuned" if b.label == "tuned" else "default")].append(b)
    rows = []
    for (op, kernel, target, kind), bs in sorted(groups.items()):
        ok = [b for b in bs if b.error is None]
        occ = [b.occupancy for b in ok if b.occupancy is not None]
        rows.append({
            "op": op, "kernel": kernel, "target": target, "configs": kind, "builds": str(len(bs)),
            "registers (max)": str(max((b.registers for b in ok), default="-")),
            "spill B (max)": str(max((b.spill_bytes for b in ok), default="-")),
            "smem KiB (max)": _kib(max((b.shared for b in ok), default=None)),
            "occupancy": f"{min(occ):.0%}-{max(occ):.0%}" if occ else "-",
            "problems": str(sum(bool(b.problems()) for b in bs)),
        })
    return rows


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from attnzoo.kernels._triton.aot import TARGETS

    if args.quick:
        args.targets, args.dtypes, args.sizes, args.configs = "sm_90", "bfloat16", "published", "default"
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for t in targets:
        if t not in TARGETS:
            print(f"attnzoo kernels: --targets: unknown target {t!r}; known: {', '.join(TARGETS)}", file=sys.stderr)
            return 2
    for d in dtypes:
        if d not in DTYPES:
            print(f"attnzoo kernels: --dtypes: unknown dtype {d!r}; accepted: {', '.join(DTYPES)}", file=sys.stderr)
            return 2
    for s in sizes:
        if s != "published" and not (len(s.split("x")) == 2 and all(p.isdigit() and int(p) > 0 for p in s.split("x"))):
            print(f"attnzoo kernels: --sizes: {s!r} is neither 'published' nor HxW (e.g. 512x512)", file=sys.stderr)
            return 2
    if args.batch < 1:
        print(f"attnzoo kernels: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    models = args.models.split(",") if args.models else list(GATE_MODELS)
    found = collect_patterns(models, sizes, args.batch)
    if args.ops:
        wanted = set(args.ops.split(","))
        unknown = wanted - set(found)
        if unknown:
            print(f"attnzoo kernels: --ops: no fused calls of {', '.join(sorted(unknown))} in {', '.join(models)} "
                  f"(ops found: {', '.join(sorted(found))})", file=sys.stderr)
            return 2
        found = {k: v for k, v in found.items() if k in wanted}
    recorded = time.perf_counter() - start
    units = _units(found, targets, dtypes, args.configs == "all")
    jobs = max(1, min(args.jobs or os.cpu_count() or 1, len(units)))
    print(f"attnzoo kernels: {sum(len(p) for p in found.values())} distinct op calls from {len(models)} models "
          f"at {', '.join(sizes)} (recorded in {recorded:.1f} s); compiling for {', '.join(targets)} in "
          f"{', '.join(dtypes)}, {args.configs} configs, {jobs} worker(s)", flush=True)
    builds, refusals = [], []
    if jobs == 1:
        results = map(compile_unit, units)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(jobs)
        results = pool.imap_unordered(compile_unit, units)
    for unit_builds, unit_refusals in results:
        builds += unit_builds
        refusals += unit_refusals
    if jobs > 1:
        pool.close()
        pool.join()
    rows = _rows(builds)
    _print_table(rows)
    print()
    summary = summary_rows(builds)
    _print_table(summary, columns=tuple(summary[0]) if summary else ())
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(_SHOWN) + ["config", "cases"])
            writer.writeheader()
            writer.writerows(rows)
    for op_name, target, dtype, cases, reason in refusals:
        print(f"not compiled (the reference serves it): {op_name} {target} {dtype} [{cases}]: {reason}")
    bad = [b for b in builds if b.problems()]
    elapsed = time.perf_counter() - start
    print(f"{len(builds)} builds, {len(bad)} with problems, {len(refusals)} refused calls; {elapsed:.1f} s")
    for b in bad:
        cases = sorted(set(b.cases))
        print(f"FAIL {b.op} {b.kernel} {b.target.name} {b.dtype} {b.label} [{b.config}]: {'; '.join(b.problems())} "
              f"(cases: {', '.join(cases[:4])}{' ...' if len(cases) > 4 else ''})")
    return 1 if bad else 0
