"""Ahead-of-time compilation of the fused kernels for named NVIDIA targets, with no GPU present.

Triton's interpreter runs programs that Triton's compiler rejects, and it cannot run bfloat16, so
it proves nothing about a GPU. Triton's compiler itself, though, needs no GPU: given a target
(compute capability) it lowers a kernel to PTX and, through the ``ptxas`` it ships, to a cubin.

``compile_session(target)`` makes that the way every launch behaves for a while: the ops' own host
code runs unchanged on ``meta`` tensors (sizes and dtypes, no memory), and when it reaches
``launch.launch`` the kernel is compiled for ``target`` through Triton's own argument binding
(``JITFunction.warmup``: the same signature, constexprs and 16-byte-divisibility specialisation
as a real launch) instead of being run. No second list of kernel signatures exists to drift from
the launch code. Each distinct binary becomes one ``Build`` with its resources: registers and
spilled bytes (``cuobjdump -res-usage`` of the cubin: the stack frame, which in these kernels
holds spills only), shared memory (the compiled metadata) against the target's per-block limit,
and the theoretical occupancy they allow.

Two users: ``attnzoo kernels`` (the compile gate, ``tools/kernels.py``) and the compile probe
of ``backend=None`` (``_dispatch.py``), which compiles a pattern's kernels for the user's own GPU
before the first launch so that a kernel the GPU cannot take falls back to the reference instead
of crashing the model.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver as _driver

__all__ = ["unwrap", "Target", "TARGETS", "Build", "Session", "compile_session", "current_session", "device_target"]


@dataclass(frozen=True)
class Target:
    """An NVIDIA compute capability and the per-SM limits that decide what fits and how many
    programs share an SM (CUDA programming guide, "compute capabilities" table)."""

    name: str  # sm_80, sm_90, sm_100
    capability: int  # 80, 90, 100
    gpus: str
    smem_per_block: int  # bytes one program may opt in to
    smem_per_sm: int
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    regs_per_sm: int = 65536

    @property
    def gpu_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)

    def occupancy(self, num_warps: int, registers: int, shared: int) -> float:
        """Resident warps per SM over the maximum, as registers, shared memory, threads and the
        block limit allow (registers are allocated per warp in units of 256)."""
        threads = 32 * num_warps
        per_warp_regs = math.ceil(max(registers, 1) * 32 / 256) * 256
        by_regs = self.regs_per_sm // (per_warp_regs * num_warps)
        # one KiB of every block's shared memory is reserved by the driver on sm_80 and newer
        by_smem = self.smem_per_sm // (shared + 1024) if shared else self.max_blocks_per_sm
        by_threads = self.max_threads_per_sm // threads
        blocks = min(by_regs, by_smem, by_threads, self.max_blocks_per_sm)
        return blocks * threads / self.max_threads_per_sm


KIB = 1024
TARGETS: Dict[str, Target] = {
    "sm_80": Target("sm_80", 80, "A100", smem_per_block=163 * KIB, smem_per_sm=164 * KIB),
    "sm_90": Target("sm_90", 90, "H100 / H200", smem_per_block=227 * KIB, smem_per_sm=228 * KIB),
    "sm_100": Target("sm_100", 100, "B200", smem_per_block=227 * KIB, smem_per_sm=228 * KIB),
}
"""The targets the compile gate knows: CI compiles for sm_80 and sm_90, the extended tier adds sm_100."""


def device_target(device: torch.device) -> Target:
    """The ``Target`` of a CUDA device, with the limits the device itself reports."""
    props = torch.cuda.get_device_properties(device)
    capability = props.major * 10 + props.minor
    known = TARGETS.get(f"sm_{capability}")
    smem_block = getattr(props, "shared_memory_per_block_optin", None) or (known.smem_per_block if known else 48 * KIB)
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", None) or (known.smem_per_sm if known else smem_block)
    threads = getattr(props, "max_threads_per_multi_processor", None) or 2048
    regs = getattr(props, "regs_per_multiprocessor", None) or 65536
    return Target(f"sm_{capability}", capability, props.name, smem_per_block=smem_block, smem_per_sm=smem_sm,
                  max_threads_per_sm=threads, regs_per_sm=regs)


@dataclass
class Build:
    """One compiled binary (or one failed compile) and every launch that asked for it."""

    op: str
    kernel: str
    target: Target
    dtype: str
    label: str  # 'default' (the untuned choice), 'blocked', 'tuned' (kept by autotune pruning)
    config: str  # meta-parameters, warps and stages
    spec: Dict[str, object]  # the launch's other constexprs (the pattern: kernel sizes, head dims, flags)
    num_warps: int
    num_stages: int
    compile_s: float = 0.0
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None
    shared: Optional[int] = None
    error: Optional[str] = None
    cases: List[str] = field(default_factory=list)

    @property
    def smem_ok(self) -> bool:
        return self.shared is not None and self.shared <= self.target.smem_per_block

    @property
    def occupancy(self) -> Optional[float]:
        if self.registers is None or self.shared is None:
            return None
        return self.target.occupancy(self.num_warps, self.registers, self.shared)

    def problems(self) -> List[str]:
        """What makes this build unacceptable: a compile error, shared memory over the target's
        limit, or (for a default or blocked config, which every untuned launch takes) a spill."""
        if self.error is not None:
            return [f"does not compile: {self.error}"]
        out = []
        if not self.smem_ok:
            out.append(f"shared memory {self.shared} B > {self.target.smem_per_block} B ({self.target.gpus})")
        if self.spill_bytes and self.label != "tuned":
            out.append(f"spills {self.spill_bytes} B at {self.registers} registers")
        return out


def unwrap(kernel):
    """The JITFunction under triton.heuristics / triton.autotune wrappers."""
    while not isinstance(kernel, triton.JITFunction) and hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel


def _tool(name: str) -> str:
    try:
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    except (ImportError, AttributeError):  # Triton before knobs: the binaries it ships
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)")


def _resources(cubin: bytes) -> Tuple[int, int]:
    """(registers, stack bytes) of the one kernel in ``cubin``, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)
    match = _RES.search(text)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no REG / STACK line:\n{text}")
    return int(match.group(1)), int(match.group(2))


