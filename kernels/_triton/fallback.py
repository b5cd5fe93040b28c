"""``backend=None`` never crashes a model on a GPU the kernels cannot serve.

A Triton kernel is compiled for the user's GPU when it is first launched; a kernel that does not
compile there (``CompilationError``, a ``ptxas`` error, an architecture Triton does not support) or
does not fit it (``OutOfResources``: shared memory or registers) raises before anything runs.
The ops' custom-op bodies (``<op>/_library.py``) run their kernels through ``run_or_fall_back``:
with ``fallback=True`` (the dispatcher's choice for ``backend=None``) such an error makes that op
use its reference implementation for that pattern (op, shapes, dtypes, device, parameters) from
then on, with one warning naming the op, the pattern and the error; with ``fallback=False``
(``backend='triton'`` named explicitly) the error propagates. The decision is taken where the
kernels run, inside the custom op, so it holds alike in eager mode, under ``torch.compile``
(static or dynamic shapes: the op is one opaque node, no graph break) and in an exported program:
an op called with ``fallback=True`` is never handed to Inductor as kernels (``in_graph.py``), its
body runs at run time. With ``fallback=False`` on CUDA, Inductor compiles the kernels itself
(``torch.compile``, AOTInductor), so a kernel the GPU cannot build fails that compilation.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

__all__ = ["KERNEL_ERRORS", "failed_patterns", "pattern_key", "reference_grads", "run_or_fall_back"]


def _kernel_errors() -> Tuple[type, ...]:
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    errors = [CompilationError, OutOfResources]
    try:  # Triton >= 3.3
        from triton.runtime.errors import PTXASError

        errors.append(PTXASError)
    except ImportError:
        pass
    try:
        from triton.runtime.errors import InterpreterError

        errors.append(InterpreterError)
    except ImportError:
        pass
    return tuple(errors)


KERNEL_ERRORS = _kernel_errors()
"""What a kernel raises when it cannot be built or loaded for this device."""

_FAILED: Dict[tuple, str] = {}


def failed_patterns() -> Dict[tuple, str]:
    """The patterns that fell back in this process, each with its error (a copy)."""
    return dict(_FAILED)


def pattern_key(op: str, tensors: Sequence[Optional[torch.Tensor]], statics: tuple) -> tuple:
    """What identifies a pattern: the op, each tensor's shape, dtype and device, the rest."""
    return (op, tuple(None if t is None else (tuple(t.shape), t.dtype, str(t.device)) for t in tensors), statics)


def _is_kernel_error(exc: BaseException) -> bool:
    if isinstance(exc, KERNEL_ERRORS):
        return True
    # the CUDA driver refusing a binary (e.g. "no kernel image is available for execution")
    return isinstance(exc, RuntimeError) and str(exc).startswith("Triton Error [CUDA]")


def run_or_fall_back(key: tuple, fused: Callable[[], Any], reference: Callable[[], Any], fallback: bool) -> Any:
    """``fused()``, or ``reference()`` when ``fallback`` and the pattern's kernels cannot run on
    this device (this time, or any time before in this process)."""
    if fallback and key in _FAILED:
        return _untracked(reference)
    try:
        return fused()
    except Exception as exc:
        if not fallback or not _is_kernel_error(exc):
            raise
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:400]
        _FAILED[key] = error
        op, shapes, statics = key
        warnings.warn(
            f"attnzoo: the Triton kernels of {op} cannot run the pattern {shapes} {statics} on this device "
            f"({error}); that pattern uses the reference implementation from now on. "
            f"backend='triton' would raise instead; `attnzoo selftest` checks the kernels of this GPU.",
            RuntimeWarning, stacklevel=3)
        return _untracked(reference)


def _untracked(reference: Callable[[], Any]) -> Any:
    # inside a custom op's body: its registered autograd formula makes the gradients, the
    # reference must not record a graph of its own (reference_grads enables one where it needs it)
    with torch.no_grad():
        return reference()


def reference_grads(function: Callable[..., torch.Tensor], inputs: Sequence[Optional[torch.Tensor]],
                    grad_out: torch.Tensor, wanted: Sequence[bool]) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of ``function(*inputs)`` against ``grad_out`` through the reference, one per
    input (None where not ``wanted`` or absent): the backward of a pattern whose kernels fell back.
    ``torch.func.vjp``, not ``torch.autograd``: this runs inside a custom op's body, where the
    dispatcher has switched autograd off."""
    positions = [i for i, (t, w) in enumerate(zip(inputs, wanted)) if t is not None and w and t.is_floating_point()]

    def of_wanted(*chosen):
        args = list(inputs)
        for i, t in zip(positions, chosen):
            args[i] = t
        return function(*args)

    result: list = [None] * len(inputs)
    if positions:
        _, vjp = torch.func.vjp(of_wanted, *(inputs[i] for i in positions))
        for i, g in zip(positions, vjp(grad_out)):
            result[i] = g
    return tuple(result)
