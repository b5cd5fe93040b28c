"""The fused ops as ``torch.library.triton_op``: Inductor (``torch.compile``, AOTInductor) sees
and compiles their Triton kernels on CUDA instead of calling back into Python.

What happens where, for one op (``<op>/_library.py`` defines it with ``fused_op``):

* **Eager** (real tensors): the op's body runs exactly as a ``custom_op``'s would: its host code,
  its autotuner, ``run_or_fall_back`` (``fallback.py``). Nothing here is on that path.
* **Fake tensors** (``torch.compile``'s and ``torch.export``'s tracing, ``opcheck``): the op's own
  fake registration (``register_fake`` in ``_library.py``) replaces the body ``triton_op``
  would otherwise trace, so output shapes stay plain functions of the input shapes.
* **torch.export**: the op stays one node (``triton_op``'s rule while exporting: a
  serialisable program holds no Triton code).
* **Inductor** (``torch.compile`` and AOTInductor; AOTAutograd functionalises the graph under
  ``FunctionalTensorMode``): the rule (``decomposes``) decides per call.

  - ``decompose`` (every tensor on CUDA, the kernels built for the compiler rather than Triton's
    interpreter, ``fallback=False``, and static sizes unless the op is ``size_dynamic``): the
    body is traced with the launches going through
    ``torch.library.wrap_triton`` (``launch.launch`` -> ``launch_in_graph``), so the graph
    Inductor lowers holds the host code's PyTorch ops and one ``triton_kernel_wrapper_functional``
    node per kernel launch; Inductor compiles those kernels itself and an AOTInductor package
    carries their binaries, launched from its C++ wrapper (no call into Python). Each launch
    takes the config the launch code would use untuned (``config``: the one the compile gate
    checks for every pattern); the op's autotuner and its shape threshold stay eager-only.
  - ``opaque`` (anything else: CPU tensors, the interpreter, ``fallback=True``, symbolic sizes
    for an op whose host code decides on sizes in Python): the op stays one node, an extern call
    into its Python body, as a plain ``custom_op``: under AOTInductor a proxy-executor call
    through the dispatcher (needs the Python process that imported attnzoo).

  Symbolic sizes. The host code picks block configs, search depths and autotune buckets from
  the sizes; traced on symbolic sizes each such decision is a guard. ``torch.compile`` checks
  guards at every call (a new size recompiles); an AOTInductor package does not, so it would
  run the example's decisions at every size. Hence ``size_dynamic``: an op declares that its host
  code takes symbolic sizes without a guard (halo_attention; tests/kernels/test_triton_op_graph.py
  checks it), the others stay opaque on symbolic sizes; and should a declared op's tracing pin a
  size to the example's value under AOTInductor anyway (a guard ``Eq(size, constant)``), the
  compilation fails naming it. (Layout guards, e.g. contiguity of a symbolic shape, arise in the
  host code as in any traced PyTorch code; the export command's check at other sizes covers them.)

``ATTNZOO_INDUCTOR_KERNELS=0`` in the environment keeps every op opaque (the behaviour before the
ops were ``triton_op``s), should Inductor fail on a kernel it should have taken.

Fallback (``backend=None``): its promise is decided when a kernel is compiled for the device,
which in eager mode is the first launch, inside the op. A decomposed op's kernels are compiled by
Inductor while it compiles the graph, where no reference result can stand in; so an op called
with ``fallback=True`` is never decomposed and keeps its run-time fallback under ``torch.compile``
and in an AOTInductor package, as before. With ``backend='triton'`` (``fallback=False``) a kernel
that does not compile for the GPU makes ``torch.compile`` / ``aoti_compile_and_package`` fail
with Triton's error, where eager mode would raise it at the first launch.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import threading
from typing import Any, Callable, Dict, Iterator, Sequence, Tuple

import torch

import triton
from triton.runtime.autotuner import Heuristics

from . import aot

__all__ = ["fused_op", "kernels_of", "active", "launch_in_graph", "decomposes"]

_STATE = threading.local()


def active() -> bool:
    """Whether a fused op's body is being traced for Inductor in this thread (launches then go
    into the graph through ``wrap_triton`` instead of running)."""
    return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _decomposition_allowed() -> bool:
    """False while torch.export traces (the exported program keeps the op as one node, as for any
    ``triton_op``) and where ``ATTNZOO_INDUCTOR_KERNELS=0`` keeps every op opaque."""
    if os.environ.get("ATTNZOO_INDUCTOR_KERNELS", "1").strip() == "0":
        return False
    try:
        from torch.export._trace import custom_triton_ops_decomposition_disabled
    except ImportError:
        return bool(getattr(torch._functorch.config, "decompose_custom_triton_ops", True))
    return not custom_triton_ops_decomposition_disabled()


def _symbolic(t: torch.Tensor) -> bool:
    return any(not isinstance(n, int) for n in (*t.shape, *t.stride()))


def decomposes(compiled: bool, tensors: Sequence[Any], fallback: bool, size_dynamic: bool = True) -> bool:
    """The rule: Inductor sees the kernels of a call when every tensor is on CUDA, the kernels
    were built for the compiler (``compiled``: not Triton's interpreter), the call has no
    run-time fallback to honour, and its sizes are plain ints unless the op's host code takes
    symbolic sizes without deciding anything on them (``size_dynamic``)."""
    present = [t for t in tensors if isinstance(t, torch.Tensor)]
    return (compiled and not fallback and bool(present) and all(t.device.type == "cuda" for t in present)
            and (size_dynamic or not any(_symbolic(t) for t in present)) and _decomposition_allowed())


def _shape_env(tensors: Sequence[Any]):
    for t in tensors:
        if isinstance(t, torch.Tensor):
            for n in (*t.shape, *t.stride()):
                if isinstance(n, torch.SymInt):
                    return n.node.shape_env
    return None


def _aot_compilation() -> bool:
    try:
        from torch._inductor.virtualized import V

        return bool(V.aot_compilation)
    except (ImportError, AttributeError):
        return False


def kernels_of(module) -> list:
    """The ``triton.jit`` functions defined in an op's kernel module (``<op>/triton.py``); none
    when it was built for Triton's interpreter."""
    return [v for v in vars(module).values() if isinstance(v, triton.JITFunction)]


def fused_op(name: str, *, compiled: bool, kernels: Sequence[Any],
             size_dynamic: bool = False) -> Callable[[Callable], Any]:
    """Decorator: the function becomes the ``torch.library.triton_op`` ``name`` (schema from its
    annotations, no mutated arguments; it must take ``fallback: bool`` last). ``compiled``:
    whether the op's kernels were built for the compiler; ``kernels``: every kernel its body may
    launch (their sources key AOTAutograd's cache, which hashes the graph before the op is
    decomposed); ``size_dynamic``: the host code computes its launches from symbolic sizes
    without a Python decision on them (no shape guard), so it may be traced size-dynamic.
    Register the fake implementation and the autograd formula on the result, as for
    ``torch.library.custom_op``."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def wrap(fn: Callable) -> Any:
        signature = inspect.signature(fn)
        op = torch.library.triton_op(name, mutates_args=())(fn)
        registry = getattr(torch._library.triton, "triton_ops_to_kernels", None)
        if registry is not None:
            known = registry.setdefault(name, [])
            known.extend(aot.unwrap(k) for k in kernels if all(aot.unwrap(k) is not j for j in known))

        def decompose(mode, func, types, args, kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = list(bound.arguments.values())
            if not decomposes(compiled, values, bool(bound.arguments["fallback"]), size_dynamic):
                return mode.__torch_dispatch__(func, types, args, kwargs)  # one opaque node
            plain = (torch.Tensor, torch._subclasses.functional_tensor.FunctionalTensor)
            if any(t not in plain and not issubclass(t, torch._subclasses.FakeTensor) for t in types):
                return NotImplemented  # another tensor subclass: let it handle the op
            shape_env = _shape_env(values)
            known = dict(shape_env.replacements) if shape_env is not None else {}
            with mode, _tracing():
                result = fn(*args, **kwargs)
            pinned = {str(k): str(v) for k, v in (shape_env.replacements.items() if shape_env is not None else ())
                      if k not in known and getattr(v, "is_number", False)}
            if pinned and _aot_compilation():
                # torch.compile re-checks its guards at every call (a new size recompiles); an
                # AOTInductor package does not
                raise RuntimeError(
                    f"{name}: its host code pinned symbolic sizes to the example's ({pinned}) while "
                    "AOTInductor traced it; the package would run those sizes' launches at every size. "
                    "Export with a static size, or with backend='reference'.")
            return result

        # replaces triton_op's rule (decompose always, except under torch.export) with ours
        op.register_torch_dispatch(FunctionalTensorMode, decompose)
        return op

    return wrap


# --- one launch, as a graph node -------------------------------------------------------------------

_KERNELS: Dict[tuple, Any] = {}


def _config_kernel(jit, meta: Dict[str, Any], num_warps: int, num_stages: int):
    """``jit`` behind a one-config ``triton.autotune``: how a launch's meta-parameters, warps and
    stages reach Inductor (its user-kernel support takes them from an autotuner's configs).
    Cached, so that every launch of one config is one kernel in Inductor's side table."""
    key = (id(jit), tuple(sorted(meta.items())), num_warps, num_stages)
    kernel = _KERNELS.get(key)
    if kernel is None:
        config = triton.Config(dict(meta), num_warps=num_warps, num_stages=num_stages)
        kernel = _KERNELS[key] = triton.autotune(configs=[config], key=[])(jit)
    return kernel


def _heuristics(kernel, args: tuple, kwargs: dict, meta: dict) -> Tuple[Any, Dict[str, Any]]:
    """The JITFunction under ``kernel``'s ``triton.heuristics`` wrappers and the values those
    derive for this launch (outermost first, as Triton applies them)."""
    derived: Dict[str, Any] = {}
    while not isinstance(kernel, triton.JITFunction):
        if isinstance(kernel, Heuristics):
            named = dict(zip(kernel.arg_names, args), **kwargs, **meta)
            for name, rule in kernel.values.items():
                derived[name] = rule(dict(named, **derived))
        kernel = kernel.fn
    return kernel, derived


def launch_in_graph(kernel, grid: Callable[[dict], tuple], args: tuple, kwargs: dict, config: dict) -> None:
    """``launch.launch`` while a decomposed op is traced: records the launch of ``config`` as a
    ``triton_kernel_wrapper`` node (``torch.library.wrap_triton``)."""
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "_blocked")}
    jit, derived = _heuristics(kernel, args, kwargs, meta)
    meta.update(derived)
    wrapped = torch.library.wrap_triton(_config_kernel(jit, meta, config["num_warps"], config["num_stages"]))
    # the grid reads the launch's whole binding, as Triton hands it (launch.py)
    wrapped[tuple(grid(dict(zip(jit.arg_names, args), **kwargs, **meta)))](*args, **kwargs)
