"""Export a model to ONNX, a torch.export program (.pt2) or an AOTInductor package, dynamic in batch and size, verified.

``attnzoo export MODEL --format onnx|pt2|aoti --out PATH``:

* the model is built on ``--backend``: ``reference`` for ONNX, pt2 and CPU packages (an ONNX
  graph or a CPU package cannot hold a Triton kernel), ``triton`` for an AOTInductor package on
  CUDA (the default there: every mixer whose op has Triton kernels is pinned to them,
  ``pin_triton``, and Inductor compiles those kernels into the package,
  ``kernels/_triton/in_graph.py``; ``--backend reference`` compiles the reference ops
  instead), in ``--dtype``, with ``--pretrained`` weights or a ``--checkpoint`` (a file, a URL
  or ``hf-hub:<org>/<repo>[/<file>]``), as a classifier or with ``--features`` as the
  multi-scale NCHW maps of ``features_only=True`` (what a detector's neck consumes);
* ``torch.export`` traces it once at an example (``--img-size``, default the published size;
  batch 2: an example batch of 1 makes torch specialise the batch) with ``--dynamic``:
  ``none`` (the example's shape only), ``batch`` or ``batch,hw`` (the default: any batch, height
  and width at or above the minimum the program reports). Every family computes its padding,
  windows, partitions, index plans and pooled grids from symbolic sizes, so nothing is
  specialised to the example; a dimension torch had to specialise fails the export with
  torch's reason;
* the file is written next to PATH under a temporary name, then **verified** in its own runtime
  (onnxruntime, ``torch.export.load``, ``torch._inductor.aoti_load_package``) against the eager
  model at several (batch, height, width) points: the example, another batch, and two sizes
  no window, region or stride divides (97x131 and 320x192). The relative error
  ``||out - ref|| / ||ref||`` (worst output) must be within the bound of the format and dtype.
  Only then is it renamed to PATH (never replacing an existing PATH without ``--overwrite``); a
  failed check removes it and exits with status 1, naming the point.

ONNX: opset ``--opset`` (>= 18), checked with ``onnx.checker`` (full check); weights over 2 GB
go to an external data file ``PATH.data`` next to it. AOTInductor: a ``.pt2`` package compiled
for the CPU (or ``--device cuda``). With the triton backend the log names every attnzoo op the
package still calls in Python (an op Inductor could not take as kernels: gna, routed and
aggregated attention on dynamic sizes), ``ExportReport.python_ops``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["add_arguments", "run", "export_model", "build_model", "trace", "write_verified", "ExportReport", "ExportError",
           "BOUNDS", "verification_points", "resolve_backend", "python_ops", "pin_triton"]

FORMATS = ("onnx", "pt2", "aoti")
DYNAMIC = ("none", "batch", "batch,hw")
DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("auto", "reference", "triton")
ODD_SIZES = ((97, 131), (320, 192))  # no window (7), region (7), block (8), partition or stride (32) divides these
MIN_OPSET = 18
ONNX_PROTO_LIMIT = 2 * 1024**3  # protobuf's 2 GB: larger models keep their weights in external data

# ||out - ref|| / ||ref|| of the exported file against eager, per (format, dtype). torch.export runs
# the same aten ops as eager; onnxruntime and Inductor fuse and reorder them (float32 rounding);
# in float16 / bfloat16 both sides round every op, differently ordered.
BOUNDS: Dict[Tuple[str, str], float] = {
    ("pt2", "float32"): 1e-5, ("onnx", "float32"): 1e-4, ("aoti", "float32"): 1e-4,
    ("pt2", "float16"): 1e-2, ("onnx", "float16"): 1e-2, ("aoti", "float16"): 1e-2,
    ("pt2", "bfloat16"): 5e-2, ("onnx", "bfloat16"): 5e-2, ("aoti", "bfloat16"): 5e-2,
}


class ExportError(RuntimeError):
    """The export or its verification failed; the message says where and why."""


@dataclass
class PointResult:
    batch: int
    height: int
    width: int
    rel_err: float
    bound: float
    eager_ms: float
    exported_ms: float

    @property
    def ok(self) -> bool:
        return self.rel_err <= self.bound  # NaN fails

    @property
    def name(self) -> str:
        return f"{self.batch}x3x{self.height}x{self.width}"


@dataclass
class ExportReport:
    model: str
    format: str
    path: str
    dynamic: str
    dtype: str
    example: Tuple[int, int, int]
    export_s: float = 0.0
    peak_rss_mb: float = 0.0
    file_mb: float = 0.0
    ranges: Dict[str, str] = field(default_factory=dict)
    points: List[PointResult] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    backend: str = "reference"
    python_ops: List[str] = field(default_factory=list)  # attnzoo ops an aoti package calls in Python

    def table(self) -> str:
        lines = ["| point (B x C x H x W) | max rel. error | bound | eager ms | exported ms |", "|---|---|---|---|---|"]
        for p in self.points:
            lines.append(f"| {p.name} | {p.rel_err:.2e} | {p.bound:.0e} | {p.eager_ms:.1f} | {p.exported_ms:.1f} |")
        return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registered attnzoo model (attnzoo.list_models())")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime), pt2 (torch.export.save) or aoti (AOTInductor package)")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write (an existing one is replaced only with --overwrite)")
    parser.add_argument("--dynamic", default="batch,hw", choices=DYNAMIC,
                        help="dimensions left dynamic: none, batch, or batch,hw (default: any batch, height and width)")
    parser.add_argument("--img-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="the example's height and width (default: the model's published input size)")
    parser.add_argument("--batch", type=int, default=2, help="the example's batch (default 2; with a dynamic batch, 1 is raised to 2)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="parameters and input dtype of the exported model")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="the model's published weights (attnzoo.hub, verified)")
    weights.add_argument("--checkpoint", default=None, metavar="SRC", help="weights: a file, an http(s) URL or hf-hub:<org>/<repo>[/<file>]")
    parser.add_argument("--features", action="store_true",
                        help="export the multi-scale NCHW feature maps (features_only=True) instead of the logits")
    parser.add_argument("--out-indices", type=int, nargs="+", default=None, metavar="I", help="with --features: which maps (default: all)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})")
    parser.add_argument("--device", default="cpu", help="device of the export and check (default cpu; aoti compiles for it)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="the attnzoo ops' backend: auto (default: triton for --format aoti on CUDA, whose package "
                             "then holds the Triton kernels; reference otherwise), reference or triton")
    parser.add_argument("--check-sizes", default=None, metavar="HxW,...",
                        help="sizes of the check (default: the example, 97x131 and 320x192 when the size is dynamic)")
    parser.add_argument("--overwrite", action="store_true", help="replace PATH when it exists")


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    try:
        report = export_model(
            args.model, args.format, args.out, dynamic=args.dynamic, img_size=args.img_size, batch=args.batch,
            dtype=args.dtype, pretrained=args.pretrained, checkpoint=args.checkpoint, features=args.features,
            out_indices=args.out_indices, opset=args.opset, device=args.device, backend=args.backend,
            check_sizes=_parse_sizes(args.check_sizes) if args.check_sizes else None, overwrite=args.overwrite,
            log=lambda text: print(text, flush=True),
        )
    except (ExportError, FileExistsError, ValueError) as exc:
        print(f"attnzoo export: {exc}", file=sys.stderr, flush=True)
        return 1
    print(report.table())
    files = ", ".join(f"{f} ({os.path.getsize(f) / 2**20:.1f} MB)" for f in report.files)
    print(f"wrote {files}: {args.model} as {args.format}, dynamic {args.dynamic} ({', '.join(f'{k} {v}' for k, v in report.ranges.items()) or 'static'}); "
          f"export {report.export_s:.1f} s, peak memory {report.peak_rss_mb:.0f} MB")
    return 0


def _parse_sizes(text: str) -> List[Tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--check-sizes takes HxW[,HxW...], got {text!r}") from None
        sizes.append((h, w))
    return sizes


def verification_points(example: Tuple[int, int, int], dynamic: str,
                        sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Tuple[int, int, int]]:
    """(batch, height, width) points the written file is checked at: the example; another batch
    and batch 1 (a dynamic batch); sizes no window or stride divides (a dynamic size), at batch 1
    and at a third batch."""
    b, h, w = example
    points = [example]
    if dynamic in ("batch", "batch,hw"):
        points.append((b + 1, h, w))
    if dynamic == "batch":
        points.append((1, h, w))
    if dynamic == "batch,hw":
        for i, (sh, sw) in enumerate(ODD_SIZES if sizes is None else sizes):
            points.append((1 if i % 2 == 0 else b + 1, sh, sw))
    elif sizes:
        raise ValueError(f"--check-sizes needs a dynamic height and width (--dynamic batch,hw), got --dynamic {dynamic}")
    return list(dict.fromkeys(points))


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def resolve_backend(backend: str, fmt: str, device: str) -> str:
    """The attnzoo ops' backend of an export: ``auto`` is triton for an AOTInductor package on CUDA
    (Inductor compiles the Triton kernels into it), reference otherwise. ``triton`` needs that
    pairing: an ONNX graph cannot hold a Triton kernel, a pt2 program would keep the ops as calls
    into attnzoo, and off CUDA they run on the reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cuda = str(device).startswith("cuda")
    if backend == "auto":
        return "triton" if fmt == "aoti" and cuda else "reference"
    if backend == "triton" and not (fmt == "aoti" and cuda):
        raise ValueError("--backend triton exports an AOTInductor package for CUDA (--format aoti --device cuda); "
                         f"got --format {fmt} --device {device}")
    return backend


