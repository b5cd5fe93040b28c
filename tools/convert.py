"""Convert a checkpoint into a timm-format Hub repo folder (config.json, model.safetensors, README.md), checked by loading it back.

``attnzoo convert [MODEL] --checkpoint SRC --out DIR``: SRC is a checkpoint in any format the
family's ``checkpoint_filter_fn`` accepts (timm's, the authors', attnzoo's own), given as a file,
an http(s) URL or ``hf-hub:<org>/<repo>[/<file>]``; it is fetched and verified by
``attnzoo.hub``. Weights written by ``attnzoo train`` (``final.safetensors``, ``best.*``,
``checkpoint-*.pt``) record their model, class count, ``--model-kwargs``, input size and class
names: MODEL may be left out, and the folder rebuilds that model (``model_args`` in config.json)
with no extra arguments; ``--num-classes`` / ``--model-kwargs`` give them for other files. The
folder holds

* ``config.json``: timm's format (timm's ``save_config_for_hf``): architecture, num_classes,
  num_features, global_pool, label names, model_args, pretrained_cfg (mean / std / crop / input
  size / license);
* ``model.safetensors``: the model's own state dict (attnzoo's names; timm's for ``az_`` models);
* ``README.md``: a model card (model-index with the published top-1 where there is one, or the
  training run's own figures, params, GFLOPs, license, upstream source and paper, how to load it).

Before it reports success the folder is loaded back (``timm.create_model('local-dir:DIR')``) and
its logits are compared with the model built from SRC directly (fp32, relative error <= 1e-6).
The folder is written in a temporary sibling and renamed into place, so a failed conversion leaves
nothing; files already in DIR are never replaced unless ``--overwrite`` is given. Every bad input
ends in one line naming the argument or file and what was expected (exit status 2).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["add_arguments", "run", "convert", "OUTPUT_FILES"]

OUTPUT_FILES = ("config.json", "model.safetensors", "README.md")
TOLERANCE = 1e-6


class _Kwargs(argparse.Action):
    """``KEY=VALUE ...`` -> dict, values read as Python literals where they are one (timm's
    ``ParseKwargs`` convention, without importing timm for ``--help``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import ast

        out = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string}: expected KEY=VALUE, got {item!r}")
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
        setattr(namespace, self.dest, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a registered attnzoo model (attnzoo.list_models()); default: the model "
                        "recorded in SRC by attnzoo train")
    parser.add_argument("--checkpoint", required=True, metavar="SRC", help="checkpoint: a file, an http(s) URL or hf-hub:<org>/<repo>[/<file>]")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; existing files are kept unless --overwrite)")
    parser.add_argument("--repo", default=None, metavar="ORG/NAME", help="the Hub repo the folder is meant for (shown in the model card's load example)")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="classifier classes of SRC (default: recorded in SRC by attnzoo train, else the model's 1000)")
    parser.add_argument("--model-kwargs", nargs="*", default={}, action=_Kwargs, metavar="KEY=VALUE",
                        help="create_model keyword arguments SRC was trained with (default: recorded in SRC by attnzoo train)")
    parser.add_argument("--check-size", type=int, default=None, metavar="PX",
                        help="image size of the logits check (default: the model's pretrained input size)")
    parser.add_argument("--overwrite", action="store_true", help="replace config.json / model.safetensors / README.md already in DIR")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error (or set ATTNZOO_DEBUG=1)")


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Exit status 0 (written and checked), 2 (bad input: one line naming it), 1 (a failure)."""
    from attnzoo.hub import PretrainedLoadError
    from attnzoo.tools._errors import report

    def body() -> int:
        report_ = convert(args.model, args.checkpoint, args.out, repo=args.repo, check_size=args.check_size,
                          overwrite=args.overwrite, num_classes=args.num_classes, model_kwargs=args.model_kwargs or None)
        print(f"wrote {', '.join(OUTPUT_FILES)} to {report_['out']}: {report_['model']}, {report_['params_m']:.2f}M parameters, "
              f"logits of the folder vs {args.checkpoint}: relative error {report_['rel_err']:.2e} (<= {TOLERANCE:g})")
        return 0

    return report("attnzoo convert", body, input_errors=(PretrainedLoadError, ValueError, FileExistsError),
                  explained=(OSError,), debug=args.debug)


def _no_space(exc: OSError, out: Path) -> OSError:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return OSError(exc.errno, f"no space left on device writing {out}; nothing was replaced")
    return OSError(exc.errno, f"{(exc.strerror or str(exc)).lower()} writing {out}; nothing was replaced")


def _run_record(record: Dict, src: str) -> Dict:
    """The model settings ``attnzoo train`` recorded in a weights file (safetensors metadata strings
    or a training checkpoint's meta), parsed; {} for any other file."""
    def parsed(key):
        value = record.get(key)
        if isinstance(value, str):
            if value == "":
                return None
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    if not record.get("model"):
        return {}
    out = {k: parsed(k) for k in ("model", "num_classes", "model_kwargs", "img_size", "data_config", "class_names", "top1", "epoch", "data")}
    try:
        out["num_classes"] = int(out["num_classes"]) if out.get("num_classes") is not None else None
    except (TypeError, ValueError):
        raise ValueError(f"--checkpoint {src!r}: its recorded num_classes {record.get('num_classes')!r} is not a number") from None
    if out.get("model_kwargs") is not None and not isinstance(out["model_kwargs"], dict):
        raise ValueError(f"--checkpoint {src!r}: its recorded model_kwargs {record.get('model_kwargs')!r} are not a mapping")
    return out


def _model_card(name: str, cfg: Dict, params_m: float, gflops: Optional[float], gflops_size: int, repo: str,
                run: Optional[Dict] = None, num_classes: int = 1000, model_kwargs: Optional[Dict] = None) -> str:
    """The README.md of the repo: the published figures of upstream weights, or for weights trained
    by ``attnzoo train`` (``run``: what they record) the run's own figures and settings."""
    import attnzoo

    entry = attnzoo.get_entry(name)
    pub = entry.published
    upstream_license = cfg.get("license") or "unknown"
    license_ = "other" if run else upstream_license
    papers = cfg.get("paper_ids") or ""
    papers = [papers] if isinstance(papers, str) else list(papers)
    arxiv = [p.split(":", 1)[1] for p in papers if p.startswith("arXiv:")]
    front: List[str] = ["---", "tags:", "- image-classification", "- timm", "- attnzoo", "library_name: timm", f"license: {license_}"]
    if not run:
        front += ["datasets:", "- imagenet-1k"]
    if pub.top1 is not None and not run:
        front += [
            "model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-classification",
            "    dataset:", "      name: ImageNet-1k", "      type: imagenet-1k", "    metrics:",
            "    - type: top-1", f"      value: {pub.top1}", f"      name: top-1 accuracy ({pub.img_size} px, as published)",
            "    source:", f"      name: {pub.source}",
        ]
        if arxiv:
            front.append(f"      url: https://arxiv.org/abs/{arxiv[0]}")
    front.append("---")
    counted = "as published" if pub.gflops is not None and not run else "counted by attnzoo.tools.flops"
    gflops_text = f"{gflops:.2f} (at {gflops_size} px, {counted})" if gflops is not None else "not measured"
    if run:
        top1 = run.get("top1")
        kwargs_text = ", ".join(f"{k}={v}" for k, v in (model_kwargs or {}).items()) or "none"
        intro = (f"{entry.family} image classifier trained with `attnzoo train` "
                 f"([attnzoo](https://github.com/attnzoo/attnzoo)) and converted by `attnzoo convert`.")
        details = [
            f"- Architecture: `{name}`, model kwargs: {kwargs_text}, {num_classes} classes",
            f"- Parameters (M): {params_m:.2f}",
            f"- GFLOPs: {gflops_text}",
            f"- Trained on: {run.get('data') or 'the data of the run'}; top-1 on its validation split: "
            + (f"{float(top1):.2f}% (epoch {run.get('epoch')})" if top1 not in (None, "") else "not evaluated"),
            f"- Input size: {cfg.get('input_size')}, crop_pct {cfg.get('crop_pct')}, mean {cfg.get('mean')}, std {cfg.get('std')}",
            f"- License: set by the owner of these weights (edit this card); the {entry.family} architecture's upstream "
            f"weights are {upstream_license}",
            f"- Architecture source: {cfg.get('origin_url') or 'unknown'}",
        ]
    else:
        intro = (f"{entry.family} image classifier from [attnzoo](https://github.com/attnzoo/attnzoo), converted from the "
                 "upstream weights by `attnzoo convert`.")
        details = [
            f"- Parameters (M): {params_m:.2f}",
            f"- GFLOPs: {gflops_text}",
            f"- Published ImageNet-1k top-1: {pub.top1 if pub.top1 is not None else 'not published'}" + (f" ({pub.source})" if pub.top1 is not None else ""),
            f"- Input size: {cfg.get('input_size')}, crop_pct {cfg.get('crop_pct')}, mean {cfg.get('mean')}, std {cfg.get('std')}",
            f"- License: {license_} (the upstream weights' license)",
            f"- Upstream source: {cfg.get('origin_url') or 'unknown'}",
        ]
    body = [
        "", f"# {name}", "", intro, "", "## Model details", "", *details,
        f"- Paper: {', '.join(f'https://arxiv.org/abs/{a}' for a in arxiv) or ', '.join(papers) or 'unknown'}",
        "",
        "## How to load",
        "",
        "```python",
        "import attnzoo, timm  # importing attnzoo registers its architectures into timm",
        "",
        f"model = timm.create_model('hf-hub:{repo}', pretrained=True).eval()",
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)",
        "```",
        "",
        "attnzoo verifies the download (sha256 against the Hub's, finite floating tensors, shapes).",
        "",
    ]
    return "\n".join(front + body)


