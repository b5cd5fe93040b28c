"""The fused ops are ``torch.library.triton_op``s: on CUDA, the graph Inductor lowers (for
``torch.compile`` and AOTInductor) holds their Triton kernels, not a call back into Python
(``kernels/_triton/in_graph.py``).

No GPU is needed: the programs are traced on fake CUDA tensors, and AOTAutograd's
functionalisation (``aot_export_module``: what Inductor receives) runs with Triton's driver
standing in for an sm_90 GPU (``aot.py``'s driver, so that Triton can parse the kernels for
torch's mutation analysis). Checked for each of the four ops, with dynamic batch and size:

* ``torch.export`` keeps the op as one node (a serialisable program holds no Triton code);
* the functionalised graph holds ``triton_kernel_wrapper_functional`` nodes and no attnzoo op;
  the kernels write only their outputs (no input is cloned for them); the backward op
  decomposes too (joint graph);
* no shape guard comes from the host code: the program stays valid at every size export allowed;
* an op called with ``fallback=True`` (``backend=None``) stays one opaque node, and so does any
  op on CPU tensors (under Triton's interpreter: ``interpreter`` test at the end).

Before this (``torch.library.custom_op``), the functionalised graph held the attnzoo op itself,
which Inductor lowers as an extern call: in an AOTInductor package
``aoti_torch_proxy_executor_call_function`` into the op's Python body.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("triton")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.export import Dim  # noqa: E402

from attnzoo.kernels import aggregated_attention, gna, halo_attention, routed_attention  # noqa: E402

from ._triton_interp import INTERPRETER  # noqa: E402

import attnzoo.kernels.gna._library  # noqa: E402,F401  (registers the attnzoo ops)
import attnzoo.kernels.halo_attention._library  # noqa: E402,F401

WRAPPER = "triton_kernel_wrapper_functional"


@contextlib.contextmanager
def _sm90_driver():
    """Triton's active driver reports an sm_90 target (no GPU needed to parse a kernel)."""
    from triton.runtime import driver

    from attnzoo.kernels._triton import aot

    previous = getattr(driver, "_active", None)
    driver.set_active(aot._AOTDriver(aot.TARGETS["sm_90"]))
    try:
        yield
    finally:
        driver._active = previous


class _Call(torch.nn.Module):
    """One op call over (q, k, v) inputs and the op's small learned tensors as parameters (so that
    the joint graph has gradients to compute)."""

    def __init__(self, op: str, backend, params: dict):
        super().__init__()
        self.op, self.backend = op, backend
        self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})

    def forward(self, q, k, v):
        p, b = self.p, self.backend
        if self.op == "gna":
            out = gna(q, k, v, 3, rpb=p["rpb"], backend=b)
        elif self.op == "halo_attention":
            out = halo_attention(q, k, v, p["hr"], p["wr"], 2, 1, backend=b)
        elif self.op == "routed_attention":
            out = routed_attention(q, k, v, 2, 2, backend=b)
        else:
            n = q.shape[0]
            out = aggregated_attention(q, k, v, p["k_pool"].expand(n, -1, -1, -1), p["v_pool"].expand(n, -1, -1, -1),
                                       query_embedding=p["qe"], temperature=p["t"], window_size=3, backend=b)
        return (out * p["w"],)


class _Backward(_Call):
    """The op's backward op on the forward's outputs (gna and halo_attention)."""

    def forward(self, q, k, v):
        p = self.p
        if self.op == "gna":
            out, lse = torch.ops.attnzoo.gna_fwd(q, k, v, p["rpb"], [3, 3], [1, 1], [1, 1], [False, False], 0.25)
            grads = torch.ops.attnzoo.gna_bwd(out, q, k, v, p["rpb"], out, lse, [3, 3], [1, 1], [1, 1],
                                              [False, False], 0.25, True)
        else:
            out, lse = torch.ops.attnzoo.halo_fwd(q, k, v, p["hr"], p["wr"], 2, 1, 1, 0.25)
            grads = torch.ops.attnzoo.halo_bwd(out, q, k, v, p["hr"], p["wr"], out, lse, 2, 1, 1, 0.25)
        return tuple(grads)


