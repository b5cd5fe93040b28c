"""Test-session rules for the markers declared in pyproject.toml.

* ``extended``: slow or exhaustive; skipped unless ``ATTNZOO_EXTENDED=1`` is set or the marker
  expression asks for them (``pytest -m extended``).
* ``gpu``: needs a CUDA device; skipped where ``torch.cuda.is_available()`` is False.

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


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    run_extended = _extended_requested(config)
    # Extended tests (every variant against timm, hypothesis sweeps, heavy checks of >100M-param
    # models) take minutes of CPU each beyond CI's budget on a 2-core machine: opt in to run them.
    skip_extended = pytest.mark.skip(reason="extended test: set ATTNZOO_EXTENDED=1 or run with -m extended")
    has_cuda = None
    for item in items:
        if not run_extended and item.get_closest_marker("extended") is not None:
            item.add_marker(skip_extended)
        if item.get_closest_marker("gpu") is not None:
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"))