def python_ops(package: str) -> List[str]:
    """The attnzoo ops an AOTInductor package calls back into Python (proxy-executor nodes of its
    wrapper), sorted; none when Inductor compiled every op's kernels into the package."""
    import json
    import zipfile

    found = set()
    with zipfile.ZipFile(package) as z:
        for entry in z.namelist():
            if entry.endswith(".json"):
                try:
                    nodes = json.loads(z.read(entry)).get("nodes", [])
                except (ValueError, AttributeError):
                    continue
                found.update(n["node"]["target"] for n in nodes if str(n.get("node", {}).get("target", "")).startswith("attnzoo::"))
    return sorted(found)


def pin_triton(model, example) -> int:
    """Sets ``backend='triton'`` on every mixer of ``model`` whose op has a Triton backend, found by
    one eager forward of ``example`` recording which ops each mixer calls; the others (DaViT's
    channel attention, SHViT's and BiFormer's dense attention: reference only) keep theirs, since
    an explicit triton backend would refuse them. Returns how many mixers were set."""
    import torch

    from attnzoo.kernels._dispatch import record_calls

    mixers = [m for m in model.modules() if hasattr(m, "backend")]
    ops: Dict[int, set] = {id(m): set() for m in mixers}
    claimed: set = set()
    with record_calls() as calls:
        starts: Dict[int, List[int]] = {}

        def before(module, args):
            starts.setdefault(id(module), []).append(len(calls))

        def after(module, args, out):  # the innermost mixer returns first: it claims its own calls
            for i in range(starts[id(module)].pop(), len(calls)):
                if i not in claimed:
                    claimed.add(i)
                    ops[id(module)].add(calls[i][0])

        handles = [h for m in mixers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
    pinned = 0
    for m in mixers:
        if any("triton" in op.backends for op in ops[id(m)]):
            m.backend = "triton"
            pinned += 1
    return pinned


def _build(name: str, *, pretrained: bool, checkpoint: Optional[str], features: bool, out_indices, dtype, device,
           backend: str = "reference"):
    import timm
    import torch

    import attnzoo
    from attnzoo import hub

    if name not in attnzoo.list_models():
        raise ValueError(f"unknown model {name!r}; see attnzoo.list_models()")
    kwargs = dict(backend="reference")  # the graph holds the reference ops (triton: pinned below where an op has kernels)
    if features:
        kwargs.update(features_only=True)
        if out_indices is not None:
            kwargs.update(out_indices=tuple(out_indices))
    if checkpoint is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=hub.fetch_checkpoint(checkpoint, model=name)))
    elif pretrained:
        kwargs.update(pretrained=True)
    model = timm.create_model(name, **kwargs)
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if input_size is None:
        size = attnzoo.get_entry(name).published.img_size
        input_size = (3, size, size)
    model = model.to(device=device, dtype=dtype).eval()
    if backend == "triton":
        pin_triton(model, torch.randn(1, *input_size).to(device=device, dtype=dtype))
    return model, tuple(input_size[1:])


