"""The one way the fused ops launch a kernel.

Every op's host code ends in ``launch(kernel, grid, args, kwargs, config, tuner=..., tune=...)``:
``config`` is the launch's untuned choice (meta-parameters plus ``num_warps`` / ``num_stages``),
``tuner`` the op's ``triton.autotune`` wrapper of the same kernel and ``tune`` whether this
problem goes through it. Inside ``aot.compile_session`` nothing runs: the kernel is compiled for
the session's target instead (``config``, and with ``all_configs`` every config the tuner's pruning
keeps), which is what makes the compile gate use the launch code itself. While Inductor traces a
fused op's body (``in_graph``), the launch of ``config`` becomes a node of its graph instead.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import triton

from . import aot, in_graph

__all__ = ["launch", "is_compiled"]


def is_compiled(kernel) -> bool:
    """Whether ``kernel`` was decorated for the compiler (not for Triton's interpreter, which
    ``TRITON_INTERPRET=1`` at decoration time selects and which takes no warps or stages)."""
    return isinstance(aot.unwrap(kernel), triton.JITFunction)


def launch(kernel, grid: Callable[[dict], tuple], args: tuple, kwargs: dict, config: dict,
           tuner: Optional[Any] = None, tune: bool = False) -> None:
    """Runs ``kernel`` over ``grid(meta)`` (or compiles it, in an ahead-of-time session).

    ``config`` may carry ``_blocked=True``: the op's fixed fast-path tiles, labelled so in the
    compile gate's table."""
    session = aot.current_session()
    if session is not None:
        session.launch(kernel, args, kwargs, config, tuner)
        return
    if in_graph.active():
        in_graph.launch_in_graph(kernel, grid, args, kwargs, config)
        return
    if tune and tuner is not None:
        tuner[grid](*args, **kwargs)
        return
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "_blocked")}
    extra = {} if not is_compiled(kernel) else dict(num_warps=config["num_warps"], num_stages=config["num_stages"])
    kernel[grid(meta)](*args, **kwargs, **meta, **extra)
