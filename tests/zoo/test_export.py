"""Export with dynamic shapes (``attnzoo.tools.export``): every family's smallest model exported
once with a dynamic batch, height and width, then run at other batches and at sizes no window,
region or stride divides, equal to eager; ONNX in onnxruntime, AOTInductor packages; the export
command's file handling (refused overwrite, nothing left at PATH after a failed check or a crash).

A program that specialised its height or width fails here: it is run at sizes other than the
example's (torch's guard raises, or the output differs). CI: the torch.export program of every
family, ONNX for four, and the command end to end (a .pt2 written and loaded back, --features,
refused overwrites, failed checks and crashes leaving nothing); the extended tier adds ONNX for
the other families, .pt2 files and AOTInductor packages for all, and float16.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.export import Dim

from attnzoo.kernels import gna
from attnzoo.tools import cli
from attnzoo.tools import export as ex
from tests.zoo.test_models import SMALLEST

FAMILIES = list(SMALLEST.values())
EXAMPLE = (2, 96, 96)  # batch 2: a batch-1 example would specialise the batch
# another batch at the example size, and two sizes no window (7), region (7), block (8) or
# stride (32) divides, at a third batch and at batch 1
POINTS = [EXAMPLE, (3, 96, 96), (1, 97, 131), (3, 75, 67)]  # >= 65: SHViT's minimum (stride 64 + 1)
ONNX_CI = ["az_halonet26t", "az_shvit_s1", "az_davit_tiny", "biformer_tiny"]  # the four cheapest ONNX conversions measured

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def traced():
    """``name -> (model, program)``: one dynamic batch,hw export per family, shared by the tests
    of this module (tracing is most of their time; the eight smallest models fit in memory)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model, _ = ex.build_model(name)
            x = torch.randn(*EXAMPLE[:1], 3, *EXAMPLE[1:])
            cache[name] = (model, ex.trace(model, x, "batch,hw", name))
        return cache[name]

    return get


def _rel(got, want) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def _check(fmt, name, traced, tmp_path, dtype="float32"):
    """The program written as ``fmt``, loaded in its runtime and run at POINTS by
    ``write_verified`` (which raises naming the first point off the bound)."""
    model, program = traced(name)
    path = tmp_path / f"{name}.{'onnx' if fmt == 'onnx' else 'pt2'}"
    files, results, _ = ex.write_verified(fmt, program, model, path, POINTS, dtype=dtype, timing_runs=0)
    assert [(r.batch, r.height, r.width) for r in results] == POINTS
    assert all(r.rel_err <= ex.BOUNDS[(fmt, dtype)] for r in results)
    assert files[0] == str(path) and path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("name", FAMILIES)
def test_dynamic_program_runs_at_other_batches_and_sizes(name, traced):
    """The torch.export program of every family, run at another batch, at batch 1 and at sizes
    no window or stride divides: equal to eager within 1e-5. A program that specialised H or W
    raises torch's guard error at these sizes (or would differ)."""
    model, program = traced(name)
    ranges = ex._ranges(program, "batch,hw")
    assert ranges["batch"] == "[1, inf)" and ranges["height"] == ranges["width"] == f"[{ex.min_size(model)}, inf)", ranges
    module = program.module()
    torch.manual_seed(1)
    for b, h, w in POINTS:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            got, want = module(x), model(x)
        assert got.shape == want.shape == (b, 1000)
        assert _rel(got, want) <= ex.BOUNDS[("pt2", "float32")], (b, h, w)


@pytest.mark.extended
@pytest.mark.parametrize("name", FAMILIES)
def test_pt2_file_round_trip(name, traced, tmp_path):
    """torch.export.save / load of the dynamic program (CI covers it for HaloNet through the command)."""
    _check("pt2", name, traced, tmp_path)


@pytest.mark.parametrize("name", ONNX_CI + [pytest.param(n, marks=pytest.mark.extended) for n in FAMILIES if n not in ONNX_CI])
def test_onnx_runs_in_onnxruntime_at_other_batches_and_sizes(name, traced, tmp_path):
    """ONNX (opset 18, onnx.checker full check) from the same dynamic program, run by
    onnxruntime on the CPU at the points: within 1e-4 of eager."""
    import onnx

    _check("onnx", name, traced, tmp_path)
    model = onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # batch, H, W symbolic; channels 3


@pytest.mark.extended
@pytest.mark.parametrize("name", FAMILIES)
def test_aoti_package_runs_at_other_batches_and_sizes(name, traced, tmp_path):
    """An AOTInductor package for the CPU, loaded with aoti_load_package: within 1e-4 of eager."""
    _check("aoti", name, traced, tmp_path)