def _wrap_outputs(model):
    """features_only models return a list; export and ONNX name a tuple's outputs one by one
    (the wrapper prefixes parameter names with ``inner.``; classifiers are exported unwrapped)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return tuple(out) if isinstance(out, (list, tuple)) else out

    return Wrapped(model).eval()


def _as_list(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _rel_err(got, want) -> float:
    import torch

    got, want = _as_list(got), _as_list(want)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, r in zip(got, want):
        g = torch.as_tensor(g).double()
        r = r.detach().double().cpu()
        if tuple(g.shape) != tuple(r.shape):
            return float("inf")
        err = float((g - r).norm() / r.norm().clamp_min(1e-30))
        worst = max(worst, err if err == err else float("inf"))
    return worst


def _timed(fn: Callable[[], object], runs: int = 3) -> Tuple[object, float]:
    """(output of the first call, median ms of ``runs`` calls after it; with ``runs=0`` the
    first call's ms, which includes any one-time set-up)."""
    t0 = time.perf_counter()
    out = fn()
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, sorted(times)[len(times) // 2] if times else first


def min_size(model) -> int:
    """The smallest height / width a dynamic-size export takes: one more than the model's total
    stride, so that every stage's map is at least 2 x 2.

    A map that may be 1 x 1 makes torch decide, in op after op (contiguity, reshapes, norms),
    whether an axis is 1: each decision is a guard on the example's size, so the program would
    fail at sizes on the other side. With this minimum as the dimension's lower bound torch can
    prove every stage >= 2 and the program is valid for every size it accepts (smaller inputs are
    refused with torch's range error). Below it only eager runs."""
    inner = getattr(model, "inner", model)
    reductions = [info["reduction"] for info in getattr(inner, "feature_info", [])]
    if not reductions and hasattr(inner, "feature_info") and hasattr(inner.feature_info, "reduction"):
        reductions = list(inner.feature_info.reduction())
    return max(reductions, default=1) + 1


def _dynamic_shapes(dynamic: str, min_hw: int = 2):
    from torch.export import Dim

    if dynamic == "none":
        return None
    dims = {0: Dim.DYNAMIC}
    if dynamic == "batch,hw":
        dims.update({2: Dim.DYNAMIC(min=min_hw), 3: Dim.DYNAMIC(min=min_hw)})
    return {"x": dims}


def _ranges(program, dynamic: str) -> Dict[str, str]:
    """What the exported program accepts for each dynamic input dimension (from its range
    constraints): '[lo, inf)' or '[lo, hi]'."""
    from torch.utils._sympy.numbers import int_oo

    if dynamic == "none":
        return {}
    shape = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == shape)
    sizes = node.meta["val"].shape
    out = {}
    for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
        if dynamic == "batch" and axis:
            continue
        size = sizes[axis]
        expr = getattr(getattr(size, "node", None), "expr", None)
        vr = program.range_constraints.get(expr) if expr is not None else None
        if vr is None:
            out[label] = f"= {int(size)} (specialised)"
            continue
        lo, hi = int(vr.lower), vr.upper
        if axis == 0 and lo == 2:
            lo = 1  # torch reasons with batch >= 2 (its 0/1 specialisation); the programs run batch 1 (a checked point)
        out[label] = f"[{lo}, inf)" if hi == int_oo else f"[{lo}, {int(hi)}]"
    return out


def _check_specialised(program, dynamic: str, example) -> None:
    """A dynamic dimension the trace turned into a constant is an error, never a silent static
    export (torch's Dim.DYNAMIC raises for most; this catches what reaches the program)."""
    for label, text in _ranges(program, dynamic).items():
        if "specialised" in text:
            raise ExportError(f"torch.export specialised the {label} to the example's {text.split()[1]}: "
                              f"the exported program would take no other {label}")


@contextlib.contextmanager
def _temporary_sibling(path: Path):
    """A fresh directory next to ``path`` (same file system, so the rename is atomic), removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(fmt: str, program, model, example, tmp_path: Path, *, opset: int, device: str, log) -> None:
    import torch

    if fmt == "pt2":
        torch.export.save(program, str(tmp_path))
    elif fmt == "aoti":
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path))
    else:
        import onnx

        onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset, verbose=False)
        size = sum(t.numel() * t.element_size() for t in list(program.state_dict.values()) + list(program.constants.values())
                   if isinstance(t, torch.Tensor))
        external = size >= ONNX_PROTO_LIMIT
        onnx_program.save(str(tmp_path), external_data=external)
        if external:
            log(f"weights {size / 2**30:.2f} GB >= 2 GB: external data in {tmp_path.name}.data")
        onnx.checker.check_model(str(tmp_path), full_check=True)


def _loader(fmt: str, path: Path, device: str):
    """A callable running the written file in its own runtime: tensor in, output(s) out."""
    import torch

    if fmt == "pt2":
        module = torch.export.load(str(path)).module()

        def call(x):
            with torch.no_grad():
                return module(x)
        return call
    if fmt == "aoti":
        runner = torch._inductor.aoti_load_package(str(path))

        def call(x):
            with torch.no_grad():
                return runner(x)
        return call
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would steal the CPU from eager
    providers = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), opts, providers=providers)
    name = session.get_inputs()[0].name

    def call(x):
        outs = session.run(None, {name: x.detach().cpu().numpy()})
        return [torch.from_numpy(o) for o in outs]
    return call


def build_model(name: str, *, dtype: str = "float32", pretrained: bool = False, checkpoint: Optional[str] = None,
                features: bool = False, out_indices: Optional[Sequence[int]] = None, device: str = "cpu",
                backend: str = "reference"):
    """``(model, (H, W))``: ``name`` on ``backend`` (reference; triton: every mixer whose op has
    Triton kernels, ``pin_triton``) in eval mode, in ``dtype`` on
    ``device``, returning a tuple of NCHW maps with ``features`` (else the logits); and its
    published input size."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if out_indices is not None and not features:
        raise ValueError("--out-indices needs --features")
    model, size = _build(name, pretrained=pretrained, checkpoint=checkpoint, features=features,
                         out_indices=out_indices, dtype=getattr(torch, dtype), device=device, backend=backend)
    return (_wrap_outputs(model) if features else model), size


def trace(model, example, dynamic: str = "batch,hw", name: str = "the model"):
    """``torch.export.export`` of ``model`` at ``example`` with the ``dynamic`` dimensions;
    raises ``ExportError`` (torch's reason) when it fails or specialised a dynamic dimension."""
    import torch

    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic must be one of {DYNAMIC}, got {dynamic!r}")
    lowest = min_size(model)
    if dynamic == "batch,hw" and min(example.shape[-2:]) < lowest:
        raise ValueError(f"a dynamic-size export of {name} takes height and width >= {lowest} (every stage at least 2 x 2); "
                         f"the example is {tuple(example.shape[-2:])}")
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic, lowest))
    except Exception as exc:  # torch's reason (a specialised Dim.DYNAMIC, an untraceable op) is the message
        raise ExportError(f"torch.export of {name} failed with dynamic {dynamic}: {type(exc).__name__}: {exc}") from exc
    _check_specialised(program, dynamic, example)
    return program


