"""The shared Triton toolkit (``attnzoo.kernels._triton``) that every fused op builds on: the
autotune switch and spaces, the shared-memory limit, the host-side refusal. Nothing runs a kernel."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from attnzoo.kernels import OPS  # noqa: E402
from attnzoo.kernels._triton import aot, autotune, host  # noqa: E402

FUSED = sorted(name for name, op in OPS.items() if "triton" in op.backends)
# an op's own autotune variable: ATTNZOO_<first word of its name>_AUTOTUNE (README, tools/env.py)
OP_ENV = {name: f"ATTNZOO_{name.split('_')[0].upper()}_AUTOTUNE" for name in FUSED}


def _spaces(name):
    import importlib

    return importlib.import_module(f"attnzoo.kernels.{name}._autotune").SPACES


@pytest.fixture
def clean_env(monkeypatch):
    for var in (autotune.ENV, *OP_ENV.values()):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", FUSED)
def test_every_kernel_has_a_space_with_its_op_variable(name):
    spaces = _spaces(name)
    assert spaces and all(isinstance(s, autotune.Space) for s in spaces.values())
    # an op's own variable is optional (ATTNZOO_AUTOTUNE covers every op); the four first ops have one
    assert {s.env for s in spaces.values()} == {OP_ENV[name]} or {s.env for s in spaces.values()} == {None}
    if name in ("gna", "routed_attention", "halo_attention", "aggregated_attention"):
        assert {s.env for s in spaces.values()} == {OP_ENV[name]}
    assert all(s.kernel == which and s.configs for which, s in spaces.items())


@pytest.mark.parametrize("name", FUSED)
def test_one_switch_turns_tuning_off_and_op_variables_override_it(name, clean_env):
    space = next(iter(_spaces(name).values()))
    big = autotune.TUNE_MIN_ROWS
    assert space.should_tune(big) and not space.should_tune(big - 1)
    clean_env.setenv(autotune.ENV, "0")
    assert not space.should_tune(2**30)
    if space.env is None:
        return
    clean_env.setenv(OP_ENV[name], "1")  # the op's own variable wins for that op
    assert space.should_tune(big)
    clean_env.setenv(autotune.ENV, "1")
    clean_env.setenv(OP_ENV[name], "0")
    assert not space.should_tune(2**30)
    others = [n for n in FUSED if n != name]
    assert all(next(iter(_spaces(n).values())).should_tune(big) for n in others)


def test_shared_memory_limit_follows_the_compile_target():
    for target in ("sm_80", "sm_90", "sm_100"):
        with aot.compile_session(aot.TARGETS[target]):
            assert autotune.smem_limit() == aot.TARGETS[target].smem_per_block
    assert aot.TARGETS["sm_80"].smem_per_block == 163 * 1024 and aot.TARGETS["sm_90"].smem_per_block == 227 * 1024
    if not torch.cuda.is_available():
        assert autotune.smem_limit() == autotune.DEFAULT_SMEM_BYTES == aot.TARGETS["sm_80"].smem_per_block
    else:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        assert autotune.smem_limit() == props.shared_memory_per_block_optin


def test_pruning_uses_the_larger_shared_memory_of_an_h100():
    """A float32 gna config over an A100's 163 KiB (3 stages of 64-key blocks at head dim 128,
    a 64-query tile: 224 KiB by pruning's estimate) is kept on sm_90, dropped on sm_80."""
    space = _spaces("gna")["fwd"]
    args = dict(L0=1, L1=56, L2=56, DIL0=1, DIL1=1, DIL2=1, D=128, DV=128, DOT_PRECISION="ieee")

    def kept(target):
        with aot.compile_session(aot.TARGETS[target]):
            return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) for c in space.kept(args)}

    assert (64, 64, 3) in kept("sm_90") and (64, 64, 3) not in kept("sm_80")


def test_pruning_is_told_its_kernel_by_argument():
    """halo's backward keeps only the own block its partial buffers are sized for, from the
    space's kernel name (no argument standing in for it)."""
    spaces = _spaces("halo_attention")
    args = dict(BQ=4, WIN=12, D=64, DV=64, DOT_PRECISION="tf32")
    bwd = spaces["bwd"].kept(args)
    assert {c.kwargs["BLOCK_M"] for c in bwd} == {16}
    assert len({c.kwargs["BLOCK_M"] for c in spaces["fwd"].kept(args)}) > 1


def test_gna_configs_are_tagged_by_value_not_identity():
    """gna's search space holds each config once; a rank's preference order comes from its tile
    lists (a config shared by two ranks serves both), so a 3-D problem prefers its 3-D tiles."""
    from attnzoo.kernels.gna import _autotune

    for space in _autotune.SPACES.values():
        keys = [(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in space.configs]
        assert len(keys) == len(set(keys))
    args = dict(L0=16, L1=32, L2=32, DIL0=1, DIL1=1, DIL2=1, D=32, DV=32, DOT_PRECISION="tf32")
    first = _autotune.SPACES["fwd"].default_config(args)
    assert (first["T0"], first["T1"], first["T2"], first["U0"], first["U1"], first["U2"]) == (1, 8, 8, 2, 4, 4)


def test_host_refusal_names_the_argument():
    q = torch.empty(2, 4, 4, 2, 32)
    assert host.refusal([("q", q)], [("head_dim", 32)], [("batch", 2)]) is None
    assert host.refusal([("q", q.double())], [], []) == \
        "q dtype torch.float64 is not supported (float16, bfloat16 or float32)"
    assert host.refusal([("q", q), ("rpb", None)], [("v_dim", 12)]) == \
        "v_dim 12 is not supported (a multiple of 8 in [16, 128])"
    assert host.refusal([], [], [("batch * heads", 70000)]) == \
        "batch * heads = 70000 exceeds the 65535 programs of a grid axis"
    strided = torch.empty(2, 4, 3, 32).unbind(2)[0]
    assert not strided.is_contiguous() and host.contiguous(strided, None)[0].is_contiguous()


@pytest.mark.parametrize("name", FUSED)
def test_op_kernels_use_the_shared_toolkit(name):
    """No op keeps its own copy of what the toolkit holds: triton.py takes its flash blocks, launch
    and host checks from ``_triton``; no shared-memory constant, autotune switch or private Triton
    name in the op folder."""
    import importlib

    module = importlib.import_module(f"attnzoo.kernels.{name}.triton")
    folder = Path(module.__file__).parent
    tree = ast.parse((folder / "triton.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 2}
    assert {"_triton.flash", "_triton.launch", "_triton.host"} <= imported
    assert module.INTERPRETER is host.INTERPRETER
    for file in ("triton.py", "_autotune.py"):
        text = (folder / file).read_text()
        for forbidden in ("_SMEM_BYTES", r"160 \* 1024", "_TUNE_MIN_ROWS", r"os\.environ", r"tl\.standard",
                          r"\bid\(", r"sys\.modules", "importlib"):
            assert not re.search(forbidden, text), f"kernels/{name}/{file} holds {forbidden!r}"
