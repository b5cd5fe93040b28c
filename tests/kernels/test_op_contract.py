"""Every registered op keeps the contract of an op folder (``attnzoo.kernels`` docstring), so a new
op that forgets a piece fails here, not in a user's model. Walks ``attnzoo.kernels.OPS``; nothing
runs a kernel (the kernel modules are imported, which needs triton but no GPU)."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import attnzoo.kernels as kernels
from attnzoo.kernels._dispatch import Op

OPS = sorted(kernels.OPS)
FUSED = [name for name in OPS if "triton" in kernels.OPS[name].backends]


def _package(name: str):
    return importlib.import_module(f"attnzoo.kernels.{name}")


def _imports(path: Path) -> set:
    """The modules ``path`` imports relatively, as ``.x`` names (``from . import x`` counts as ``.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add("." + node.module)
            else:
                found.update("." + alias.name for alias in node.names)
    return found


def test_every_fused_op_is_registered():
    assert set(FUSED) >= {"gna", "halo_attention", "routed_attention", "aggregated_attention"}


@pytest.mark.parametrize("name", OPS)
def test_op_folder(name):
    """``reference.py``, ``_params.py`` and an ``__init__`` exporting ``<folder>_op`` (the Op of
    that name), ``<op>_reference`` (the reference function) and the public function (the one
    taking ``backend=``, listed in ``attnzoo.kernels.__all__``)."""
    op = kernels.OPS[name]
    assert isinstance(op, Op) and op.name == name and callable(op.reference)
    package = _package(name)
    folder = Path(package.__file__).parent
    for file in ("reference.py", "_params.py"):
        assert (folder / file).is_file(), f"kernels/{name}/ has no {file}"
    assert getattr(package, f"{name}_op", None) is op, f"attnzoo.kernels.{name} must export {name}_op"
    public = [n for n in package.__all__
              if callable(getattr(package, n)) and "backend" in inspect.signature(getattr(package, n)).parameters]
    assert public, f"attnzoo.kernels.{name} exports no public function with a backend= argument"
    assert all(n in kernels.__all__ for n in public), f"{public} must be in attnzoo.kernels.__all__"
    assert any(n.endswith("_reference") and n in kernels.__all__ for n in package.__all__), \
        f"attnzoo.kernels.{name} must export its reference function"


@pytest.mark.parametrize("name", FUSED)
def test_fused_op_kernels(name):
    """``triton.py``: ``can_run_triton`` (the dispatcher's arguments), ``step_launches`` (the same
    plus ``backward``; the compile gate and the compile probe call it), ``INTERPRETER``; it never
    imports ``_library`` (imports run one way)."""
    pytest.importorskip("triton")
    op = kernels.OPS[name]
    module = op.triton_kernels()
    assert module.__name__ == f"attnzoo.kernels.{name}.triton"
    assert isinstance(module.INTERPRETER, bool)
    check = inspect.signature(module.can_run_triton).parameters
    steps = inspect.signature(module.step_launches).parameters
    assert list(steps) == list(check) + ["backward"], "step_launches takes can_run_triton's arguments + backward"
    assert "._library" not in _imports(Path(module.__file__)), "triton.py must not import _library (an import circle)"


@pytest.mark.parametrize("name", FUSED)
def test_fused_op_library(name):
    """``_library.py``: the entry the dispatcher runs takes the dispatcher's arguments plus
    ``fallback=``, and the custom ops go through ``_triton.fallback.run_or_fall_back`` (a kernel
    the device cannot build falls back to the reference under ``backend=None``)."""
    pytest.importorskip("triton")
    from attnzoo.kernels._triton import fallback

    op = kernels.OPS[name]
    library = importlib.import_module(f"attnzoo.kernels.{name}._library")
    entry = op._backends["triton"].impl()
    assert entry.__module__ == library.__name__ and entry.__name__ in library.__all__
    parameters = inspect.signature(entry).parameters
    assert "fallback" in parameters and parameters["fallback"].default is False
    check = inspect.signature(op.triton_kernels().can_run_triton).parameters
    assert [p for p in parameters if p != "fallback"] == list(check), "entry and can_run_triton take the same arguments"
    assert library.run_or_fall_back is fallback.run_or_fall_back
    assert ".triton" in _imports(Path(library.__file__))


@pytest.mark.parametrize("name", FUSED)
def test_fused_op_bench_case_module(name):
    """The case module ``attnzoo bench-ops`` drives (tools/bench_ops.py's interface), named by the
    op's registration."""
    op = kernels.OPS[name]
    assert op.bench, f"{name} registers its Triton backend without a bench= case module"
    cases = importlib.import_module(op.bench)
    assert cases.OP == name and cases.BACKENDS and cases.BACKENDS[0] == "triton"
    assert cases.CASES and cases.SMALL_CASES
    for function in ("runner", "min_bytes", "attention_flops"):
        assert callable(getattr(cases, function, None)), f"{op.bench} has no {function}()"


def test_a_forgotten_piece_fails(monkeypatch):
    """The checks bite: an op whose kernel module lost ``step_launches`` fails the kernel check."""
    pytest.importorskip("triton")
    module = kernels.OPS["gna"].triton_kernels()
    monkeypatch.delattr(module, "step_launches")
    with pytest.raises(AttributeError):
        test_fused_op_kernels("gna")
