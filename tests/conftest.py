"""Test-session rules for the markers declared in pyproject.toml.

* ``extended``: slow or exhaustive; skipped unless ``ATTNZOO_EXTENDED=1`` is set or the marker
  expression asks for them (``pytest -m extended``).
* ``gpu``: needs a CUDA device; skipped where ``torch.cuda.is_available()`` is False, and in an
  interpreter process (below), whose kernels are built for Triton's interpreter.
* ``interpreter``: runs the fused Triton kernels, which on a machine without CUDA means Triton's
  interpreter. Triton chooses it when a kernel is decorated, so these tests run in a process of
  their own, started with ``TRITON_INTERPRET=1`` before triton, torch or attnzoo are imported
  (``make test``'s second pytest run). A process started with ``TRITON_INTERPRET=1`` runs only
  them (the others are deselected: they ran in the first); a process without it, on a machine
  without CUDA, skips them with that reason. On CUDA they run in the first process too, compiled.

Tests seed themselves; there is no session-wide seeding fixture.
"""
from __future__ import annotations

import os
import re

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one intra-op thread per xdist worker: `make test` runs one worker per core, and small test
        # shapes gain nothing from a second thread that would compete with the other worker
        import torch

        torch.set_num_threads(1)


def _extended_requested(config: pytest.Config) -> bool:
    if os.environ.get("ATTNZOO_EXTENDED", "") == "1":
        return True
    markexpr = " ".join((config.getoption("markexpr", default="") or "").split())
    # `-m extended`, `-m "extended and not gpu"`, ... but not `-m "not extended"`.
    return re.search(r"(?<!not )\bextended\b", markexpr) is not None


def _interpreter_process() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    if _interpreter_process():
        others = [item for item in items if item.get_closest_marker("interpreter") is None]
        if others:
            config.hook.pytest_deselected(items=others)
            items[:] = [item for item in items if item.get_closest_marker("interpreter") is not None]
    run_extended = _extended_requested(config)
    # Extended tests (every variant against timm, hypothesis sweeps, heavy checks of >100M-param
    # models) take minutes of CPU each beyond CI's budget on a 2-core machine: opt in to run them.
    skip_extended = pytest.mark.skip(reason="extended test: set ATTNZOO_EXTENDED=1 or run with -m extended")
    has_cuda = None
    for item in items:
        if not run_extended and item.get_closest_marker("extended") is not None:
            item.add_marker(skip_extended)
        gpu = item.get_closest_marker("gpu") is not None
        if gpu and _interpreter_process():
            item.add_marker(pytest.mark.skip(reason="needs the compiled kernels; this process (TRITON_INTERPRET=1) "
                                                    "interprets them"))
        elif gpu or item.get_closest_marker("interpreter") is not None:
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if gpu and not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"))
            elif not has_cuda and not _interpreter_process():
                item.add_marker(pytest.mark.skip(
                    reason="runs in a process started with TRITON_INTERPRET=1 (make test's second pytest run; "
                           "by hand: TRITON_INTERPRET=1 pytest tests/kernels)"))
