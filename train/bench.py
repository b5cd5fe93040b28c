"""Train-step throughput and peak memory: the smallest attnzoo model of each family against its
timm twin (where timm has one), the same step for both, written with timm's components
(``create_optimizer_v2`` AdamW with weight decay 0.05, cross-entropy, backward, step)::

    python -m attnzoo.train.bench                       # every family, eager, markdown table
    python -m attnzoo.train.bench --compile             # also torch.compile(model)
    python -m attnzoo.train.bench --models nat_mini --batch-size 32 --device cuda

Each case runs in a fresh subprocess so that its peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated`` over the timed steps, on CPU the process's peak resident set
(``ru_maxrss``) minus its resident set just before the first step (the step's own working memory:
activations, gradients, optimizer state). Images/s is the median over ``--iters`` timed steps after
``--warmup`` untimed ones (compile happens in the warmup).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

__all__ = ["smallest_per_family", "run_case", "main"]


def smallest_per_family() -> List[str]:
    import attnzoo
    from attnzoo import _registry

    best: Dict[str, tuple] = {}
    for name in attnzoo.list_models():
        entry = _registry.get_entry(name)
        params = entry.published.params_m if entry.published.params_m is not None else float("inf")
        if entry.family not in best or params < best[entry.family][0]:
            best[entry.family] = (params, name)
    return [name for _, name in best.values()]


def twin_of(name: str) -> Optional[str]:
    import timm

    if name.startswith("az_") and timm.is_model(name[3:]):
        return name[3:]
    return None


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(name: str, batch_size: int, img_size: Optional[int], iters: int, warmup: int, compile: bool,
             device: str) -> Dict[str, float]:
    """One train step configuration, timed in this process."""
    import resource

    import timm
    import torch
    from timm.optim import create_optimizer_v2

    import attnzoo  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000).to(device).train()
    size = img_size or model.pretrained_cfg["input_size"][-1]
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    net = torch.compile(model) if compile else model
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    base_rss = _rss_mb()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"images_per_s": batch_size / statistics.median(times), "peak_mb": peak, "img_size": size,
            "warmup_s": warm_s, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _subprocess_case(args, name: str, compile: bool) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "attnzoo.train.bench", "--one", name, "--batch-size", str(args.batch_size),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
    if args.img_size:
        cmd += ["--img-size", str(args.img_size)]
    if compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best_of(args, name: str, twin: Optional[str], compile: bool):
    """``--rounds`` alternating runs of ours and the twin; the fastest run of each is kept (a shared
    machine only ever slows a run down), the memory of the first."""
    impls = [name, twin] if twin else [name]
    runs: Dict[str, list] = {impl: [] for impl in impls}
    for _ in range(args.rounds):
        for impl in impls:
            runs[impl].append(_subprocess_case(args, impl, compile))

    def pick(results):
        ok = [r for r in results if "error" not in r]
        if not ok:
            return results[0]
        best = dict(max(ok, key=lambda r: r["images_per_s"]))
        best["peak_mb"] = ok[0]["peak_mb"]
        return best

    return pick(runs[name]), (pick(runs[twin]) if twin else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.train.bench", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--models", nargs="+", help="attnzoo model names (default: the smallest of each family)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--img-size", type=int, help="input size (default: each model's pretrained size)")
    parser.add_argument("--iters", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of ours and the twin, fastest kept (default: 1)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case (default: 1800)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in ("batch_size", "iters", "warmup", "rounds"):
        if getattr(args, key) < (0 if key == "warmup" else 1):
            parser.error(f"--{key.replace('_', '-')} must be >= {0 if key == 'warmup' else 1}")
    if args.one:
        print(json.dumps(run_case(args.one, args.batch_size, args.img_size, args.iters, args.warmup, args.compile, args.device)))
        return 0

    import timm
    import torch

    models = args.models or smallest_per_family()
    modes = [False, True] if args.compile else [False]
    print(f"## attnzoo.train.bench: train step, {args.device}, batch {args.batch_size}, median of {args.iters} after {args.warmup} warmup, "
          f"best of {args.rounds} alternating round(s)")
    print()
    print(f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, timm {timm.__version__}; command: `python -m attnzoo.train.bench {shlex.join(argv if argv is not None else sys.argv[1:])}`")
    print()
    mem = "peak MB (CUDA allocated)" if args.device.startswith("cuda") else "step MB (peak RSS - RSS before)"
    head = ["model", "twin", "px"]
    for c in modes:
        tag = "compile" if c else "eager"
        head += [f"ours {tag} img/s", f"timm {tag} img/s", "ours/timm", f"ours {tag} {mem}", f"timm {tag} {mem}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in models:
        twin = twin_of(name)
        row = [f"`{name}`", f"`{twin}`" if twin else "—"]
        cells = []
        px = None
        for c in modes:
            ours, theirs = _best_of(args, name, twin, c)
            px = px or ours.get("img_size")
            fmt = lambda m, k, f: ("error: " + m["error"]) if m and "error" in m else (f.format(m[k]) if m else "—")
            ratio = (f"{ours['images_per_s'] / theirs['images_per_s']:.2f}" if theirs and "error" not in ours and "error" not in theirs else "—")
            cells += [fmt(ours, "images_per_s", "{:.2f}"), fmt(theirs, "images_per_s", "{:.2f}"), ratio,
                      fmt(ours, "peak_mb", "{:.0f}"), fmt(theirs, "peak_mb", "{:.0f}")]
        print("| " + " | ".join(row + [str(px)] + cells) + " |", flush=True)
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
