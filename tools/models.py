"""``attnzoo models``: the table of every registered model, generated from the registry: name,
family, parameters and GFLOPs (counted on the model itself), published ImageNet-1k top-1 and where
it comes from, where the pretrained weights live, and their license.

``attnzoo models`` prints the table as markdown; ``--write docs/models.md`` writes the page the
repository carries, and ``--check docs/models.md`` exits 1 when that page differs from what the
registry gives now (tests/tools/test_models_doc.py runs the check, so the page cannot drift).
Models are built on the meta device: nothing is allocated and no weights are downloaded, so the
whole table takes well under a minute on a CPU.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["add_arguments", "run", "model_rows", "measured_figures", "render_markdown"]

_PAGE_HEADER = """# attnzoo models

Every model `import attnzoo` registers into timm, generated from the registry by
`attnzoo models --write docs/models.md` (do not edit by hand; `tests/tools/test_models_doc.py`
fails when this page and the registry disagree). Params and GFLOPs are counted on the model
itself (GFLOPs: multiply-adds of one image at the published resolution, attention counted by its
math); top-1 is the published ImageNet-1k figure, with its source in the notes below the table.
Weights: where `pretrained=True` reads them (a Hugging Face Hub repo or the authors' URL) and
their license; the code each family follows and its license are in [NOTICE](../NOTICE).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", metavar="NAME", help="one family only (any case), e.g. DiNAT")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--write", metavar="FILE", help="write the page (header, table, notes) to FILE, e.g. docs/models.md")
    out.add_argument("--check", metavar="FILE",
                     help="exit 1 (printing the difference) when FILE is not what --write would write")


def _weights(cfg: Dict) -> str:
    hub, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub:
        filename = cfg.get("hf_hub_filename")
        return f"Hub `{hub}`" + (f" (`{filename}`)" if filename else "")
    if url:
        host = url.split("/")[2] if "://" in url else url
        return f"[{host}]({url})"
    return "none released"


def model_rows(family: Optional[str] = None, known: Optional[Dict[str, Tuple[float, float]]] = None
               ) -> List[Dict[str, object]]:
    """One dict per registered model (of ``family``): name, family, params_m, gflops, top1, source,
    img_size, weights, license. ``known`` maps names to (params_m, gflops) already measured (read
    back from a page by ``measured_figures``); those models are not built."""
    import timm
    import torch

    import attnzoo
    from attnzoo import _registry
    from attnzoo.tools.flops import gflops_macs

    rows = []
    for name in attnzoo.list_models(family):
        entry = _registry.get_entry(name)
        pub = entry.published
        if known is not None and name in known:
            params_m, gflops = known[name]
        else:
            model = timm.create_model(name, pretrained=False, device="meta")
            params_m = sum(p.numel() for p in model.parameters()) / 1e6
            with torch.no_grad():
                gflops = gflops_macs(model, pub.img_size)
            del model
        cfg = timm.models.get_pretrained_cfg(name).to_dict()  # the default tag's: what pretrained=True reads
        rows.append(dict(name=name, family=entry.family, params_m=params_m, gflops=gflops, top1=pub.top1,
                         source=pub.source, img_size=pub.img_size, weights=_weights(cfg),
                         license=cfg.get("license") or "not stated"))
    return rows


def measured_figures(page: str) -> Dict[str, Tuple[float, float]]:
    """(params_m, gflops) of each model in a page ``render_markdown`` wrote."""
    figures = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            figures[cells[0].strip("`")] = (float(cells[2]), float(cells[3]))
    return figures


def _table(rows: Sequence[Dict[str, object]]) -> List[str]:
    from attnzoo.tools._report import Footnotes, markdown_table

    notes = Footnotes()
    cells = []
    for r in rows:
        top1 = "—" if r["top1"] is None else str(float(r["top1"]))
        cells.append([f"`{r['name']}`", str(r["family"]), f"{r['params_m']:.2f}", f"{r['gflops']:.2f}",
                      str(r["img_size"]), f"{top1} {notes.ref(str(r['source']))}", str(r["weights"]), str(r["license"])])
    lines = markdown_table(["model", "family", "params (M)", "GFLOPs", "img size", "top-1 (%)", "weights", "license"],
                           cells, [False, False, True, True, True, True, False, False])
    return lines + ["", "Sources of the published figures:", "", *notes.lines()]


def render_markdown(rows: Sequence[Dict[str, object]], page: bool = True) -> str:
    """The table (and with ``page`` the page's header) as markdown text ending in a newline."""
    lines = ([_PAGE_HEADER] if page else []) + _table(rows)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    prog = "attnzoo models"
    try:
        rows = model_rows(args.family)
    except ValueError as e:  # an unknown family names the registered ones
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        page = render_markdown(rows)
        path = Path(args.check)
        current = path.read_text() if path.is_file() else ""
        if current == page:
            print(f"{prog}: {path} is up to date ({len(rows)} models)")
            return 0
        diff = difflib.unified_diff(current.splitlines(), page.splitlines(), str(path), "registry", lineterm="")
        print("\n".join(diff))
        print(f"{prog}: {path} differs from the registry; regenerate it: attnzoo models --write {path}",
              file=sys.stderr)
        return 1
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_markdown(rows))
        print(f"{prog}: wrote {path} ({len(rows)} models)", file=sys.stderr)
        return 0
    sys.stdout.write(render_markdown(rows, page=False))
    return 0
