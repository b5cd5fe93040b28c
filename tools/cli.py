"""The ``attnzoo`` command line.

One sub-command per module. ``COMMANDS`` maps each name to a ``Command``: the module that runs it
(``run(args, argv) -> exit status``, imported only when the command runs), a one-line summary,
and where its arguments are defined. Parsing never imports torch: a command's arguments come
from a function in a module whose top level imports only the standard library (the command's own
module, or ``arguments="module:function"`` when that module imports torch at its top), loaded
without running the ``attnzoo`` package's ``__init__``. So ``attnzoo --help``, ``attnzoo <command>
--help`` and usage errors answer in a fraction of a second, and only a command that runs pays
for torch, timm and the models. The console script enters through ``attnzoo_cli``, which runs this
file without importing the ``attnzoo`` package; this file imports nothing heavy.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["COMMANDS", "Command", "build_parser", "main", "quiet_third_party_warnings"]


@dataclass(frozen=True)
class Command:
    module: str  # import path of the module whose run(args, argv) runs the command
    summary: str  # one line for `attnzoo --help`
    arguments: Optional[str] = None  # "module:function" adding the arguments; default: module's add_arguments


# Add a command with one line here.
COMMANDS: Dict[str, Command] = {
    "bench": Command("attnzoo.tools.bench", "parameters, GFLOPs and images/s of the models beside their published "
                     "top-1: a table and a picture (default: the smallest model of each family, a few minutes)",
                     "attnzoo.tools._arguments:bench"),
    "bench-ops": Command("attnzoo.tools.bench_ops", "each op's fused Triton kernels vs the reference and "
                         "FlexAttention (and more per op), case by case, with a roofline and peak memory",
                         "attnzoo.tools._arguments:bench_ops"),
    "bench-routed": Command("attnzoo.tools.bench_routed", "BiFormer's bi-level routing attention vs the authors' "
                            "legacy gather path: time and peak memory", "attnzoo.tools._arguments:bench_routed"),
    "models": Command("attnzoo.tools.models", "the table of registered models (params, GFLOPs, published top-1, "
                      "weights, license) as markdown; writes and checks docs/models.md"),
    "env": Command("attnzoo.tools.env", "versions, device and which backend can run where and why: paste it "
                   "into a bug report"),
    "train": Command("attnzoo.train.trainer", "train a classifier on timm's components (torchrun for DDP / FSDP2), "
                     "with exact resume", "attnzoo.train.config:add_train_arguments"),
    "validate": Command("attnzoo.train.validate", "top-1 / top-5, loss and images/s of saved weights on an image "
                        "folder", "attnzoo.train.config:add_validate_arguments"),
    "convert": Command("attnzoo.tools.convert", "an upstream checkpoint -> a timm-format Hub repo folder "
                       "(config.json, model.safetensors, model card), checked by loading it back"),
    "push": Command("attnzoo.tools.push", "publish a converted folder to the Hugging Face Hub (huggingface_hub "
                    "create_repo + upload_folder)"),
    "kernels": Command("attnzoo.tools.kernels", "compile every fused Triton kernel for sm_80 / sm_90 / sm_100 "
                       "without a GPU: registers, spills, shared memory, occupancy (exit 1 on a problem)"),
    "selftest": Command("attnzoo.tools.selftest", "check the fused Triton kernels against the reference on this GPU "
                        "(--small: under Triton's interpreter on the CPU)"),
    "export": Command("attnzoo.tools.export", "an ONNX / torch.export / AOTInductor file of a model, dynamic in batch "
                      "and size, verified against eager before it is written"),
    "bench-deploy": Command("attnzoo.tools.bench_deploy", "deployed speed on the CPU: eager vs torch.compile "
                            "(+freezing), an AOTInductor package and onnxruntime"),
    "install-mmcv": Command("attnzoo.tools.install_mmcv", "build (once, cached) and install mmcv 2.1.0 with ops for "
                            "MMDetection / MMSegmentation"),
}

_EPILOG = ("Run 'attnzoo COMMAND --help' for a command's options. To report a bug, include what 'attnzoo env' "
           "prints.")


def quiet_third_party_warnings() -> None:
    """Hides warnings and log lines that third-party packages emit about themselves and that a user
    of attnzoo can do nothing about; called by attnzoo's entry points (this command line), never on
    import of the library, so a program that imports attnzoo keeps its own settings."""
    # mmengine 0.10 imports pkg_resources (setuptools < 81 is pinned for it).
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    # torchvision's FX feature extractor notes that a model's train and eval graphs differ (dropout,
    # drop path): timm's features_only=True, feature_cls='fx' builds both on purpose.
    warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing the model in", category=UserWarning)
    # torch.utils.cpp_extension logs "No CUDA runtime is found, using CUDA_HOME=..." when it is first
    # imported (torch.compile's CPU code generation imports it) on a machine with a CUDA toolkit and
    # no GPU; `attnzoo env` says what CUDA there is and why not.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _module_and_attr(path: str):
    module, _, attr = path.partition(":")
    return module, attr


def _light_module(name: str):
    """Module ``name``: the imported one when it already is, else a detached copy executed without
    its parent packages (``attnzoo_cli.load_detached``), else an ordinary import."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        from attnzoo_cli import load_detached
    except ImportError:  # installed without the top-level helper: the ordinary (slower) import
        return importlib.import_module(name)
    module = load_detached(name)
    return module if module is not None else importlib.import_module(name)


def argument_function(command: Command) -> Callable[[argparse.ArgumentParser], None]:
    """The function that adds ``command``'s arguments to a parser, loaded without importing torch."""
    module, attr = _module_and_attr(command.arguments or f"{command.module}:add_arguments")
    return getattr(_light_module(module), attr)


def describe(command: Command) -> str:
    """The first paragraph of ``command.module``'s docstring as one line of text (read from its
    source file, not imported); the summary when there is none."""
    try:
        from attnzoo_cli import find_spec

        spec = find_spec(command.module)
        origin = spec.origin if spec is not None else None
    except ImportError:
        origin = getattr(importlib.import_module(command.module), "__file__", None)
    doc = None
    if origin and origin.endswith(".py"):
        with open(origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()))
    if not doc:
        return command.summary
    paragraph = doc.strip().split("\n\n")[0]
    return re.sub(r"``([^`]+)``", r"\1", " ".join(paragraph.split()))


def build_parser(load: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the sub-commands named in ``load`` get their full description and arguments,
    the others only their name and summary."""
    parser = argparse.ArgumentParser(prog="attnzoo", description="attnzoo: vision backbones from one library of "
                                     "attention mixers.", epilog=_EPILOG)
    parser.add_argument("--version", action=_VersionAction, help="print the installed attnzoo version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.summary, description=command.summary)
        if name in load:
            sub.description = describe(command)
            argument_function(command)(sub)
    return parser


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    # The only top-level option (--version) takes no value, so the first non-option is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(load=[command] if command in COMMANDS else []).parse_args(argv)
    quiet_third_party_warnings()
    module = importlib.import_module(COMMANDS[args.command].module)
    return module.run(args, argv[argv.index(args.command) + 1:])


if __name__ == "__main__":
    sys.exit(main())