def _params(op: str, heads: int, d: int, device: str = "cpu") -> dict:
    shapes = {"gna": dict(rpb=(heads, 5, 5)), "halo_attention": dict(hr=(7, d), wr=(7, d)), "routed_attention": {},
              "aggregated_attention": dict(k_pool=(1, 4, heads, d), v_pool=(1, 4, heads, d), qe=(heads, d), t=(heads,))}
    params = {k: torch.randn(*s, device=device) for k, s in shapes[op].items()}
    params["w"] = torch.randn(d, device=device)
    return params


OPS = ("gna", "halo_attention", "routed_attention", "aggregated_attention")


def _trace(op: str, backend, dynamic: bool = True, bwd: bool = False):
    """(exported program, functionalised graph module, guards the functionalisation added), for
    fake CUDA inputs, with a dynamic batch, height and width (or the example's only). ``bwd``:
    the op's backward op called directly (AOTAutograd's joint graph would run autograd's engine,
    which needs a CUDA device)."""
    from torch._functorch.aot_autograd import aot_export_module

    heads, d = 2, 16
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode:
        model = (_Backward if bwd else _Call)(op, backend, _params(op, heads, d, "cuda"))
        q, k, v = (torch.randn(2, 8, 8, heads, d, device="cuda") for _ in range(3))
    batch, h, w = Dim("batch", max=1024), 2 * Dim("h2", min=2, max=256), 2 * Dim("w2", min=2, max=256)
    spec = {0: batch, 1: h, 2: w}
    program = torch.export.export(model, (q, k, v), dynamic_shapes=(spec, spec, spec) if dynamic else None)
    module, inputs = _fake_module(program)
    shape_env = inputs[0].fake_mode.shape_env
    before = len(shape_env.guards)
    with _sm90_driver():
        gm, _ = aot_export_module(module, inputs, trace_joint=False)
    return program, gm, [str(g.expr) for g in shape_env.guards[before:]]


def _fake_module(program):
    """``program.module()`` with its parameters and buffers and its inputs as the export's fake
    tensors (one fake mode, sizes as the export's symbols)."""
    module = program.module()
    vals = {n.name: n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"}
    signature = program.graph_signature
    for placeholder, name in (*signature.inputs_to_parameters.items(), *signature.inputs_to_buffers.items()):
        owner, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner)
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(vals[placeholder], requires_grad=False)
        else:
            owner._buffers[leaf] = vals[placeholder]
    return module, [vals[n] for n in signature.user_inputs]


def _targets(graph) -> list:
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


COMPILED = pytest.mark.skipif(INTERPRETER, reason="the kernels of this process are built for Triton's interpreter")
SIZE_DYNAMIC = ("halo_attention",)  # host code that computes its launches from symbolic sizes without a guard


def _check_in_graph(program, gm, fwd_ops: int = 1, outputs_only: bool = True) -> None:
    exported = _targets(program.graph)
    assert sum(t.startswith("attnzoo.") for t in exported) == fwd_ops, exported  # export: the op, one node
    lowered = _targets(gm.graph)
    assert not [t for t in lowered if t.startswith("attnzoo.")], lowered
    launches = [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) == WRAPPER]
    assert launches, lowered
    for node in launches if outputs_only else ():
        # torch's mutation analysis read the kernels: only outputs are written, no input is cloned
        written = set(node.kwargs["tensors_to_clone"])
        assert written and not written & {"Q", "K", "V", "q", "k", "v"}, written


@COMPILED
@pytest.mark.parametrize("op", OPS)
def test_inductor_sees_the_kernels_on_cuda(op):
    program, gm, _ = _trace(op, "triton", dynamic=False)
    _check_in_graph(program, gm)


