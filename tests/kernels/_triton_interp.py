"""Shared by the Triton backend tests (the ``interpreter``-marked test files).

On a machine without CUDA the kernels run through Triton's interpreter, which Triton picks when
the kernels are decorated. So those tests run in a process of their own, started with
``TRITON_INTERPRET=1`` in its environment before triton, torch or attnzoo are imported
(``make test``'s second pytest run; by hand: ``TRITON_INTERPRET=1 pytest tests/kernels``, see
tests/conftest.py). No module is ever rebuilt: a process either interprets every kernel or none.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence

import pytest
import torch

INTERPRETER = os.environ.get("TRITON_INTERPRET", "") == "1"
"""This process was started for Triton's interpreter: kernels run on the CPU, on CPU tensors."""
CUDA = torch.cuda.is_available() and not INTERPRETER
DEVICE = "cuda" if CUDA else "cpu"


def import_triton_backend(module_name: str):
    """``module_name`` (e.g. ``attnzoo.kernels.gna.triton``); skips the calling test module when
    triton is not installed. In an interpreter process its kernels must have been built for the
    interpreter (``INTERPRETER``), which they are unless something imported them before the
    variable was set."""
    pytest.importorskip("triton")
    import importlib

    module = importlib.import_module(module_name)
    if INTERPRETER and not module.INTERPRETER:
        raise RuntimeError(f"{module_name} was imported before TRITON_INTERPRET=1 was set in this process")
    return module


def backend_env(monkeypatch: pytest.MonkeyPatch, autotune_variable: str) -> None:
    """The environment of one Triton backend test: on CUDA, autotuning off
    (``autotune_variable=0``: one default config per shape, since tuning compiles every config of
    every new shape, minutes per test file; each file's test_autotuned_launch_on_gpu covers the
    tuned path). Under the interpreter the process environment already holds ``TRITON_INTERPRET=1``,
    which is what makes the dispatchers accept CPU tensors."""
    if CUDA:
        monkeypatch.setenv(autotune_variable, "0")


def backend_env_fixture(autotune_variable: str):
    """An autouse fixture applying ``backend_env(monkeypatch, autotune_variable)`` to every test of
    the module that binds it to a module-level name (``_backend_env = backend_env_fixture(...)``)."""

    @pytest.fixture(autouse=True)
    def _backend_env(monkeypatch):
        backend_env(monkeypatch, autotune_variable)

    return _backend_env