def convert(name: Optional[str], checkpoint: str, out: str, *, repo: Optional[str] = None, check_size: Optional[int] = None,
            overwrite: bool = False, num_classes: Optional[int] = None, model_kwargs: Optional[Dict] = None) -> Dict:
    """Writes the Hub repo folder ``out`` from ``checkpoint`` and checks it (see the module
    docstring). ``name`` None: the model recorded in the checkpoint. Returns a report: out, model,
    params_m, gflops, rel_err. Bad input raises ValueError / FileExistsError /
    ``attnzoo.hub.PretrainedLoadError`` naming it; a failed write an OSError ("nothing was replaced")."""
    import torch
    import timm
    from safetensors.torch import save
    from timm.models._hub import save_config_for_hf

    import attnzoo
    from attnzoo import hub
    from attnzoo._checkpoint import UnreadableCheckpoint, read_record
    from attnzoo.tools.flops import gflops_macs

    if name is not None:
        attnzoo.get_entry(name)  # ValueError naming the registered models, before any download
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out!r} exists and is not a folder")
    taken = [f for f in OUTPUT_FILES if (out_dir / f).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"--out {out!r} already has {', '.join(taken)}; pass --overwrite to replace them")
    if check_size is not None and check_size < 16:
        raise ValueError(f"--check-size must be >= 16 px, got {check_size}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {num_classes}")

    what = name or "attnzoo convert"
    src = hub.fetch_checkpoint(checkpoint, model=what, hint="download the file yourself and pass it: --checkpoint /path/to/file")
    try:
        run = _run_record(read_record(src), checkpoint)
    except UnreadableCheckpoint as exc:
        raise hub.PretrainedLoadError(f"{what}: checkpoint file {exc}") from None
    if name is None:
        if not run:
            raise ValueError(f"MODEL: required: {checkpoint!r} does not record its model (weights written by attnzoo train do); "
                             "name it: attnzoo convert MODEL --checkpoint ...")
        name = run["model"]
    entry = attnzoo.get_entry(name)
    if run and run["model"] != name:
        raise ValueError(f"MODEL {name!r}: {checkpoint!r} holds weights of {run['model']!r} (recorded by attnzoo train)")
    num_classes = num_classes or (run.get("num_classes") if run else None)
    model_kwargs = dict(model_kwargs if model_kwargs is not None else (run.get("model_kwargs") or {}))
    for key in ("num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay"):
        if key in model_kwargs:
            raise ValueError(f"--model-kwargs: {key} is not a model kwarg here" + ("; use --num-classes" if key == "num_classes" else ""))
    overlay: Dict = dict(file=src)
    build = dict(model_kwargs)
    if num_classes is not None:
        overlay["num_classes"] = build["num_classes"] = num_classes
    data = (run.get("data_config") or {}) if run else {}
    if run and run.get("img_size"):
        overlay["input_size"] = (3, int(run["img_size"]), int(run["img_size"]))
    for key in ("mean", "std"):
        if data.get(key):
            overlay[key] = tuple(data[key])
    for key in ("crop_pct", "interpolation", "crop_mode"):
        if data.get(key) is not None:
            overlay[key] = data[key]
    try:
        ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **build).eval()
    except TypeError as exc:
        raise ValueError(f"--model-kwargs: {name} does not take {sorted(model_kwargs)} ({exc})") from None
    cfg = dict(ref.pretrained_cfg)
    state = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    params_m = sum(p.numel() for p in ref.parameters()) / 1e6
    pub = entry.published
    gflops_size = int(cfg["input_size"][-1]) if run else pub.img_size
    gflops = pub.gflops if pub.gflops is not None and not run and not model_kwargs else gflops_macs(ref, gflops_size)
    label_names = None
    if run and isinstance(run.get("class_names"), list) and len(run["class_names"]) == ref.num_classes:
        label_names = [str(c) for c in run["class_names"]]
    elif ref.num_classes == 1000:
        from timm.data import ImageNetInfo

        label_names = ImageNetInfo().label_names()
    model_config: Dict = dict(label_names=label_names) if label_names else {}
    if run:
        model_config["pretrained_cfg"] = dict(tag="attnzoo-train", license="other")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.convert-"))
    try:
        try:
            # through Python's file API: a full disk raises (the Rust writer can leave a short file silently)
            (work / "model.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
            # timm's own writer, so timm.create_model('hf-hub:...') reads it as any timm repo (model_args included)
            save_config_for_hf(ref, str(work / "config.json"), model_config=model_config or None)
            config = json.loads((work / "config.json").read_text())
            for key in ("architecture", "num_classes", "num_features", "pretrained_cfg"):
                if key not in config:
                    raise ValueError(f"timm's config.json for {name} lacks {key!r}")
            (work / "README.md").write_text(_model_card(name, cfg, params_m, gflops, gflops_size, repo or f"ORG/{name}",
                                                        run=run or None, num_classes=ref.num_classes, model_kwargs=model_kwargs))
        except OSError as exc:
            raise _no_space(exc, out_dir) from None

        back = timm.create_model(f"local-dir:{work}", pretrained=True).eval()
        size = check_size or cfg["input_size"][-1]
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = ref(x).float(), back(x).float()
        rel_err = float((b - a).norm() / a.norm().clamp_min(1e-30))
        if not rel_err <= TOLERANCE:
            raise ValueError(f"{name}: logits of the written folder differ from the model built from {checkpoint!r} "
                             f"by {rel_err:.3g} (relative, > {TOLERANCE:g}); nothing was written")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in OUTPUT_FILES:
                os.replace(work / f, out_dir / f)
        except OSError as exc:
            raise _no_space(exc, out_dir) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dict(out=str(out_dir), model=name, params_m=params_m, gflops=gflops, rel_err=rel_err)
