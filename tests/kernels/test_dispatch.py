"""The dispatch rule of attnzoo ops (``attnzoo.kernels._dispatch``), through gna and a fresh Op."""
from __future__ import annotations

import logging

import pytest
import torch

from attnzoo.kernels import BackendUnavailableError, default_backend, gna, gna_reference
from attnzoo.kernels._dispatch import Op
from attnzoo.kernels.gna import gna_op
from attnzoo.kernels.gna._params import check_gna_inputs

ENV = "ATTNZOO_BACKEND"


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Each test starts without a process-wide default; a test that needs one sets it."""
    monkeypatch.delenv(ENV, raising=False)


def _inputs(seed: int = 0):
    torch.manual_seed(seed)
    q = torch.randn(2, 7, 6, 2, 4)
    k = torch.randn(2, 7, 6, 2, 4)
    v = torch.randn(2, 7, 6, 2, 3)
    return q, k, v


# --- gna ---------------------------------------------------------------------------------------

def test_default_backend_on_cpu_is_reference():
    q, k, v = _inputs()
    params, scale = check_gna_inputs(q, k, v, 3, 1, 2, False, None, None)
    assert default_backend() is None
    assert gna_op.select(None, q, k, v, params, None, scale) is gna_op.reference
    torch.testing.assert_close(gna(q, k, v, 3, dilation=2), gna_reference(q, k, v, 3, dilation=2), rtol=0, atol=0)


def test_explicit_reference():
    q, k, v = _inputs()
    out = gna(q, k, v, (3, 2), stride=(2, 1), backend="reference")
    torch.testing.assert_close(out, gna_reference(q, k, v, (3, 2), stride=(2, 1)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cuda", "Reference", "", 1])
def test_unknown_backend_raises(backend):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="^backend"):
        gna(q, k, v, 3, backend=backend)


def test_triton_on_cpu_raises_with_reason():
    q, k, v = _inputs()
    with pytest.raises(BackendUnavailableError, match="triton") as info:
        gna(q, k, v, 3, backend="triton")
    assert "cannot run these inputs" in str(info.value)
    if "triton" not in gna_op.backends:
        assert "gna has no 'triton' backend" in str(info.value)


def test_env_reference(monkeypatch):
    monkeypatch.setenv(ENV, "reference")
    assert default_backend() == "reference"
    q, k, v = _inputs()
    torch.testing.assert_close(gna(q, k, v, 3), gna_reference(q, k, v, 3), rtol=0, atol=0)


def test_env_triton_is_explicit(monkeypatch):
    monkeypatch.setenv(ENV, "triton")
    q, k, v = _inputs()
    with pytest.raises(BackendUnavailableError, match="triton"):
        gna(q, k, v, 3)
    # an argument still overrides the process-wide default
    torch.testing.assert_close(gna(q, k, v, 3, backend="reference"), gna_reference(q, k, v, 3), rtol=0, atol=0)


@pytest.mark.parametrize("value", ["cuda", "TRITON", "reference,triton"])
def test_env_invalid_raises(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=ENV):
        gna(q, k, v, 3)


def test_env_empty_is_unset(monkeypatch):
    monkeypatch.setenv(ENV, "  ")
    assert default_backend() is None
    q, k, v = _inputs()
    gna(q, k, v, 3)


# --- the Op class, with a fake backend on a fresh Op ---------------------------------------------

def _reference(x):
    return ("reference", x)


def _fake(x):
    return ("fake", x)


def _op_with_fake(check):
    loads = []

    def load():
        loads.append(1)
        return _fake

    op = Op("toy", _reference)
    op.register("triton", load, check)
    return op, loads


def test_refusing_backend_falls_back_and_logs(caplog):
    op, loads = _op_with_fake(lambda x: None if x > 0 else f"x must be positive, got {x}")
    assert op.backends == ("reference", "triton")
    with caplog.at_level(logging.DEBUG, logger="attnzoo.kernels"):
        impl = op.select(None, -1)
    assert impl is _reference
    assert loads == []  # a refused backend is never loaded
    messages = [r.getMessage() for r in caplog.records if r.name == "attnzoo.kernels"]
    assert any("toy" in m and "triton" in m and "x must be positive, got -1" in m for m in messages), messages


def test_refusing_backend_named_explicitly_raises():
    op, _ = _op_with_fake(lambda x: "never today")
    assert op.why_not("triton", 1) == "never today"
    with pytest.raises(BackendUnavailableError, match="never today"):
        op.select("triton", 1)


def test_accepting_backend_is_used_and_loaded_once():
    op, loads = _op_with_fake(lambda x: None)
    assert op.select(None, 1) is _fake
    assert op.select("triton", 1) is _fake
    assert op.select("reference", 1) is _reference
    assert loads == [1]


def test_env_selects_registered_backend(monkeypatch):
    op, _ = _op_with_fake(lambda x: None)
    monkeypatch.setenv(ENV, "reference")
    assert op.select(None, 1) is _reference
    monkeypatch.setenv(ENV, "triton")
    assert op.select(None, 1) is _fake


def test_register_rejects_unknown_names():
    op = Op("toy", _reference)
    for name in ("reference", "cuda"):
        with pytest.raises(ValueError, match="backend name"):
            op.register(name, lambda: _fake, lambda *a: None)
    assert op.backends == ("reference",)