@COMPILED
@pytest.mark.parametrize("bwd", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("op", SIZE_DYNAMIC)
def test_size_dynamic_ops_add_no_guard(op, bwd):
    """Dynamic batch, height and width: the kernels are in the graph and no shape guard comes from
    the host code, so the program stays valid at every size the export allows."""
    program, gm, new_guards = _trace(op, "triton", dynamic=True, bwd=bwd)
    _check_in_graph(program, gm, fwd_ops=2 if bwd else 1, outputs_only=not bwd)
    assert not new_guards, new_guards


@COMPILED
@pytest.mark.parametrize("op", sorted(set(OPS) - set(SIZE_DYNAMIC)))
def test_symbolic_sizes_keep_the_other_ops_opaque(op):
    """gna, routed_attention and aggregated_attention decide on sizes in Python (autotune size
    buckets, search depths, cached plans): traced on symbolic sizes they stay one node, whose body
    runs at the real size, rather than a graph holding the example's decisions."""
    _, gm, new_guards = _trace(op, "triton", dynamic=True)
    lowered = _targets(gm.graph)
    assert any(t.startswith("attnzoo.") for t in lowered) and WRAPPER not in lowered, lowered
    assert not new_guards, new_guards


@COMPILED
def test_a_size_pinned_under_aot_compilation_fails_the_compilation(monkeypatch):
    """Were gna traced on symbolic sizes, its host code would pin the height and width to the
    example's (an autotune bucket from ``bit_length()``); under AOTInductor that raises, naming them."""
    from attnzoo.kernels._triton import in_graph

    rule = in_graph.decomposes
    monkeypatch.setattr(in_graph, "decomposes", lambda compiled, tensors, fallback, size_dynamic=True:
                        rule(compiled, tensors, fallback, True))
    monkeypatch.setattr(in_graph, "_aot_compilation", lambda: True)
    with pytest.raises(Exception, match="attnzoo::gna_fwd: its host code pinned symbolic sizes"):
        _trace("gna", "triton", dynamic=True)


@COMPILED
@pytest.mark.extended
def test_halonet_graph_for_a_size_dynamic_package():
    """az_halonet26t exported with a dynamic batch, height and width on the triton backend (fake
    CUDA): the graph AOTInductor would compile holds its three halo layers as kernels, no
    attnzoo op, no size pinned. About a minute and a half on a CPU."""
    import timm

    from attnzoo.kernels._triton import in_graph
    from attnzoo.tools import export as ex

    with FakeTensorMode(), torch.device("cuda"):
        model = _Tuple(timm.create_model("az_halonet26t", backend="triton").eval())
        x = torch.randn(2, 3, 96, 96)
    program = ex.trace(model, x, "batch,hw", "az_halonet26t")
    module, inputs = _fake_module(program)
    from torch._functorch.aot_autograd import aot_export_module

    aot = in_graph._aot_compilation
    in_graph._aot_compilation = lambda: True  # as under aoti_compile_and_package: a pinned size raises
    try:
        with _sm90_driver(), torch.no_grad():
            gm, _ = aot_export_module(module, inputs, trace_joint=False)
    finally:
        in_graph._aot_compilation = aot
    lowered = _targets(gm.graph)
    assert not [t for t in lowered if t.startswith("attnzoo.")] and lowered.count(WRAPPER) == 3, lowered


class _Tuple(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return (self.inner(x),)


@COMPILED
@pytest.mark.parametrize("op", ["gna", "halo_attention"])
def test_backward_ops_decompose_too(op):
    program, gm, _ = _trace(op, "triton", dynamic=False, bwd=True)
    # torch's mutation analysis counts inputs of both backward kernels as written, so Inductor
    # clones them (a copy per call, not a wrong result): every pointer of halo's backward, and Q, K
    # and RPB of gna's dq kernel since its steps moved into the shared @jit helpers (kernels/_triton/
    # flash.py; measured, not yet investigated). The forward kernels write only their outputs.
    _check_in_graph(program, gm, fwd_ops=2, outputs_only=False)
    assert _targets(gm.graph).count(WRAPPER) >= 2


@COMPILED
def test_fallback_calls_stay_opaque():
    """backend=None: the op may fall back to the reference at run time, which only its own body can
    do; Inductor gets the op as one node, as before."""
    _, gm, _ = _trace("halo_attention", None, dynamic=False)
    lowered = _targets(gm.graph)
    assert "attnzoo.halo_fwd.default" in lowered and WRAPPER not in lowered, lowered


FWD_KERNELS = {"gna": "_gna_fwd_kernel", "halo_attention": "_halo_fwd_kernel",
               "routed_attention": "_routed_fwd_kernel", "aggregated_attention": "_fwd_kernel"}


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
def test_inductor_compiles_the_kernels_on_a_gpu(op, monkeypatch):
    """On a GPU: torch.compile (Inductor) of a triton-backend call runs the op's forward kernel from
    Inductor's own generated code, and matches eager (same kernels and configs; the host code's
    PyTorch ops may be fused differently)."""
    from torch._inductor.utils import run_and_get_code

    for variable in ("GNA", "ROUTED", "AGGREGATED", "HALO"):
        monkeypatch.setenv(f"ATTNZOO_{variable}_AUTOTUNE", "0")
    torch.manual_seed(0)
    model = _Call(op, "triton", _params(op, 2, 16, "cuda"))
    q, k, v = (torch.randn(2, 8, 8, 2, 16, device="cuda") for _ in range(3))
    with torch.no_grad():
        (want,) = model(q, k, v)
        (got,), codes = run_and_get_code(torch.compile(model, fullgraph=True, dynamic=False), q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert any(FWD_KERNELS[op] in code for code in codes)
    assert not any("torch.ops.attnzoo" in code for code in codes)


def test_the_rule(monkeypatch):
    monkeypatch.delenv("ATTNZOO_INDUCTOR_KERNELS", raising=False)
    from attnzoo.kernels._triton.in_graph import decomposes

    with FakeTensorMode():
        cuda, cpu = torch.empty(2, device="cuda"), torch.empty(2)
    assert decomposes(True, [cuda, None, 3], fallback=False)
    assert not decomposes(True, [cuda], fallback=True)
    assert not decomposes(False, [cuda], fallback=False)  # interpreter-built kernels
    assert not decomposes(True, [cpu, cuda], fallback=False)
    from torch.export._trace import _disable_custom_triton_op_functional_decomposition

    with _disable_custom_triton_op_functional_decomposition():  # what torch.export does while tracing
        assert not decomposes(True, [cuda], fallback=False)


def test_the_switch(monkeypatch):
    from attnzoo.kernels._triton.in_graph import decomposes

    with FakeTensorMode():
        cuda = torch.empty(2, device="cuda")
    monkeypatch.setenv("ATTNZOO_INDUCTOR_KERNELS", "0")
    assert not decomposes(True, [cuda], fallback=False)


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERPRETER, reason="CPU tensors reach the Triton backend only under Triton's interpreter")
def test_cpu_calls_stay_opaque():
    """On CPU tensors (Triton's interpreter) the op stays one node: what Inductor compiles for the
    CPU calls the op's body, as before."""
    from torch._functorch.aot_autograd import aot_export_module

    model = _Call("halo_attention", "triton", _params("halo_attention", 2, 16))
    q, k, v = (torch.randn(1, 4, 4, 2, 16) for _ in range(3))
    gm, _ = aot_export_module(model, (q, k, v), trace_joint=False)
    lowered = _targets(gm.graph)
    assert "attnzoo.halo_fwd.default" in lowered and WRAPPER not in lowered, lowered


@pytest.mark.interpreter
@pytest.mark.extended
@pytest.mark.skipif(not INTERPRETER, reason="CPU tensors reach the Triton backend only under Triton's interpreter")
def test_an_opaque_op_is_a_python_call_in_an_aoti_package(tmp_path):
    """What an AOTInductor package does with an op Inductor does not see into (every op before they
    were triton_ops; now the opaque cases): a proxy-executor node calling ``attnzoo::halo_fwd``
    through the dispatcher, i.e. the op's Python body. About a minute of C++ compilation."""
    from attnzoo.tools.export import python_ops

    model = _Call("halo_attention", "triton", _params("halo_attention", 2, 16))
    inputs = tuple(torch.randn(1, 4, 4, 2, 16) for _ in range(3))
    path = str(tmp_path / "halo.pt2")
    torch._inductor.aoti_compile_and_package(torch.export.export(model, inputs), package_path=path)
    assert python_ops(path) == ["attnzoo::halo_fwd"]
    (got,) = torch._inductor.aoti_load_package(path)(*inputs)
    torch.testing.assert_close(got, model(*inputs)[0], rtol=0, atol=0)
