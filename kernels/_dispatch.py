"""One dispatch rule for every attnzoo op.

An op has a reference implementation (pure PyTorch, runs anywhere) and optionally more backends
(fused Triton kernels). Each non-reference backend comes with a check that returns ``None`` when
it can run the given inputs and otherwise a sentence saying why not.

* ``backend=None``: the first registered non-reference backend whose check passes, else the
  reference; the reason each backend was skipped is logged at debug level (in eager mode only:
  inside a ``torch.compile`` / ``torch.export`` trace nothing logs, the choice is made from the
  static shapes, dtypes and devices the trace sees and baked into the graph).
  A Triton kernel that then cannot compile or load on the device (an unsupported GPU, too little
  shared memory) does not crash the model either: that pattern uses the reference from then on,
  with one warning naming the op, the pattern and the error (``_triton/fallback.py``).
* ``backend='<name>'``: that backend or a ``BackendUnavailableError`` with its reason. An
  explicitly named backend never falls back: a kernel error propagates.
* ``ATTNZOO_BACKEND=reference|triton`` sets the process-wide default used when an op is called
  with ``backend=None``; it counts as explicit (no fallback), so a run that asks for Triton
  everywhere fails loudly where Triton cannot run instead of silently measuring the reference.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

__all__ = ["BACKENDS", "BackendUnavailableError", "Op", "default_backend", "record_calls"]

_logger = logging.getLogger("attnzoo.kernels")

BACKENDS = ("reference", "triton")
"""Every backend name an op may be asked for."""

_ENV_VAR = "ATTNZOO_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message says why."""


def _check_backend_name(backend: Optional[str], what: str) -> Optional[str]:
    if backend is None:
        return None
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{what} must be None or one of {BACKENDS}, got {backend!r}")
    return backend


def default_backend() -> Optional[str]:
    """The process-wide default backend from ``ATTNZOO_BACKEND`` (None when unset or empty)."""
    value = os.environ.get(_ENV_VAR, "").strip() or None
    return _check_backend_name(value, f"environment variable {_ENV_VAR}")


Check = Callable[..., Optional[str]]

_RECORDERS: List[list] = []


@contextlib.contextmanager
def record_calls() -> Iterator[List[Tuple["Op", tuple, dict]]]:
    """Collects ``(op, args, kwargs)`` of every op call made inside the block (eager calls only),
    the arguments each backend would receive. Run a model on ``meta`` tensors inside it and the
    list holds the exact patterns of its attention calls (the compile gate does this)."""
    calls: List[Tuple["Op", tuple, dict]] = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


@dataclass
class _Backend:
    name: str
    load: Callable[[], Callable[..., Any]]  # imports lazily: triton must not be needed to import attnzoo
    check: Check
    fallback: bool = False  # the implementation takes ``fallback=``: reference on a kernel error
    _impl: Optional[Callable[..., Any]] = field(default=None, repr=False)

    def impl(self) -> Callable[..., Any]:
        if self._impl is None:
            self._impl = self.load()
        return self._impl


