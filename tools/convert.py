"""Convert an upstream checkpoint into a timm-format Hub repo folder (config.json, model.safetensors, README.md), checked by loading it back.

``attnzoo convert MODEL --checkpoint SRC --out DIR``: SRC is a checkpoint in any format the
family's ``checkpoint_filter_fn`` accepts (timm's, the authors', attnzoo's own), given as a file,
an http(s) URL or ``hf-hub:<org>/<repo>[/<file>]``; it is fetched and verified by
``attnzoo.hub``. The folder holds

* ``config.json``: timm's format (timm's ``save_config_for_hf``): architecture, num_classes,
  num_features, global_pool, label names, pretrained_cfg (mean / std / crop / input size / license);
* ``model.safetensors``: the model's own state dict (attnzoo's names; timm's for ``az_`` models);
* ``README.md``: a model card (model-index with the published top-1 where there is one, params,
  GFLOPs at the published size, license, upstream source and paper, how to load it).

Before it reports success the folder is loaded back (``timm.create_model('local-dir:DIR')``) and
its logits are compared with the model built from SRC directly (fp32, relative error <= 1e-6).
The folder is written in a temporary sibling and renamed into place, so a failed conversion leaves
nothing; files already in DIR are never replaced unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["add_arguments", "run", "convert", "OUTPUT_FILES"]

OUTPUT_FILES = ("config.json", "model.safetensors", "README.md")
TOLERANCE = 1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registered attnzoo model (attnzoo.list_models())")
    parser.add_argument("--checkpoint", required=True, metavar="SRC", help="upstream checkpoint: a file, an http(s) URL or hf-hub:<org>/<repo>[/<file>]")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; existing files are kept unless --overwrite)")
    parser.add_argument("--repo", default=None, metavar="ORG/NAME", help="the Hub repo the folder is meant for (shown in the model card's load example)")
    parser.add_argument("--check-size", type=int, default=None, metavar="PX",
                        help="image size of the logits check (default: the model's pretrained input size)")
    parser.add_argument("--overwrite", action="store_true", help="replace config.json / model.safetensors / README.md already in DIR")


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from attnzoo.hub import PretrainedLoadError

    try:
        report = convert(args.model, args.checkpoint, args.out, repo=args.repo, check_size=args.check_size, overwrite=args.overwrite)
    except (PretrainedLoadError, ValueError, FileExistsError) as exc:
        print(f"attnzoo convert: {exc}")
        return 1
    print(f"wrote {', '.join(OUTPUT_FILES)} to {report['out']}: {report['params_m']:.2f}M parameters, "
          f"logits of the folder vs {args.checkpoint}: relative error {report['rel_err']:.2e} (<= {TOLERANCE:g})")
    return 0


def _model_card(name: str, model, cfg: Dict, params_m: float, gflops: Optional[float], gflops_size: int, repo: str) -> str:
    import attnzoo

    entry = attnzoo.get_entry(name)
    pub = entry.published
    license_ = cfg.get("license") or "unknown"
    papers = cfg.get("paper_ids") or ""
    papers = [papers] if isinstance(papers, str) else list(papers)
    arxiv = [p.split(":", 1)[1] for p in papers if p.startswith("arXiv:")]
    front: List[str] = ["---", "tags:", "- image-classification", "- timm", "- attnzoo", "library_name: timm", f"license: {license_}"]
    front += ["datasets:", "- imagenet-1k"]
    if pub.top1 is not None:
        front += [
            "model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-classification",
            "    dataset:", "      name: ImageNet-1k", "      type: imagenet-1k", "    metrics:",
            "    - type: top-1", f"      value: {pub.top1}", f"      name: top-1 accuracy ({pub.img_size} px, as published)",
            "    source:", f"      name: {pub.source}",
        ]
        if arxiv:
            front.append(f"      url: https://arxiv.org/abs/{arxiv[0]}")
    front.append("---")
    gflops_text = f"{gflops:.2f} (at {gflops_size} px, {'as published' if pub.gflops is not None else 'counted by attnzoo.tools.flops'})" if gflops is not None else "not measured"
    body = [
        "",
        f"# {name}",
        "",
        f"{entry.family} image classifier from [attnzoo](https://github.com/attnzoo/attnzoo), converted from the upstream weights by `attnzoo convert`.",
        "",
        "## Model details",
        "",
        f"- Parameters (M): {params_m:.2f}",
        f"- GFLOPs: {gflops_text}",
        f"- Published ImageNet-1k top-1: {pub.top1 if pub.top1 is not None else 'not published'}" + (f" ({pub.source})" if pub.top1 is not None else ""),
        f"- Input size: {cfg.get('input_size')}, crop_pct {cfg.get('crop_pct')}, mean {cfg.get('mean')}, std {cfg.get('std')}",
        f"- License: {license_} (the upstream weights' license)",
        f"- Upstream source: {cfg.get('origin_url') or 'unknown'}",
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


def convert(name: str, checkpoint: str, out: str, *, repo: Optional[str] = None, check_size: Optional[int] = None,
            overwrite: bool = False) -> Dict:
    """Writes the Hub repo folder ``out`` for ``name`` from ``checkpoint`` and checks it (see the
    module docstring). Returns a report: out, params_m, gflops, rel_err."""
    import torch
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    import attnzoo
    from attnzoo import hub
    from attnzoo.tools.flops import gflops_macs

    entry = attnzoo.get_entry(name)  # ValueError naming the registered models
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out!r} exists and is not a folder")
    taken = [f for f in OUTPUT_FILES if (out_dir / f).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"--out {out!r} already has {', '.join(taken)}; pass --overwrite to replace them")
    if check_size is not None and check_size < 32:
        raise ValueError(f"--check-size must be >= 32 px, got {check_size}")

    src = hub.fetch_checkpoint(checkpoint, model=name)
    ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=src)).eval()
    cfg = dict(ref.pretrained_cfg)
    state = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    params_m = sum(p.numel() for p in ref.parameters()) / 1e6
    pub = entry.published
    gflops = pub.gflops if pub.gflops is not None else gflops_macs(ref, pub.img_size)
    label_names = None
    if ref.num_classes == 1000:
        from timm.data import ImageNetInfo

        label_names = ImageNetInfo().label_names()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.convert-"))
    try:
        save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
        # timm's own writer, so timm.create_model('hf-hub:...') reads it as any timm repo
        save_config_for_hf(ref, str(work / "config.json"), model_config=dict(label_names=label_names) if label_names else None)
        config = json.loads((work / "config.json").read_text())
        for key in ("architecture", "num_classes", "num_features", "pretrained_cfg"):
            if key not in config:
                raise ValueError(f"timm's config.json for {name} lacks {key!r}")
        (work / "README.md").write_text(_model_card(name, ref, cfg, params_m, gflops, pub.img_size, repo or f"ORG/{name}"))

        back = timm.create_model(f"local-dir:{work}", pretrained=True).eval()
        size = check_size or cfg["input_size"][-1]
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = ref(x).float(), back(x).float()
        rel_err = float((b - a).norm() / a.norm().clamp_min(1e-30))
        if not rel_err <= TOLERANCE:
            raise ValueError(f"{name}: logits of the written folder differ from the model built from {checkpoint!r} "
                             f"by {rel_err:.3g} (relative, > {TOLERANCE:g}); nothing was written")
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in OUTPUT_FILES:
            os.replace(work / f, out_dir / f)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dict(out=str(out_dir), params_m=params_m, gflops=gflops, rel_err=rel_err)
