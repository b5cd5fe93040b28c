"""The ``attnzoo`` command line.

One subcommand per tool module; each module gives ``add_arguments(parser)`` and
``run(args, argv) -> exit status``; ``_COMMANDS`` lists them.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from attnzoo import __version__
from attnzoo.tools import bench, bench_ops, bench_routed, install_mmcv

# name -> (module, one-line help)
_COMMANDS = {
    "bench": (bench, "parameters, GFLOPs and images/s of the registered models, as a markdown table"),
    "bench-ops": (bench_ops, "gna's fused Triton kernels vs the reference, FlexAttention and dense SDPA per attention pattern, with a roofline"),
    "bench-routed": (bench_routed, "BiFormer bi-level routing attention vs the authors' legacy gather path: time and peak memory"),
    "install-mmcv": (install_mmcv, "build (once, cached) and install mmcv 2.1.0 with ops for MMDetection / MMSegmentation"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description="attnzoo: vision backbones from one library of attention mixers.")
    parser.add_argument("--version", action="version", version=f"attnzoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return args._run(args, argv[argv.index(args.command) + 1:])


if __name__ == "__main__":
    sys.exit(main())