class Op:
    """A functional op with a reference implementation and optional accelerated backends."""

    def __init__(self, name: str, reference: Callable[..., Any]):
        self.name = name
        self.reference = reference
        self._backends: Dict[str, _Backend] = {}
        self._triton_kernels: Optional[Callable[[], Any]] = None
        self.bench: Optional[str] = None
        """The module path of the op's case module for ``attnzoo bench-ops`` (set with its Triton
        backend: a fused op is benchmarked against its alternatives)."""

    def register(self, name: str, load: Callable[[], Callable[..., Any]], check: Check, fallback: bool = False) -> None:
        """Adds a backend. ``load()`` returns its implementation (called once, on first use);
        ``check(*args, **kwargs)`` returns None when it can run the inputs, else the reason.
        ``fallback``: the implementation takes ``fallback=True`` (passed when the backend was not
        named explicitly) and then answers a kernel that cannot run on the device with the
        reference's result and a warning."""
        if name == "reference" or name not in BACKENDS:
            raise ValueError(f"backend name must be one of {BACKENDS[1:]}, got {name!r}")
        self._backends[name] = _Backend(name, load, check, fallback)

    def register_triton(self, kernels: Callable[[], Any], entry: Callable[[], Callable[..., Any]], bench: str) -> None:
        """Adds a Triton backend. ``kernels()`` imports and returns the op's kernel module
        (``<op>/triton.py``), whose ``can_run_triton`` (the op's arguments) says why it refuses and
        whose ``INTERPRETER`` says whether its kernels were built for Triton's interpreter;
        ``entry()`` imports and returns the function that runs the op through its custom ops
        (``<op>/_library.py``, which imports the kernel module: imports run one way). Both are
        functions holding a relative import, an import Dynamo can trace, unlike importlib.
        ``bench``: the module path of its ``attnzoo bench-ops`` case module. Nothing imports triton
        for inputs it could never take (CPU tensors outside Triton's interpreter)."""

        self._triton_kernels = kernels
        self.bench = bench

        def check(q: torch.Tensor, *args: Any, **kwargs: Any) -> Optional[str]:
            interpret = os.environ.get("TRITON_INTERPRET", "") == "1"
            if q.device.type != "cuda" and not interpret:
                return (f"inputs are on {q.device.type}; the Triton kernels run on CUDA devices "
                        "(or on the CPU under Triton's interpreter, TRITON_INTERPRET=1 before import)")
            try:
                module = kernels()
            except ImportError as exc:
                return f"triton is not installed or does not import ({exc}); pip install 'attnzoo[triton]'"
            if q.device.type != "cuda":
                if not module.INTERPRETER:
                    return (f"inputs are on {q.device.type} but {module.__name__} was built for the GPU "
                            "(TRITON_INTERPRET=1 must be set before the process imports triton)")
                if q.dtype == torch.bfloat16:
                    return ("Triton's interpreter does not compute bfloat16 correctly (its tl.dot is off by "
                            "orders of magnitude); bfloat16 runs on the reference off the GPU")
            return module.can_run_triton(q, *args, **kwargs)

        self.register("triton", entry, check, fallback=True)

    def triton_kernels(self) -> Any:
        """The op's kernel module (imports triton), or None when it has no Triton backend."""
        return None if self._triton_kernels is None else self._triton_kernels()

    @property
    def backends(self) -> tuple:
        """Names of the backends this op has, reference first."""
        return ("reference",) + tuple(self._backends)

    def why_not(self, backend: str, *args: Any, **kwargs: Any) -> Optional[str]:
        """None when ``backend`` can run these inputs, else the reason it cannot."""
        if backend == "reference":
            return None
        entry = self._backends.get(backend)
        if entry is None:
            return f"{self.name} has no {backend!r} backend (it has: {', '.join(self.backends)})"
        return entry.check(*args, **kwargs)

    def select(self, backend: Optional[str], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        """The implementation that the dispatch rule picks for these inputs."""
        if _RECORDERS and not torch.compiler.is_compiling():
            _RECORDERS[-1].append((self, args, kwargs))
        backend = _check_backend_name(backend, "backend")
        explicit = backend is not None
        if backend is None:
            backend = default_backend()
            explicit = backend is not None
        if explicit:
            reason = self.why_not(backend, *args, **kwargs)
            if reason is not None:
                raise BackendUnavailableError(f"{self.name}: backend {backend!r} cannot run these inputs: {reason}")
            return self.reference if backend == "reference" else self._backends[backend].impl()
        for entry in self._backends.values():
            reason = entry.check(*args, **kwargs)
            if reason is None:
                return functools.partial(entry.impl(), fallback=True) if entry.fallback else entry.impl()
            if not torch.compiler.is_compiling() and _logger.isEnabledFor(logging.DEBUG):
                _logger.debug("%s: not using %s backend: %s", self.name, entry.name, reason)
        return self.reference
