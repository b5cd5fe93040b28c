"""``attnzoo bench-routed``: BiFormer's bi-level routing attention, attnzoo against the authors'
legacy implementation, on the same inputs and weights: time and peak memory, forward and
forward + backward.

The baseline, ``LegacyBiLevelRoutingAttention`` below, is a re-implementation of the authors'
``ops/bra_legacy.py`` (rayleizhu/BiFormer, MIT) written from reading it, kept here and not in
``layers/``: the image is cut into windows before the qkv projection, region means route with
``torch.topk`` on detached q/k, ``torch.gather`` over a ``S*S``-times expanded view materialises
``topk`` copies of the routed k/v regions, the heads are split by permutes, and the score matrix is
computed explicitly (``(q * scale) @ k``, softmax, ``@ v``). Its parameter names are the authors'
(``qkv.qkv``, ``lepe``, ``wo``).

Two comparisons, each on biformer_tiny's stage-1 (56x56, C=64, 2 heads, topk 1) and stage-3
(14x14, C=256, 8 heads, topk 16) shapes at 224 px, 7x7 regions:

* ``mixer``: the whole mixer, ``BiLevelRoutingAttention2d`` against the legacy module with the
  same weights (qkv, LePE and output projection are the same convolutions and matmuls in both);
* ``core``: q, k, v -> attention output only: ``routed_attention`` against the legacy path from
  the window partition of q and k/v to the un-partitioned output (routing included in both).

Time: median of blocked measurements (``--min-run-time`` seconds each: blocks of calls long enough
that the timer's resolution does not matter, the median of the per-call time over the blocks),
the two implementations measured alternately. ``fwd`` is an inference forward (``no_grad``);
``fwd+bwd`` is a forward with autograd and the backward of ``out.sum()`` into every input and
parameter. Peak memory: each case runs in a fresh subprocess with glibc's mmap threshold fixed
at 64 KiB (so every tensor buffer is its own mapping and is returned to the OS when freed); after
one untimed warm-up call the kernel's RSS high-water mark is reset (``/proc/self/clear_refs``),
the measured call runs, and the figure is ``VmHWM - VmRSS`` before the call: the bytes the call
needed on top of its inputs and weights (activations kept for the backward, temporaries,
gradients). Linux only; elsewhere memory is reported as not measured.
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
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import attnzoo
from attnzoo.tools import _arguments
from attnzoo.kernels.routed_attention import routed_attention
from attnzoo.layers.biformer_attn import BiLevelRoutingAttention2d

__all__ = ["LegacyBiLevelRoutingAttention", "legacy_routed_core", "add_arguments", "run", "STAGES"]

# name: (H = W, dim, heads, topk) of biformer_tiny at 224 px (head_dim 32, n_win 7)
STAGES: Dict[str, Tuple[int, int, int, int]] = {
    "stage1": (56, 64, 2, 1),
    "stage3": (14, 256, 8, 16),
}
NUM_REGIONS = 7


# --- the authors' legacy path, re-implemented ---------------------------------------------------

def _to_windows(x: torch.Tensor, s: int) -> torch.Tensor:
    """[N, H, W, C] -> [N, S*S, H/S, W/S, C] (upstream's 'n (j h) (i w) c -> n (j i) h w c')."""
    n, h, w, c = x.shape
    return x.view(n, s, h // s, s, w // s, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * s, h // s, w // s, c)


def _from_windows(x: torch.Tensor, s: int) -> torch.Tensor:
    """[N, S*S, h, w, C] -> [N, S*h, S*w, C]."""
    n, _, h, w, c = x.shape
    return x.view(n, s, s, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * h, s * w, c)


def _legacy_attend(q_win: torch.Tensor, kv_win: torch.Tensor, qk_dim: int, heads: int, s: int, topk: int, scale: float):
    """Upstream's routing + gather + explicit attention. ``q_win`` [N, S*S, h, w, qk],
    ``kv_win`` [N, S*S, h, w, qk + dv]; returns [N, S*h, S*w, dv]."""
    n, p2, h, w, _ = q_win.shape
    w2 = h * w
    c_kv = kv_win.shape[-1]
    dv = c_kv - qk_dim
    q_pix = q_win.reshape(n, p2, w2, qk_dim)
    kv_pix = kv_win.reshape(n, p2, w2, c_kv)
    q_r, k_r = q_win.mean([2, 3]), kv_win[..., :qk_dim].mean([2, 3])
    # TopkRouting (no parameters, not differentiable)
    logits = (q_r.detach() * scale) @ k_r.detach().transpose(-2, -1)
    r_idx = torch.topk(logits, k=topk, dim=-1).indices  # [N, p2, topk]
    # KVGather: gather over a p2-times expanded view (the backward scatters into that full shape)
    kv_sel = torch.gather(
        kv_pix.view(n, 1, p2, w2, c_kv).expand(-1, p2, -1, -1, -1), dim=2,
        index=r_idx.view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_kv),
    )  # [N, p2, topk, w2, c_kv]
    k_sel, v_sel = kv_sel.split([qk_dim, dv], dim=-1)
    m = heads
    k_sel = k_sel.reshape(n, p2, topk, w2, m, qk_dim // m).permute(0, 1, 4, 5, 2, 3).reshape(n * p2, m, qk_dim // m, topk * w2)
    v_sel = v_sel.reshape(n, p2, topk, w2, m, dv // m).permute(0, 1, 4, 2, 3, 5).reshape(n * p2, m, topk * w2, dv // m)
    q_pix = q_pix.reshape(n, p2, w2, m, qk_dim // m).permute(0, 1, 3, 2, 4).reshape(n * p2, m, w2, qk_dim // m)
    attn = ((q_pix * scale) @ k_sel).softmax(dim=-1)  # [N*p2, m, w2, topk*w2]
    out = attn @ v_sel  # [N*p2, m, w2, dv/m]
    out = out.view(n, p2, m, h, w, dv // m).permute(0, 1, 3, 4, 2, 5).reshape(n, p2, h, w, dv)
    return _from_windows(out, s)


class _QKVLinear(nn.Module):
    def __init__(self, dim: int, qk_dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)


class LegacyBiLevelRoutingAttention(nn.Module):
    """The authors' BiLevelRoutingAttention (``ops/bra_legacy.py``) in the configuration BiFormer's
    classification models use (kv_downsample_mode 'identity', hard non-differentiable routing,
    'qkvo' parameters), with ``auto_pad`` (zero padding at the bottom/right before the qkv
    projection, crop after). Channels-last ``[N, H, W, C]``; parameter names are the authors'."""

    def __init__(self, dim: int, num_heads: int, n_win: int = 7, topk: int = 4, qk_dim: Optional[int] = None,
                 side_dwconv: int = 5, auto_pad: bool = True):
        super().__init__()
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.qk_dim = qk_dim or dim
        self.scale = self.qk_dim ** -0.5
        self.auto_pad = auto_pad
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.qkv = _QKVLinear(dim, self.qk_dim)
        self.wo = nn.Linear(dim, dim)

    def load_from(self, ours: BiLevelRoutingAttention2d) -> "LegacyBiLevelRoutingAttention":
        """Copies the weights of an attnzoo mixer (the checkpoint conversion, in reverse)."""
        self.load_state_dict({
            "qkv.qkv.weight": ours.qkv.weight, "qkv.qkv.bias": ours.qkv.bias,
            "lepe.weight": ours.lepe.weight, "lepe.bias": ours.lepe.bias,
            "wo.weight": ours.proj.weight, "wo.bias": ours.proj.bias,
        })
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h_in, w_in, _ = x.shape
        s = self.n_win
        if self.auto_pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, -w_in % s, 0, -h_in % s))
        else:
            assert h_in % s == 0 and w_in % s == 0
        xw = _to_windows(x, s)
        q, kv = self.qkv.qkv(xw).split([self.qk_dim, self.qk_dim + self.dim], dim=-1)
        v_full = _from_windows(kv[..., self.qk_dim:], s)
        lepe = self.lepe(v_full.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        out = _legacy_attend(q, kv, self.qk_dim, self.num_heads, s, self.topk, self.scale) + lepe
        out = self.wo(out)
        return out[:, :h_in, :w_in].contiguous()


def legacy_routed_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """The legacy path from q, k, v (``[N, H, W, heads, dim]``, heads-last like ``routed_attention``)
    to the attention output ``[N, H, W, heads, dv]``: window partition, routing, gather, attention."""
    n, h, w, heads, d = q.shape
    dv = v.shape[-1]
    q_win = _to_windows(q.reshape(n, h, w, heads * d), n_win)
    kv_win = _to_windows(torch.cat([k.reshape(n, h, w, heads * d), v.reshape(n, h, w, heads * dv)], dim=-1), n_win)
    return _legacy_attend(q_win, kv_win, heads * d, heads, n_win, topk, scale).reshape(n, h, w, heads, dv)


# --- cases ---------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _build(kind: str, impl: str, stage: str, batch: int, grad: bool, dtype: str = "float32"):
    """Returns ``(fn, inputs, params)``: ``fn()`` runs one forward on fixed inputs. Both
    implementations run entirely in ``dtype`` (weights and inputs), as under autocast."""
    size, dim, heads, topk = STAGES[stage]
    dt = _DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    if kind == "mixer":
        torch.manual_seed(0)
        ours = BiLevelRoutingAttention2d(dim, heads, NUM_REGIONS, topk, backend="reference")
        module = ours if impl == "attnzoo" else LegacyBiLevelRoutingAttention(dim, heads, NUM_REGIONS, topk).load_from(ours)
        module = module.to(dt)
        x = torch.randn(batch, size, size, dim, generator=g).to(dt).requires_grad_(grad)
        return (lambda: module(x)), [x], list(module.parameters())
    hd = dim // heads
    q, k, v = (torch.randn(batch, size, size, heads, hd, generator=g).to(dt).requires_grad_(grad) for _ in range(3))
    scale = dim ** -0.5
    if impl == "attnzoo":
        return (lambda: routed_attention(q, k, v, NUM_REGIONS, topk, scale=scale, backend="reference")), [q, k, v], []
    return (lambda: legacy_routed_core(q, k, v, NUM_REGIONS, topk, scale)), [q, k, v], []


def _step(fn, tensors, mode: str):
    if mode == "fwd":
        with torch.no_grad():
            return fn()
    out = fn()
    return torch.autograd.grad(out.sum(), tensors)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(kind: str, impl: str, stage: str, mode: str, batch: int, threads: int, dtype: str = "float32") -> None:
    """Runs in a fresh process: prints the peak extra RSS (bytes) of one call, as JSON."""
    torch.set_num_threads(threads)
    fn, inputs, params = _build(kind, impl, stage, batch, grad=mode != "fwd", dtype=dtype)
    tensors = inputs + params
    _step(fn, tensors, mode)  # warm-up: lazy initialisation is not the op's memory
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    result = _step(fn, tensors, mode)
    peak = _status_kib("VmHWM")
    del result
    print(json.dumps({"peak_extra_bytes": (peak - before) * 1024}))


def _peak_memory(kind: str, impl: str, stage: str, mode: str, batch: int, threads: int, dtype: str) -> Optional[int]:
    if not sys.platform.startswith("linux"):
        return None
    code = (f"from attnzoo.tools.bench_routed import _child; "
            f"_child({kind!r}, {impl!r}, {stage!r}, {mode!r}, {batch}, {threads}, {dtype!r})")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe {kind}/{impl}/{stage}/{mode} failed:\n{res.stderr[-2000:]}")
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def _median_seconds(fn, tensors, mode: str, min_run_time: float) -> float:
    """Median seconds of one ``_step`` over blocks of calls that fill ``min_run_time`` seconds (at
    least three blocks); a block holds enough calls to last 10 ms or more, so the timer's resolution
    and the loop's overhead do not count (torch.utils.benchmark's blocked_autorange does the same;
    it is not used because importing it loads torch's C++-extension machinery, which prints a
    CUDA_HOME warning on machines without CUDA)."""
    number = 1
    while True:  # calibrate the block size
        start = time.perf_counter()
        for _ in range(number):
            _step(fn, tensors, mode)
        if time.perf_counter() - start >= 0.01 or number >= 10**6:
            break
        number *= 10
    blocks: List[float] = []
    began = time.perf_counter()
    while len(blocks) < 3 or time.perf_counter() - began < min_run_time:
        start = time.perf_counter()
        for _ in range(number):
            _step(fn, tensors, mode)
        blocks.append((time.perf_counter() - start) / number)
    return statistics.median(blocks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _arguments.bench_routed(parser)


def _check_same(kind: str, stage: str, batch: int, dtype: str) -> float:
    """Relative difference ``||a - b|| / ||b||`` of the two implementations' outputs."""
    with torch.no_grad():
        a = _build(kind, "attnzoo", stage, batch, grad=False, dtype=dtype)[0]()
        b = _build(kind, "legacy", stage, batch, grad=False, dtype=dtype)[0]()
    return float((a.double() - b.double()).norm() / b.double().norm())


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    prog = "attnzoo bench-routed"
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.batch_size < 1 or args.rounds < 1 or args.min_run_time <= 0 or args.threads < 1:
        print(f"{prog}: error: --batch-size, --rounds and --threads must be >= 1 and --min-run-time > 0", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print("\n".join([
        f"## attnzoo bench-routed, {now}",
        "",
        f"- command: `{shlex.join(['attnzoo', 'bench-routed', *argv])}`",
        f"- device: cpu ({platform.processor() or platform.machine()}), {args.threads} torch threads",
        f"- versions: attnzoo {attnzoo.__version__}, torch {torch.__version__}, python {platform.python_version()}",
        f"- inputs: batch {args.batch_size}, {args.dtype}, biformer_tiny shapes at 224 px, {NUM_REGIONS}x{NUM_REGIONS} regions; "
        "legacy = re-implementation of the authors' ops/bra_legacy.py (gather of topk k/v copies, explicit scores)",
        f"- time: median over {args.rounds} alternating rounds of blocked measurements "
        f"({args.min_run_time}s each, see the module docstring); memory: peak RSS above inputs + weights during one call, "
        "fresh subprocess per case (see the module docstring)",
    ]), end="\n\n", flush=True)
    rows: List[List[str]] = []
    for kind in args.kinds:
        for stage in args.stages:
            size, dim, heads, topk = STAGES[stage]
            diff = _check_same(kind, stage, args.batch_size, args.dtype)
            for mode in args.modes:
                built = {impl: _build(kind, impl, stage, args.batch_size, grad=mode != "fwd", dtype=args.dtype)
                         for impl in ("attnzoo", "legacy")}
                times: Dict[str, List[float]] = {"attnzoo": [], "legacy": []}
                for _ in range(args.rounds):
                    for impl, (fn, inputs, params) in built.items():
                        times[impl].append(_median_seconds(fn, inputs + params, mode, args.min_run_time))
                t = {impl: statistics.median(v) for impl, v in times.items()}
                mem = {impl: None if args.no_memory else _peak_memory(kind, impl, stage, mode, args.batch_size, args.threads, args.dtype)
                       for impl in ("attnzoo", "legacy")}
                fmt = lambda b: "not measured" if b is None else f"{b / 2**20:.1f}"
                ratio = "—" if None in mem.values() or not mem["legacy"] else f"{mem['attnzoo'] / mem['legacy']:.2f}x"
                rows.append([
                    kind, f"{stage} {size}x{size} C={dim} h={heads} k={topk}", mode,
                    f"{t['attnzoo'] * 1e3:.2f}", f"{t['legacy'] * 1e3:.2f}", f"{t['attnzoo'] / t['legacy']:.2f}x",
                    fmt(mem["attnzoo"]), fmt(mem["legacy"]), ratio, f"{diff:.1e}",
                ])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    headers = ["what", "shape", "pass", "attnzoo (ms)", "legacy (ms)", "time ratio", "attnzoo peak (MiB)",
               "legacy peak (MiB)", "memory ratio", "rel. diff of outputs"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print("\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="attnzoo bench-routed", description=" ".join(__doc__.split("\n\n")[0].split()))
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
