"""Check the fused Triton kernels against the reference on this machine's GPU.

The cases are the attention calls of real models: the smallest model of each family with a fused
op runs a random image and the dispatcher records every op call with its tensors
(``attnzoo.kernels._dispatch.record_calls``). Each call is then run twice in each dtype: through
the op's Triton backend (named explicitly: an error is an error, no fallback) and through the
reference in float64 on the same (dtype-rounded) inputs, forward and backward with one random
output gradient. One row per (op, dtype, call): the largest relative error
``||triton - reference|| / ||reference||`` over the output and every input gradient, its bound,
and pass / FAIL. Exit status 1 on any failure.

Without a CUDA device there is nothing to test (exit 0), unless ``--small``: Triton's interpreter
runs the kernels on the CPU (float32 and float16; it computes bfloat16 wrongly) at small input
sizes, in a fresh process with ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

__all__ = ["add_arguments", "run", "BOUNDS"]

# ||triton - reference|| / ||reference|| bounds, (output, gradients), per dtype. The kernels
# accumulate in float32; float16 / bfloat16 round P and dS for the tensor-core products (as
# FlashAttention does), and a small parameter's gradient (a temperature, a bias table) sums many
# such terms. The op tests hold each op to tighter, op-specific bounds on smaller cases; these
# catch a kernel that is wrong on this GPU, not a last bit.
BOUNDS = {"float32": (1e-4, 1e-3), "float16": (3e-3, 3e-2), "bfloat16": (2e-2, 2e-1)}
SMALL_SIZE = "64x64"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true",
                        help=f"run under Triton's interpreter on the CPU (fresh process, TRITON_INTERPRET=1), "
                             f"float32 and float16, input {SMALL_SIZE}, one model per fused op")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated among float32, float16, bfloat16 (default: all three on a GPU; "
                             "float32,float16 with --small)")
    parser.add_argument("--models", default=None, help="comma-separated model names (default: the compile gate's models)")
    parser.add_argument("--size", default=None, help="input HxW (default: each model's published size; --small: 64x64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images, gradients (default 0)")


def _rel(got, want) -> float:
    want = want.double()
    scale = want.norm()
    diff = (got.double() - want).norm()
    return float(diff / scale) if scale > 0 else float(diff)


def _check_call(op, args: tuple, kwargs: dict, dtype, seed: int) -> Tuple[float, float, str]:
    """(output error, largest gradient error, name of that gradient) of one recorded call."""
    import torch

    gen = torch.Generator(device=args[0].device).manual_seed(seed)

    def prepare(x, to):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().to(dtype).to(to).requires_grad_()
        return x

    fused = [prepare(a, dtype) for a in args]
    fused_kw = {k: prepare(v, dtype) for k, v in kwargs.items()}
    ref = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
           for a in fused]
    ref_kw = {k: (v.detach().double().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in fused_kw.items()}
    out = op.select("triton", *fused, **fused_kw)(*fused, **fused_kw)
    want = op.reference(*ref, **ref_kw)
    grad = torch.randn(want.shape, generator=gen, device=want.device, dtype=torch.float64)
    out.backward(grad.to(out.dtype))
    want.backward(grad)
    worst, name = 0.0, "-"
    names = list(inspect.signature(op.reference).parameters)
    named = [(names[i] if i < len(names) else f"arg{i}", f, r) for i, (f, r) in enumerate(zip(fused, ref))]
    named += [(k, fused_kw[k], ref_kw[k]) for k in fused_kw]
    for label, f, r in named:
        if isinstance(f, torch.Tensor) and f.grad is not None and r.grad is not None:
            e = _rel(f.grad, r.grad)
            if e > worst:
                worst, name = e, label
    return _rel(out.detach(), want.detach()), worst, name


def _record(models: Sequence[str], size: str, device: str, seed: int) -> Dict[str, list]:
    """{op: [(case, args, kwargs)]} of the fused-op calls of one forward per model, real tensors."""
    import timm
    import torch

    import attnzoo  # noqa: F401
    from attnzoo.kernels import OPS
    from attnzoo.kernels._dispatch import record_calls

    fused = {name for name, op in OPS.items() if "triton" in op.backends}
    found: Dict[str, list] = {}
    saved = os.environ.get("ATTNZOO_BACKEND")
    os.environ["ATTNZOO_BACKEND"] = "reference"  # record through the reference: the calls, not the kernels
    try:
        for name in models:
            torch.manual_seed(seed)
            model = timm.create_model(name).to(device).eval()
            hw = tuple(model.pretrained_cfg["input_size"][1:]) if size is None else tuple(int(n) for n in size.split("x"))
            with record_calls() as calls, torch.no_grad():
                model(torch.randn(1, 3, *hw, device=device))
            seen = set()
            for op, args, kwargs in calls:
                if op.name not in fused:
                    continue
                key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else repr(a) for a in args)
                if key in seen:  # the same pattern again (repeated blocks of a stage)
                    continue
                seen.add(key)
                found.setdefault(op.name, []).append((f"{name}@{hw[0]}x{hw[1]}", args, kwargs))
    finally:
        if saved is None:
            os.environ.pop("ATTNZOO_BACKEND", None)
        else:
            os.environ["ATTNZOO_BACKEND"] = saved
    return found


def _shape(args) -> str:
    import torch

    return "x".join(str(n) for n in args[0].shape) if isinstance(args[0], torch.Tensor) else "?"


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    default_dtypes = "float32,float16" if args.small else "float32,float16,bfloat16"
    dtypes = [d.strip() for d in (args.dtypes or default_dtypes).split(",") if d.strip()]
    for d in dtypes:
        if d not in BOUNDS:
            print(f"attnzoo selftest: --dtypes: unknown dtype {d!r}; accepted: {', '.join(BOUNDS)}", file=sys.stderr)
            return 2
        if args.small and d == "bfloat16":
            print("attnzoo selftest: --small cannot test bfloat16: Triton's interpreter computes it wrongly", file=sys.stderr)
            return 2
    if args.size is not None and not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", args.size):
        print(f"attnzoo selftest: --size must be HxW (e.g. 64x64), got {args.size!r}", file=sys.stderr)
        return 2
    if args.small and os.environ.get("TRITON_INTERPRET") != "1":
        # the interpreter is chosen when kernels are decorated: a fresh process, variable set first
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, "-m", "attnzoo.tools.cli", "selftest", *argv], env=env)
    import torch

    from attnzoo.kernels import OPS
    from attnzoo.tools.kernels import GATE_MODELS

    if not args.small and not torch.cuda.is_available():
        print("attnzoo selftest: no CUDA device here, so no fused kernel runs and there is nothing to test "
              "(every op uses its reference). `attnzoo selftest --small` runs the kernels under Triton's "
              "interpreter on the CPU; `attnzoo kernels --quick` compiles them for a GPU target.")
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    if args.models:
        models = args.models.split(",")
    elif args.small:  # one model per fused op keeps the interpreter to a minute or two
        models = ["nat_mini", "az_maxvit_rmlp_pico_rw_256", "az_halonet26t", "biformer_tiny", "transnext_micro"]
    else:
        models = list(GATE_MODELS)
    size = args.size or (SMALL_SIZE if args.small else None)
    where = "Triton's interpreter (CPU)" if args.small else torch.cuda.get_device_name()
    print(f"attnzoo selftest on {where}: torch {torch.__version__}, models {', '.join(models)}, dtypes {', '.join(dtypes)}",
          flush=True)
    start = time.perf_counter()
    calls = _record(models, size, device, args.seed)
    rows: List[Tuple[str, ...]] = []
    failures = 0
    header = ("op", "dtype", "case", "q shape", "out error", "grad error (worst)", "bound (out / grad)", "result")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for op_name, op_calls in calls.items():
        op = OPS[op_name]
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for i, (case, call_args, call_kwargs) in enumerate(op_calls):
                bound_out, bound_grad = BOUNDS[dtype_name]
                try:
                    out_err, grad_err, worst = _check_call(op, call_args, call_kwargs, dtype, args.seed + i)
                    ok = out_err <= bound_out and grad_err <= bound_grad
                    row = (op_name, dtype_name, case, _shape(call_args), f"{out_err:.2e}", f"{grad_err:.2e} ({worst})",
                           f"{bound_out:.0e} / {bound_grad:.0e}", "pass" if ok else "FAIL")
                except Exception as exc:  # a kernel that raises is a failure of this row, not of the run
                    ok = False
                    row = (op_name, dtype_name, case, _shape(call_args), "-", "-", "-",
                           f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
                failures += not ok
                rows.append(row)
                print("| " + " | ".join(row) + " |", flush=True)
    print(f"{len(rows)} checks, {failures} failed, {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0