def _short(exc: BaseException) -> str:
    """The error in one line: its type and the line that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return f"{type(exc).__name__}: {detail}"[:300]


class _AOTDriver(DriverBase):
    """Stands in for Triton's CUDA driver while compiling for a named target: it reports the
    target and a device key of its own (so binaries for different targets never share Triton's
    in-memory cache) and refuses anything that would need a GPU."""

    def __init__(self, target: Target):
        self.target = target

    @classmethod
    def is_active(cls) -> bool:
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("ahead-of-time compilation builds no launcher")

    def get_current_target(self) -> GPUTarget:
        return self.target.gpu_target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")

    def get_benchmarker(self):
        raise RuntimeError("kernels are compiled ahead of time here, not timed")

    def get_current_device(self) -> str:
        return f"attnzoo-aot-{self.target.name}"

    def get_current_stream(self, device=None) -> int:
        return 0


class Session:
    """Collects the builds of every launch made while it is active (see ``compile_session``)."""

    def __init__(self, target: Target, all_configs: bool = False):
        self.target = target
        self.all_configs = all_configs
        self.op = "?"
        self.dtype = "?"
        self.case = "?"
        self._builds: Dict[tuple, Build] = {}

    @property
    def builds(self) -> List[Build]:
        return list(self._builds.values())

    @contextlib.contextmanager
    def context(self, op: str, case: str, dtype: str) -> Iterator[None]:
        """Labels the builds of the launches inside: which op, case and dtype asked for them."""
        saved = self.op, self.case, self.dtype
        self.op, self.case, self.dtype = op, case, dtype
        try:
            yield
        finally:
            self.op, self.case, self.dtype = saved

    def launch(self, kernel, args: tuple, kwargs: dict, config: dict, tuner=None) -> None:
        """What ``launch.launch`` does in a session: compile ``config`` (the launch's untuned
        choice) and, with ``all_configs``, every config the autotuner's pruning keeps."""
        meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
        label = "blocked" if config.get("_blocked") else "default"
        meta.pop("_blocked", None)
        self._compile(kernel, args, kwargs, meta, config["num_warps"], config["num_stages"], label)
        if self.all_configs and tuner is not None:
            tuner.nargs = dict(zip(tuner.arg_names, args))
            try:
                kept = tuner.prune_configs(kwargs)
            finally:
                tuner.nargs = None
            for c in kept:
                self._compile(tuner.fn, args, kwargs, dict(c.kwargs), c.num_warps, c.num_stages, "tuned")

    def _compile(self, kernel, args, kwargs, meta, num_warps, num_stages, label) -> None:
        jit = unwrap(kernel)
        name = jit.__name__
        constexprs = {p.name for p in getattr(jit, "params", ()) if p.is_constexpr}
        spec = {k: v for k, v in kwargs.items() if k in constexprs and k not in meta}
        config = " ".join(f"{k}={v}" for k, v in sorted(meta.items())) + f" w{num_warps} s{num_stages}"
        start = time.perf_counter()
        try:
            compiled = kernel.warmup(*args, **kwargs, **meta, num_warps=num_warps, num_stages=num_stages, grid=(1,))
        except Exception as exc:  # a compile error is a result here, reported per build
            key = (name, self.dtype, config, "error")
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = Build(self.op, name, self.target, self.dtype, label, config, spec,
                                                  num_warps, num_stages, time.perf_counter() - start,
                                                  error=_short(exc))
            build.cases.append(self.case)
            return
        key = (name, compiled.hash, label)
        build = self._builds.get(key)
        if build is None:
            elapsed = time.perf_counter() - start
            registers, stack = _resources(compiled.asm["cubin"])
            build = self._builds[key] = Build(self.op, name, self.target, self.dtype, label, config, spec, num_warps,
                                              num_stages, elapsed, registers, stack, compiled.metadata.shared)
        build.cases.append(self.case)