def write_verified(
    fmt: str, program, model, path: Path, points: Sequence[Tuple[int, int, int]], *, dtype: str = "float32",
    opset: int = MIN_OPSET, device: str = "cpu", seed: int = 0, timing_runs: int = 3,
    log: Callable[[str], None] = lambda text: None,
) -> Tuple[List[str], List[PointResult], float]:
    """Writes ``program`` as ``fmt`` in a temporary sibling of ``path``, checks it against
    ``model`` at ``points`` (batch, height, width) in its own runtime, and renames it to ``path``
    only when every point is within ``BOUNDS``. Returns the files written, the point results and
    the seconds the write took (ONNX conversion, AOTInductor compilation); raises ``ExportError``
    naming the failing point (nothing is then left at ``path``)."""
    import torch

    torch_dtype = getattr(torch, dtype)
    bound = BOUNDS[(fmt, dtype)]
    gen = torch.Generator().manual_seed(seed)
    results: List[PointResult] = []
    example = torch.randn(points[0][0], 3, points[0][1], points[0][2], generator=gen).to(device=device, dtype=torch_dtype)
    with _temporary_sibling(path) as tmp_dir:
        tmp_path = tmp_dir / path.name
        t0 = time.perf_counter()
        try:
            _write(fmt, program, model, example, tmp_path, opset=opset, device=device, log=log)
        except Exception as exc:
            raise ExportError(f"writing {fmt} failed: {type(exc).__name__}: {exc}") from exc
        write_s = time.perf_counter() - t0
        try:
            runner = _loader(fmt, tmp_path, device)
        except Exception as exc:
            raise ExportError(f"loading the written {fmt} failed: {type(exc).__name__}: {exc}") from exc
        for b, hh, ww in points:
            xi = torch.randn(b, 3, hh, ww, generator=gen).to(device=device, dtype=torch_dtype)
            with torch.no_grad():
                want, eager_ms = _timed(lambda: model(xi), timing_runs)
            try:
                got, exported_ms = _timed(lambda: runner(xi), timing_runs)
                err = _rel_err(got, want)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ExportError(f"the exported {fmt} failed at {b}x3x{hh}x{ww}: {type(exc).__name__}: {first}") from exc
            result = PointResult(b, hh, ww, err, bound, eager_ms, exported_ms)
            results.append(result)
            log(f"  {result.name}: rel. error {err:.2e} (bound {bound:.0e}), eager {eager_ms:.1f} ms, exported {exported_ms:.1f} ms")
            if not result.ok:
                raise ExportError(f"the exported {fmt} differs from eager at {result.name}: relative error {err:.3e} > {bound:.0e}")
        written = sorted(tmp_dir.iterdir())
        for f in written:
            os.replace(f, path.parent / f.name)
    return [str(path.parent / f.name) for f in written], results, write_s