@pytest.mark.extended
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("name", FAMILIES)
def test_float16_export(name, fmt, tmp_path):
    """fp16 weights and input: the file against the fp16 eager model within 1e-2."""
    torch.manual_seed(0)
    model, _ = ex.build_model(name, dtype="float16")
    x = torch.randn(2, 3, 96, 96, dtype=torch.float16)
    program = ex.trace(model, x, "batch,hw", name)
    ex.write_verified(fmt, program, model, tmp_path / f"{name}.{fmt}", POINTS, dtype="float16", timing_runs=0)


class _GNA(torch.nn.Module):
    def __init__(self, rank, kernel, stride, dilation, causal, heads=2):
        super().__init__()
        self.pattern = (kernel, stride, dilation, causal)
        self.rpb = torch.nn.Parameter(torch.randn(heads, *[2 * kernel - 1] * rank))

    def forward(self, q, k, v):
        return gna(q, k, v, *self.pattern, rpb=self.rpb, backend="reference")


@pytest.mark.parametrize("rank,kernel,stride,dilation,causal,sizes", [
    (2, 5, 2, 2, (True, False), [(13, 17), (10, 30), (25, 11)]),  # strided, dilated, causal on one axis
    (1, 3, 3, 3, True, [(9,), (20,), (31,)]),  # blocked and causal
    (3, 3, 1, 1, False, [(5, 6, 7), (9, 3, 4), (4, 8, 3)]),
])
def test_gna_patterns_no_model_uses_export_size_dynamic(rank, kernel, stride, dilation, causal, sizes):
    """gna's in-graph plan (halo bound, masks, at least two tiles) for patterns the families do
    not exercise: exported at one size, equal to the op at others (the smallest: kernel x dilation)."""
    torch.manual_seed(0)
    module = _GNA(rank, kernel, stride, dilation, causal)
    dims = {0: Dim.DYNAMIC, **{1 + a: Dim.DYNAMIC(min=kernel * dilation) for a in range(rank)}}

    def inputs(size, batch):
        return tuple(torch.randn(batch, *size, 2, 8) for _ in range(3))

    program = torch.export.export(module, inputs(sizes[0], 2), dynamic_shapes={n: dims for n in ("q", "k", "v")})
    for size in sizes[1:] + [tuple(kernel * dilation for _ in range(rank))]:
        args = inputs(size, 3)
        with torch.no_grad():
            assert _rel(program.module()(*args), module(*args)) <= 1e-5, size


def test_command_exports_dynamic_features_from_a_batch_1_example_and_refuses_to_overwrite(tmp_path, capsys):
    """The command end to end (a .pt2 written, checked and loaded back): --features gives the NCHW
    maps of every stage, dynamic in size; README's old recipe (a batch-1 example) fixed the batch
    to 1, the command warns and exports at batch 2, checks batches 1 to 3 and two odd sizes and
    prints the table. A second run without --overwrite refuses and leaves the file as it was."""
    out = tmp_path / "halo.pt2"
    argv = ["export", "az_halonet26t", "--format", "pt2", "--out", str(out), "--features", "--batch", "1", "--img-size", "96", "96"]
    torch.manual_seed(0)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "specialise the batch" in text
    for row in ("| 2x3x96x96 |", "| 3x3x96x96 |", "| 1x3x97x131 |", "| 3x3x320x192 |"):
        assert row in text
    assert "batch [1, inf), height [33, inf), width [33, inf)" in text
    torch.manual_seed(0)
    model, _ = ex.build_model("az_halonet26t", features=True)  # the same weights
    x = torch.randn(4, 3, 40, 150)
    with torch.no_grad():
        got, want = torch.export.load(str(out)).module()(x), model(x)
    assert [tuple(g.shape[-2:]) for g in got] == [(20, 75), (10, 38), (5, 19), (3, 10), (2, 5)]  # ceil(size / stride 2..32)
    assert all(g.shape == w.shape and _rel(g, w) <= 1e-5 for g, w in zip(got, want))
    before = out.read_bytes()
    assert cli.main(argv) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halo.pt2"]


def test_a_failed_check_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "halo.pt2"
    out.write_bytes(b"an earlier export")
    monkeypatch.setitem(ex.BOUNDS, ("pt2", "float32"), -1.0)  # every point fails
    argv = ["export", "az_halonet26t", "--format", "pt2", "--out", str(out), "--dynamic", "none", "--img-size", "64", "64", "--overwrite"]
    assert cli.main(argv) == 1
    assert "differs from eager at 2x3x64x64" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halo.pt2"]