_ACTIVE = threading.local()
_LOCK = threading.Lock()


def current_session() -> Optional[Session]:
    """The session of this thread, if launches are being compiled ahead of time."""
    return getattr(_ACTIVE, "session", None)


@contextlib.contextmanager
def compile_session(target: Target, all_configs: bool = False) -> Iterator[Session]:
    """Within this block every ``launch.launch`` compiles for ``target`` instead of running:
    call the ops' host functions on ``meta`` tensors. ``all_configs``: also every autotune config
    that pruning keeps. Triton's active driver is swapped for the block (one session at a time
    per process)."""
    session = Session(target, all_configs)
    with _LOCK:
        previous = getattr(_driver, "_active", None)
        _driver.set_active(_AOTDriver(target))
        _ACTIVE.session = session
        try:
            yield session
        finally:
            _ACTIVE.session = None
            # back to exactly what was there: None lets Triton pick its driver lazily again (on a
            # machine without a GPU, picking one now would fail)
            _driver._active = previous


# --- patterns: an op call's arguments as plain data ------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument reduced to what a kernel build depends on (and what a launch checks)."""

    shape: Tuple[int, ...]
    dtype: str  # 'float32', 'int64', ...
    requires_grad: bool = False


def pattern_of(args: tuple, kwargs: dict) -> tuple:
    """A hashable, picklable description of an op call: each tensor as a ``TensorSpec``, every
    other argument as it is (ints, floats, None and the ops' frozen parameter dataclasses)."""
    def spec(x):
        if isinstance(x, torch.Tensor):
            return TensorSpec(tuple(int(n) for n in x.shape), str(x.dtype).replace("torch.", ""), x.requires_grad)
        return x

    return tuple(spec(a) for a in args), tuple(sorted((k, spec(v)) for k, v in kwargs.items()))


def meta_arguments(pattern: tuple, dtype: Optional[torch.dtype] = None) -> Tuple[tuple, dict]:
    """``(args, kwargs)`` of ``pattern`` with ``meta`` tensors; ``dtype`` replaces every floating
    dtype (the compile gate compiles one pattern in each dtype it checks)."""
    def build(x):
        if isinstance(x, TensorSpec):
            want = getattr(torch, x.dtype)
            if dtype is not None and want.is_floating_point:
                want = dtype
            return torch.empty(x.shape, dtype=want, device="meta")
        return x

    args, kwargs = pattern
    return tuple(build(a) for a in args), {k: build(v) for k, v in kwargs}