def export_model(
    name: str,
    fmt: str,
    out: str,
    *,
    dynamic: str = "batch,hw",
    img_size: Optional[Sequence[int]] = None,
    batch: int = 2,
    dtype: str = "float32",
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    features: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    opset: int = MIN_OPSET,
    device: str = "cpu",
    backend: str = "auto",
    check_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    overwrite: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = lambda text: None,
) -> ExportReport:
    """Exports ``name`` to ``out`` and verifies the written file (see the module docstring).

    Raises ``FileExistsError`` when ``out`` exists and ``overwrite`` is False, ``ValueError`` for
    bad arguments and ``ExportError`` when the export or a check fails (nothing is left at
    ``out`` then; an existing file there is kept)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic must be one of {DYNAMIC}, got {dynamic!r}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (the dynamo ONNX exporter's minimum), got {opset}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    backend = resolve_backend(backend, fmt, device)
    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; --out names the file to write")
    if not path.parent.exists():
        raise ValueError(f"the folder of {path} does not exist")
    if dynamic != "none" and batch == 1:
        # torch specialises a dimension whose example size is 1: the program would take batch 1 only
        log("warning: an example batch of 1 makes torch.export specialise the batch; exporting with batch 2 "
            "(the program takes batch 1 too)")
        batch = 2
    points = verification_points((batch, 0, 0), dynamic, check_sizes)  # argument check before the slow part

    import torch

    model, published = build_model(name, dtype=dtype, pretrained=pretrained, checkpoint=checkpoint, features=features,
                                   out_indices=out_indices, device=device, backend=backend)
    h, w = tuple(img_size) if img_size is not None else published
    points = verification_points((batch, h, w), dynamic, check_sizes)
    report = ExportReport(name, fmt, str(path), dynamic, dtype, (batch, h, w), backend=backend)
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=getattr(torch, dtype))
    t0 = time.perf_counter()
    log(f"exporting {name} ({fmt}, dynamic {dynamic}, {dtype}, {backend} backend) at an example of {tuple(x.shape)} ...")
    program = trace(model, x, dynamic, name)
    report.ranges = _ranges(program, dynamic)
    trace_s = time.perf_counter() - t0
    log(f"traced in {trace_s:.1f} s; accepts {', '.join(f'{k} {v}' for k, v in report.ranges.items()) or 'the example shape only'}")
    report.files, report.points, write_s = write_verified(fmt, program, model, path, points, dtype=dtype, opset=opset,
                                                          device=device, seed=seed + 1, log=log)
    report.export_s = trace_s + write_s
    if fmt == "aoti" and backend == "triton":
        report.python_ops = python_ops(str(path))
        log("the package holds the Triton kernels of every attnzoo op" if not report.python_ops else
            f"the package calls {', '.join(report.python_ops)} in Python (loaded with attnzoo imported): "
            "their host code decides on sizes, so on dynamic sizes Inductor keeps them opaque")
    report.peak_rss_mb = _peak_rss_mb()
    report.file_mb = sum(os.path.getsize(f) for f in report.files) / 2**20
    return report
