"""Values shared by the calls of one trace (``torch.export``, ``make_fx``) that have the same
symbolic sizes: the index plans, masks and tables that ops and mixers compute in the graph from
symbolic sizes are equal for every block of a stage, and building them again in each block is what
made tracing slow (torch reasons about the symbolic shape of every op).

``trace_cached(key, build)`` returns what ``build()`` returned for ``key`` earlier in the same
trace; outside a trace (eager, or tracing modes without a proxy mode) it just calls ``build()``.
Entries belong to the trace's proxy mode (held weakly), so a value made in one trace never
reaches another."""
from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode

__all__ = ["trace_cached", "size_key"]

_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def size_key(n) -> Hashable:
    """A hashable key for an int or a symbolic size (its expression)."""
    return n.node.expr if isinstance(n, torch.SymInt) else n


def trace_cached(key: Hashable, build: Callable[[], Any]) -> Any:
    mode = get_proxy_mode()
    if mode is None:
        return build()
    cache = _CACHES.setdefault(mode, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]