def test_a_crash_while_writing_never_leaves_a_truncated_file(tmp_path, monkeypatch, capsys):
    def truncated(fmt, program, model, example, tmp, **kwargs):
        tmp.write_bytes(b"PK\x03\x04 half a file")  # what a killed writer leaves
        raise OSError("disk full")

    monkeypatch.setattr(ex, "_write", truncated)
    out = tmp_path / "halo.pt2"
    argv = ["export", "az_halonet26t", "--format", "pt2", "--out", str(out), "--dynamic", "none", "--img-size", "64", "64"]
    assert cli.main(argv) == 1
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_before_exporting(tmp_path):
    with pytest.raises(ValueError, match="opset must be >= 18"):
        ex.export_model("az_halonet26t", "onnx", str(tmp_path / "a.onnx"), opset=17)
    with pytest.raises(ValueError, match="needs a dynamic height and width"):
        ex.export_model("az_halonet26t", "pt2", str(tmp_path / "a.pt2"), dynamic="batch", check_sizes=[(97, 131)])
    with pytest.raises(ValueError, match="does not exist"):
        ex.export_model("az_halonet26t", "pt2", str(tmp_path / "missing" / "a.pt2"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="--backend triton exports an AOTInductor package for CUDA"):
        ex.export_model("az_halonet26t", "onnx", str(tmp_path / "a.onnx"), backend="triton")
    assert list(tmp_path.iterdir()) == []


def test_backend_of_an_export():
    """auto: the Triton kernels go into an AOTInductor package for CUDA, the reference ops
    everywhere else (an ONNX graph or a CPU package cannot hold a Triton kernel)."""
    assert ex.resolve_backend("auto", "aoti", "cuda") == "triton"
    assert ex.resolve_backend("auto", "aoti", "cuda:1") == "triton"
    assert ex.resolve_backend("auto", "aoti", "cpu") == "reference"
    assert ex.resolve_backend("auto", "onnx", "cuda") == "reference"
    assert ex.resolve_backend("auto", "pt2", "cuda") == "reference"
    assert ex.resolve_backend("reference", "aoti", "cuda") == "reference"
    for fmt, device in (("aoti", "cpu"), ("pt2", "cuda")):
        with pytest.raises(ValueError, match="--backend triton"):
            ex.resolve_backend("triton", fmt, device)


def test_triton_export_pins_only_mixers_whose_op_has_kernels():
    """An explicit triton backend would refuse DaViT's channel attention and BiFormer's dense
    attention (reference only): the triton export pins triton on the other mixers only."""
    import timm

    for name, want in (("az_davit_tiny", {"WindowAttention2d"}), ("biformer_tiny", {"BiLevelRoutingAttention2d"})):
        model = timm.create_model(name, backend="reference").eval()
        assert ex.pin_triton(model, torch.randn(1, 3, 64, 64)) > 0
        mixers = [m for m in model.modules() if hasattr(m, "backend")]
        assert {type(m).__name__ for m in mixers if m.backend == "triton"} == want
        assert any(m.backend == "reference" for m in mixers)


# HaloNet's op (halo_attention) traces on symbolic sizes without a guard: its kernels go into a
# size-dynamic package. gna (NAT) decides on sizes in its host code: in the package at a static
# size, a call into Python on dynamic sizes (kernels/_triton/in_graph.py).
@pytest.mark.gpu
@pytest.mark.parametrize("name,dynamic,python_ops", [
    ("az_halonet26t", "batch,hw", []),
    ("nat_mini", "none", []),
    ("nat_mini", "batch,hw", ["attnzoo::gna_fwd"]),
])
def test_aoti_package_on_cuda_holds_the_triton_kernels(name, dynamic, python_ops, tmp_path):
    """`attnzoo export --format aoti --device cuda`: the model on the triton backend, the package
    compiled by AOTInductor with the ops' Triton kernels, loaded with aoti_load_package and checked
    against the eager (triton) model at every point within 1e-4."""
    path = tmp_path / f"{name}.pt2"
    report = ex.export_model(name, "aoti", str(path), dynamic=dynamic, img_size=(96, 96), device="cuda")
    assert report.backend == "triton" and path.is_file()
    assert all(r.ok for r in report.points) and len(report.points) == (1 if dynamic == "none" else 4)
    assert report.python_ops == python_ops