def rel_error(got: torch.Tensor, want: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """``||got - want|| / scale`` in float64, ``scale = ||want||`` unless given (``||got - want||``
    when the scale is zero)."""
    want = want.double()
    scale = want.norm() if scale is None else scale
    diff = (got.double() - want).norm()
    return (diff / scale if scale > 0 else diff).item()


def assert_within(case, dtype: torch.dtype, errors: dict, out_tol: float, grad_tol: float,
                  bounds: Optional[Mapping[str, float]] = None) -> dict:
    """Asserts each relative error of ``errors`` (name -> error) within its bound: ``out_tol`` for
    ``"out"``, ``grad_tol`` for every gradient unless ``bounds`` names it; returns ``errors``. A NaN
    error fails. The message names the case, the dtype and the errors above their bounds."""
    bound = dict.fromkeys(errors, grad_tol)
    bound["out"] = out_tol
    bound.update(bounds or {})
    bad = {n: f"{e:.2e}" for n, e in errors.items() if not e <= bound[n]}
    assert not bad, f"{case} {dtype}: relative error above ({out_tol}, {grad_tol}): {bad}"
    return errors


# --- dispatch checks every backend file makes --------------------------------------------------


def check_cpu_without_interpreter_picks_the_reference(monkeypatch: pytest.MonkeyPatch, op, args: tuple,
                                                      call_triton: Callable[[], object]) -> None:
    """With ``TRITON_INTERPRET`` and ``ATTNZOO_BACKEND`` unset, ``op`` on the CPU dispatch
    arguments ``args`` selects its reference, ``why_not("triton")`` names CUDA, and
    ``call_triton()`` (the public call with ``backend="triton"``) raises saying so."""
    from attnzoo.kernels import BackendUnavailableError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("ATTNZOO_BACKEND", raising=False)
    assert op.select(None, *args) is op.reference
    reason = op.why_not("triton", *args)
    assert reason is not None and "CUDA" in reason
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        call_triton()


def check_backend_none_picks_triton(monkeypatch: pytest.MonkeyPatch, op, args: tuple, triton_func) -> None:
    """With ``ATTNZOO_BACKEND`` unset, ``op.select(None, *args)`` is ``triton_func`` with
    ``fallback=True``: a kernel that cannot run on the device gives the reference."""
    monkeypatch.delenv("ATTNZOO_BACKEND", raising=False)
    chosen = op.select(None, *args)
    assert chosen.func is triton_func and chosen.keywords == {"fallback": True}



def check_compiles_and_exports_as_one_node(run: Callable, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor,
                                           fwd_op) -> list:
    """``torch.compile(run, fullgraph=True)`` (aot_eager) gives the output and the gradient of
    every one of ``inputs`` of eager ``run`` (relative error <= 1e-6); ``torch.export`` of a module
    calling ``run`` records ``fwd_op`` (the op's forward custom op) exactly once and runs as
    ``run`` does. Returns the exported graph's call targets, for the op's own checks on them."""
    results = []
    for fn in (torch.compile(run, fullgraph=True, backend="aot_eager"), run):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(grad_out)
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        assert rel_error(got, want) <= 1e-6

    class Mixer(torch.nn.Module):
        def forward(self, *tensors):
            return run(*tensors)

    program = torch.export.export(Mixer(), tuple(inputs))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(fwd_op) == 1
    assert rel_error(program.module()(*inputs), run(*inputs)) <= 1e-6
    return targets



def _raising(message: str):
    def fail(*args, **kwargs):
        raise AssertionError(message)

    return fail


def forbid_reference(monkeypatch: pytest.MonkeyPatch, owner, *names: str) -> None:
    """Replaces each attribute ``names`` of ``owner`` (the op's reference functions) by one that
    fails the test: the Triton backend must not run the reference anywhere (e.g. its backward)."""
    fail = _raising("the reference ran inside the triton backend")
    for name in names:
        monkeypatch.setattr(owner, name, fail)


def forbid_kernel_launch(monkeypatch: pytest.MonkeyPatch, triton_backend) -> None:
    """Makes any kernel launch of ``triton_backend`` (its ``_Launch.launch``) fail the test."""
    monkeypatch.setattr(triton_backend._Launch, "launch", _raising("a kernel was launched for an empty batch"))


# --- the tests every backend file runs the same way, built from its compare and case tables -------
# ``compare(case, dtype, seed)``: the file's Triton-vs-float64-reference check (asserts the bounds).
# Bind the returned functions to module-level names ``test_...`` (the names below) for pytest.


def _seed(name: str) -> int:
    return sum(map(ord, name))


def small_case_tests(compare: Callable, cases: Mapping, fp16_cases: Sequence[str]):
    """``(test_matches_reference_fp32, test_matches_reference_fp16)``: every case of ``cases`` in
    float32, those named in ``fp16_cases`` in float16, each seeded by its name."""

    @pytest.mark.parametrize("name", list(cases))
    def test_matches_reference_fp32(name):
        compare(cases[name], torch.float32, seed=_seed(name))

    @pytest.mark.parametrize("name", list(fp16_cases))
    def test_matches_reference_fp16(name):
        compare(cases[name], torch.float16, seed=_seed(name))

    return test_matches_reference_fp32, test_matches_reference_fp16


def gpu_tests(compare: Callable, gpu_cases: Mapping, small_cases: Mapping, bf16_small_cases: Sequence[str], *,
              autotune_variable: str, autotune_spaces: Mapping, autotuned_case, autotuned_size: int):
    """``(test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu)``, all
    marked ``gpu``: every case of ``gpu_cases`` in float32, float16 and bfloat16 (seeded by name);
    ``autotuned_case`` in float16 with ``autotune_variable`` unset, after checking that its size
    (``autotuned_size``, the count the op's forward space is keyed on) reaches the autotuner; and
    the ``small_cases`` named in ``bf16_small_cases`` in bfloat16 (seed 5)."""

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
    @pytest.mark.parametrize("name", list(gpu_cases))
    def test_full_size_on_gpu(name, dtype):
        compare(gpu_cases[name], dtype, seed=_seed(name))

    @pytest.mark.gpu
    def test_autotuned_launch_on_gpu(monkeypatch):
        """Large enough to go through the autotuner (the forward space's size >= 2**18)."""
        monkeypatch.delenv(autotune_variable)
        assert autotune_spaces["fwd"].should_tune(autotuned_size)
        compare(autotuned_case, torch.float16, seed=1)

    @pytest.mark.gpu
    @pytest.mark.parametrize("name", list(bf16_small_cases))
    def test_small_cases_bf16_on_gpu(name):
        compare(small_cases[name], torch.bfloat16, seed=5)

    return test_full_size_on_gpu, test_autotuned_launch_on_gpu, test_small_cases_bf16_on_gpu
