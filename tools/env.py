"""``attnzoo env``: what a bug report needs to know about this machine: the versions of attnzoo and
of what it runs on, the device, and which backend of each op can run here, with the reason where
one cannot.

Paste its output into the report. It imports torch and attnzoo but builds no model and downloads
nothing; a GPU is only queried (name, compute capability, memory), nothing is compiled on it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

__all__ = ["add_arguments", "run", "report", "attnzoo_ops", "cuda_status", "triton_status"]

# (import name, distribution name shown) of what attnzoo runs on or with, in the order shown
PACKAGES: Tuple[Tuple[str, str], ...] = (
    ("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("triton", "triton"),
    ("huggingface_hub", "huggingface_hub"), ("safetensors", "safetensors"), ("numpy", "numpy"),
    ("matplotlib", "matplotlib"), ("yaml", "pyyaml"), ("sklearn", "scikit-learn"), ("onnx", "onnx"),
    ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime"), ("natten", "natten"), ("mmengine", "mmengine"),
    ("mmcv", "mmcv"), ("mmdet", "mmdet"), ("mmseg", "mmsegmentation"),
)

ENV_VARS = ("ATTNZOO_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "ATTNZOO_CACHE", "ATTNZOO_WHEEL_CACHE",
            "ATTNZOO_AUTOTUNE", "ATTNZOO_GNA_AUTOTUNE", "ATTNZOO_ROUTED_AUTOTUNE", "ATTNZOO_AGGREGATED_AUTOTUNE",
            "ATTNZOO_HALO_AUTOTUNE",
            "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "CUDA_HOME")

MIN_COMPUTE_CAPABILITY = (8, 0)
"""The oldest GPU generation the Triton kernels are built and tested for (sm_80, Ampere)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-packages", action="store_true", help="leave out the list of package versions")


def attnzoo_ops() -> dict:
    """Every attnzoo op (the ``Op`` dispatcher ``attnzoo.kernels.<op>.<op>_op``) by name."""
    import pkgutil

    import attnzoo.kernels
    from attnzoo.kernels._dispatch import Op

    ops = {}
    for info in pkgutil.iter_modules(attnzoo.kernels.__path__):
        if info.ispkg:
            op = getattr(importlib.import_module(f"attnzoo.kernels.{info.name}"), f"{info.name}_op", None)
            if isinstance(op, Op):
                ops[op.name] = op
    return ops


def _distribution_version(dist: str) -> str:
    """The installed version, read from the distribution's metadata (no import), or why there is none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def cuda_status() -> Tuple[bool, str]:
    """(CUDA usable, a line saying what was found or why not)."""
    import torch

    if torch.version.cuda is None:
        return False, f"no: this torch ({torch.__version__}) is a CPU-only build (torch.version.cuda is None)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False, f"no: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (torch built for CUDA {torch.version.cuda})"
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return True, f"yes: {n} device{'s' if n > 1 else ''} (torch built for CUDA {torch.version.cuda})"
    try:
        torch.cuda.init()
        reason = "torch.cuda.is_available() is False"
    except Exception as e:  # the driver's own explanation
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return False, f"no: {reason} (torch built for CUDA {torch.version.cuda})"


def _gpus() -> List[str]:
    import torch

    lines = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cc = (p.major, p.minor)
        warn = "" if cc >= MIN_COMPUTE_CAPABILITY else (
            f"; below sm_{MIN_COMPUTE_CAPABILITY[0]}{MIN_COMPUTE_CAPABILITY[1]}, the oldest target the Triton kernels "
            "are built for: backend=None uses the reference where a kernel fails to compile")
        lines.append(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor} (sm_{p.major}{p.minor}), "
                     f"{p.total_memory / 2**30:.1f} GiB{warn}")
    return lines


def _driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi not found"
    try:
        proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed ({e})"
    if proc.returncode != 0:
        return f"nvidia-smi failed: {(proc.stderr.strip().splitlines() or ['?'])[0]}"
    return ", ".join(dict.fromkeys(proc.stdout.split())) or "unknown"


def triton_status(cuda_ok: bool) -> Optional[str]:
    """None when the Triton backend can run on this machine, else why not."""
    try:
        importlib.import_module("triton")
    except Exception as e:
        return f"triton does not import ({type(e).__name__}: {e}); pip install -e '.[triton]' in the checkout"
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return None
    if not cuda_ok:
        return "no CUDA GPU here (see cuda above); the kernels run on CUDA GPUs only"
    return None


def report(packages: bool = True) -> List[str]:
    """The lines ``attnzoo env`` prints."""
    import torch

    import attnzoo
    from attnzoo.tools._report import cpu_name

    cuda_ok, cuda_line = cuda_status()
    lines = [
        "## attnzoo env",
        "",
        f"- attnzoo: {attnzoo.__version__} ({os.path.dirname(attnzoo.__file__)})",
        f"- python: {platform.python_version()} ({sys.executable})",
        f"- platform: {platform.platform()}",
        f"- cpu: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        f"- cuda: {cuda_line}",
    ]
    if cuda_ok:
        lines += [f"  - {g}" for g in _gpus()]
        lines.append(f"  - driver: {_driver()}")
    if packages:
        lines.append("- packages: " + ", ".join(f"{dist} {_distribution_version(dist)}" for _, dist in PACKAGES))
    set_vars = [f"{v}={os.environ[v]!r}" for v in ENV_VARS if v in os.environ]
    lines.append("- environment: " + (", ".join(set_vars) if set_vars else "none of " + ", ".join(ENV_VARS) + " is set"))

    interpreter = os.environ.get("TRITON_INTERPRET", "") == "1"
    triton_reason = triton_status(cuda_ok)
    default = os.environ.get("ATTNZOO_BACKEND", "").strip()
    lines += [
        "",
        "### Backends",
        "",
        "backend=None (the default) runs an op's Triton kernel where it can run the inputs and the reference "
        "otherwise; each kernel also checks the inputs of every call (dtype, head dim, sizes)."
        + (f" ATTNZOO_BACKEND={default!r} pins every op to that backend in this environment." if default else ""),
        "",
    ]
    for name, op in attnzoo_ops().items():
        cells = ["reference: yes (pure PyTorch, any device)"]
        if "triton" not in op.backends:
            cells.append("triton: no kernel for this op (the reference always runs)")
        elif triton_reason is not None:
            cells.append(f"triton: no: {triton_reason}")
        elif interpreter:
            cells.append("triton: on the CPU under Triton's interpreter (TRITON_INTERPRET=1): a correctness check, "
                         "not a speed path")
        else:
            cells.append("triton: yes, on CUDA inputs")
        lines.append(f"- {name}: " + "; ".join(cells))
    return lines


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    print("\n".join(report(packages=not args.no_packages)))
    return 0
