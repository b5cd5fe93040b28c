"""The ``attnzoo`` command line.

One sub-command per tool module. ``COMMANDS`` maps each name to the module's import path and a
one-line help; the module gives ``add_arguments(parser)`` and ``run(args, argv) -> exit status``
and is imported only when its sub-command is named, so ``attnzoo --help`` imports neither torch
nor the models (the console script enters through ``attnzoo_cli``, which runs this file without
importing the ``attnzoo`` package). This file imports nothing heavy at module level.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> (module import path, one-line help). Add a command with one line here.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "bench": ("attnzoo.tools.bench", "parameters, GFLOPs and latency of the registered models, as a markdown table"),
    "bench-ops": ("attnzoo.tools.bench_ops", "each op's fused Triton kernels vs the reference and FlexAttention (and more per op), case by case, with a roofline and peak memory"),
    "bench-routed": ("attnzoo.tools.bench_routed", "BiFormer bi-level routing attention vs the authors' legacy gather path: time and peak memory"),
    "install-mmcv": ("attnzoo.tools.install_mmcv", "build (once, cached) and install mmcv 2.1.0 with ops for MMDetection / MMSegmentation"),
    "train": ("attnzoo.train.trainer", "train a classifier on timm's components (torchrun for DDP / FSDP2), with exact resume"),
    "validate": ("attnzoo.train.validate", "top-1 / top-5, loss and images/s of saved weights on an image folder"),
    "convert": ("attnzoo.tools.convert", "an upstream checkpoint -> a timm-format Hub repo folder (config.json, model.safetensors, model card), checked by loading it back"),
    "push": ("attnzoo.tools.push", "publish a converted folder to the Hugging Face Hub (huggingface_hub create_repo + upload_folder)"),
    "bench-deploy": ("attnzoo.tools.bench_deploy", "deployed speed on the CPU: eager vs torch.compile (+freezing), an AOTInductor package and onnxruntime"),
    "export": ("attnzoo.tools.export", "ONNX / torch.export / AOTInductor file of a model, dynamic in batch and size, verified against eager"),
}


class _VersionAction(argparse.Action):
    """``--version``: reads the installed distribution's version only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("attnzoo")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"attnzoo {text}")
        parser.exit()


def build_parser(load: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the sub-commands named in ``load`` get their module's arguments (the module is
    imported), the others only their name and help."""
    parser = argparse.ArgumentParser(prog="attnzoo", description="attnzoo: vision backbones from one library of attention mixers.")
    parser.add_argument("--version", action=_VersionAction, help="print the installed attnzoo version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_path, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name in load:
            module = importlib.import_module(module_path)
            sub.description = (module.__doc__ or help_text).strip().splitlines()[0]
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    # The only top-level option (--version) takes no value, so the first non-option is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(load=[command] if command in COMMANDS else []).parse_args(argv)
    return args._run(args, argv[argv.index(args.command) + 1:])


if __name__ == "__main__":
    sys.exit(main())
