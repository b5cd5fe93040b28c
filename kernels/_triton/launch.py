"""The one way the fused ops launch a kernel.

Every op's host code ends in ``launch(kernel, grid, args, kwargs, space=..., rows=...)``: ``space``
is the kernel's ``autotune.Space`` and ``rows`` the problem's size (batch * heads * positions),
which decides whether this launch goes through the tuner. Without tuning the launch takes the
space's untuned default (or, under Triton's interpreter, its fixed config), unless the op passes
a ``config`` of its own (gna's blocked fast path). ``grid(meta)`` receives the launch's whole
binding, meta-parameters included, also those a ``triton.heuristics`` wrapper derives from the
chosen config (routed's and halo's packing), so a grid reads the packing instead of recomputing
it. Inside ``aot.compile_session`` nothing runs: the kernel is compiled for the session's target
instead (the config, and with ``all_configs`` every config the tuner's pruning keeps), which is
what makes the compile gate use the launch code itself. While Inductor traces a fused op's body
(``in_graph``), the launch of the config becomes a node of its graph instead.
"""
from __future__ import annotations

from typing import Callable, Optional

import triton

from . import aot, in_graph

__all__ = ["launch", "is_compiled"]


def is_compiled(kernel) -> bool:
    """Whether ``kernel`` was decorated for the compiler (not for Triton's interpreter, which
    ``TRITON_INTERPRET=1`` at decoration time selects and which takes no warps or stages)."""
    return isinstance(aot.unwrap(kernel), triton.JITFunction)


def launch(kernel, grid: Callable[[dict], tuple], args: tuple, kwargs: dict, config: Optional[dict] = None,
           space=None, rows: int = 0) -> None:
    """Runs ``kernel`` over ``grid(meta)`` (or compiles it, in an ahead-of-time session).

    ``config`` (meta-parameters plus ``num_warps`` / ``num_stages``) fixes the launch's config and
    skips tuning; it may carry ``_blocked=True``: the op's fixed fast-path tiles, labelled so in
    the compile gate's table. Without it ``space`` chooses."""
    compiled = is_compiled(kernel)
    tuner = space.tuner(kernel) if space is not None and config is None and compiled else None
    if config is None:
        config = space.default_config(kwargs) if compiled else space.interpreter_config(kwargs)
    session = aot.current_session()
    if session is not None:
        session.launch(kernel, args, kwargs, config, tuner)
        return
    if in_graph.active():
        in_graph.launch_in_graph(kernel, grid, args, kwargs, config)
        return
    if tuner is not None and space.should_tune(rows):
        tuner[grid](*args, **kwargs)
        return
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "_blocked")}
    extra = dict(num_warps=config["num_warps"], num_stages=config["num_stages"]) if compiled else {}
    kernel[grid](*args, **kwargs, **meta, **extra)
