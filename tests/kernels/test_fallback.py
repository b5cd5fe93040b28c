"""backend=None never crashes on a kernel the device cannot build: the pattern falls back to the
reference with one warning; backend="triton" raises the kernel's error. Same under
torch.compile(fullgraph=True).

The failing kernel is injected: gna's launch config gets a BLOCK_M of 24 lanes, which Triton
refuses (tl.arange needs a power of two): a CompilationError on a GPU, an InterpreterError under
Triton's interpreter (how this runs on a CPU).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from ._triton_interp import DEVICE, backend_env, import_triton_backend

triton_backend = import_triton_backend("attnzoo.kernels.gna.triton")
pytestmark = pytest.mark.interpreter

from attnzoo.kernels import gna, gna_reference  # noqa: E402
from attnzoo.kernels._triton import fallback  # noqa: E402
from attnzoo.kernels.gna import _autotune  # noqa: E402


@pytest.fixture
def broken_kernel(monkeypatch):
    """gna's kernels launched with an impossible tile, and no pattern remembered as failed."""
    backend_env(monkeypatch, "ATTNZOO_GNA_AUTOTUNE")
    monkeypatch.delenv("ATTNZOO_BACKEND", raising=False)
    monkeypatch.setattr(fallback, "_FAILED", {})
    # the interpreter's per-rank tile (passed by gna's launch) and every kernel space's untuned default
    monkeypatch.setattr(_autotune, "interpreter_config",
                        lambda *a, _f=_autotune.interpreter_config, **kw: dict(_f(*a, **kw), BLOCK_M=24))
    for space in _autotune.SPACES.values():
        monkeypatch.setattr(space, "default_config", lambda args, _f=space.default_config: dict(_f(args), BLOCK_M=24))


def _inputs(seed: int, size=(6, 7)):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, *size, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    rpb = (0.5 * torch.randn(2, 5, 5, generator=g)).to(DEVICE).requires_grad_()
    grad = torch.randn(2, *size, 2, 16, generator=g).to(DEVICE)
    return q, k, v, rpb, grad


def _reference(q, k, v, rpb, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    out = gna_reference(*leaves[:3], 3, rpb=leaves[3])
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


def _kernel_warnings(caught):
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and "Triton kernels of gna" in str(w.message)]


def test_backend_none_falls_back_to_the_reference_with_one_warning(broken_kernel):
    q, k, v, rpb, grad = _inputs(0)
    want, want_grads = _reference(q, k, v, rpb, grad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = gna(q, k, v, 3, rpb=rpb)
        out.backward(grad)
        again = gna(q, k, v, 3, rpb=rpb)  # remembered: no second attempt, no second warning
    messages = _kernel_warnings(caught)
    assert len(messages) == 1, [str(w.message) for w in caught]
    text = str(messages[0].message)
    assert "(2, 6, 7, 2, 16)" in text and "Error" in text and "reference" in text  # the pattern and the error
    torch.testing.assert_close(out.detach(), want, rtol=0, atol=0)
    torch.testing.assert_close(again.detach(), want, rtol=0, atol=0)
    for got, expected in zip((q.grad, k.grad, v.grad, rpb.grad), want_grads):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert len(fallback.failed_patterns()) == 1


def test_explicit_triton_raises_the_kernel_error(broken_kernel):
    q, k, v, rpb, _ = _inputs(1)
    with pytest.raises(fallback.KERNEL_ERRORS):
        gna(q, k, v, 3, rpb=rpb, backend="triton")
    assert not fallback.failed_patterns()  # an explicit backend never records a fallback


def test_fallback_holds_under_compile_fullgraph(broken_kernel):
    q, k, v, rpb, grad = _inputs(2, size=(5, 9))
    want, want_grads = _reference(q, k, v, rpb, grad)

    def run(q, k, v, rpb):
        return gna(q, k, v, 3, rpb=rpb)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(q, k, v, rpb)
        out.backward(grad)
    assert len(_kernel_warnings(caught)) == 1
    torch.testing.assert_close(out.detach(), want, rtol=0, atol=0)
    for got, expected in zip((q.grad, k.grad, v.grad, rpb.grad), want_grads):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)

    def explicit(q, k, v, rpb):
        return gna(q, k, v, 3, rpb=rpb, backend="triton")

    with pytest.raises(Exception) as info:  # raised from inside the compiled graph's op
        torch.compile(explicit, fullgraph=True, backend="aot_eager")(*(t.detach() for t in (q, k, v, rpb)))
    assert "power of 2" in str(info.value) or isinstance(info.value, fallback.KERNEL_ERRORS)
