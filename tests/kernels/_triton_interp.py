"""Shared by the Triton backend tests: import a kernel module so that it runs on this machine.

On a machine without CUDA the kernels run through Triton's interpreter, which Triton picks when
the kernels are decorated, i.e. when the module is first imported: ``TRITON_INTERPRET=1`` is set
while the module imports (and it is rebuilt with ``importlib.reload`` if an earlier import in this
process built it for the GPU). The environment is restored afterwards, so the rest of the session
keeps dispatching CPU calls to the reference; tests set the variable again around each call (the
dispatchers read it), e.g. with the ``interpreter_env`` fixture pattern of test_gna_triton.py.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def import_triton_backend(module_name: str):
    """``module_name`` (e.g. ``attnzoo.kernels.gna.triton``) built for the interpreter on CUDA-less
    machines; skips the calling test module when triton is not installed. The module must expose
    ``INTERPRETER`` (True when its kernels were decorated under the interpreter)."""
    pytest.importorskip("triton")
    saved = os.environ.get("TRITON_INTERPRET")
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module(module_name)
        if not CUDA and not module.INTERPRETER:
            # same module object after reload, so the dispatcher's loader sees the rebuilt kernels
            module = importlib.reload(module)
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
    assert CUDA or module.INTERPRETER, f"{module_name}: the kernels must run under the interpreter without CUDA"
    return module


def backend_env(monkeypatch: pytest.MonkeyPatch, autotune_variable: str) -> None:
    """The environment of one Triton backend test: without CUDA, the interpreter (the dispatchers
    then accept CPU tensors); on CUDA, autotuning off (``autotune_variable=0``: one default config
    per shape, since tuning compiles every config of every new shape, minutes per test file; each
    file's test_autotuned_launch_on_gpu covers the tuned path)."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.setenv(autotune_variable, "0")


def rel_error(got: torch.Tensor, want: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """``||got - want|| / scale`` in float64, ``scale = ||want||`` unless given (``||got - want||``
    when the scale is zero)."""
    want = want.double()
    scale = want.norm() if scale is None else scale
    diff = (got.double() - want).norm()
    return (diff / scale if scale > 0 else diff).item()
