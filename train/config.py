"""Arguments of ``attnzoo train`` / ``attnzoo validate``: the parser (timm's spellings), the
layering of defaults (built-in < ``--recipe`` < ``--config`` YAML < command line) and the
checks of bad input that run before any work starts.

Batch size: ``--batch-size`` is the number of images per process per optimizer step; with
``--grad-accum-steps K`` it is split into K micro-batches of ``batch-size / K`` (so K changes
memory, not the result). The global batch is ``batch-size x world size``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


class ParseKwargs(argparse.Action):
    """timm's ``ParseKwargs`` (``KEY=VALUE`` pairs -> a dict), imported when an argument is parsed:
    this module stays free of torch / timm imports so ``attnzoo train --help`` answers at once."""

    def __call__(self, parser, namespace, values, option_string=None):
        from timm.utils import ParseKwargs as TimmParseKwargs

        TimmParseKwargs.__call__(self, parser, namespace, values, option_string)


__all__ = [
    "TrainInputError", "add_train_arguments", "add_validate_arguments", "parse_with_defaults",
    "load_yaml_defaults", "list_recipes", "load_recipe", "recipe_defaults", "check_model_name",
    "check_output_dir", "resolve_split_dir", "check_image_folder", "check_train_args",
]

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
_VAL_SPLITS = ("validation", "val", "valid", "eval", "evaluation")


class TrainInputError(ValueError):
    """Bad input to ``attnzoo train`` / ``validate``; the message names the argument and what it accepts."""


# ------------------------------------------------------------------------------------------------
# parsers


def _common_model_data(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", metavar="NAME", help="timm model name (attnzoo's are registered on import), e.g. nat_mini")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                   help="extra create_model keyword arguments, e.g. embed_dim=32 'depths=(1,1,1,1)'")
    g.add_argument("--num-classes", type=int, metavar="N", help="classifier classes (default: the dataset's)")
    g.add_argument("--img-size", type=int, metavar="N", help="input size (default: the model's pretrained cfg)")
    g.add_argument("--crop-pct", type=float, metavar="F", help="eval center-crop fraction (default: the model's)")
    g.add_argument("--mean", type=float, nargs=3, metavar="F", help="normalisation mean (default: the model's)")
    g.add_argument("--std", type=float, nargs=3, metavar="F", help="normalisation std (default: the model's)")
    g.add_argument("--interpolation", default="", metavar="NAME", help="resize interpolation (default: the model's)")
    g.add_argument("--data-dir", metavar="DIR", help="dataset root: an image folder with train/ and val/ (or validation/) class folders")
    g.add_argument("--dataset", default="", metavar="NAME",
                   help="timm dataset name: '' (image folder, default), 'hfds/<name>', 'wds/<name>', 'torch/<name>'")
    g.add_argument("--val-split", default="validation", metavar="NAME", help="evaluation split (default: validation; val/valid/eval are found too)")
    g.add_argument("--workers", "-j", type=int, default=2, metavar="N", help="data-loading processes per rank (default: 2)")
    g.add_argument("--validation-batch-size", type=int, metavar="N", help="eval batch size per process (default: --batch-size)")
    g.add_argument("--amp", action="store_true", help="autocast mixed precision")
    g.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"), help="autocast dtype (default: float16)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--device", metavar="DEV", help="cuda or cpu (default: cuda when available); under torchrun each rank takes cuda:LOCAL_RANK")
    g.add_argument("--seed", type=int, default=42, metavar="N", help="random seed (default: 42)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML file whose keys are these arguments' names (timm's convention)")
    parser.add_argument("--recipe", metavar="FAMILY", help="a family's published ImageNet-1k recipe (train/recipes/<family>.yaml) or a recipe file")
    _common_model_data(parser)
    parser.add_argument("--pretrained", action="store_true", help="start from the model's pretrained weights")
    parser.add_argument("--train-split", default="train", metavar="NAME", help="training split (default: train)")
    parser.add_argument("--batch-size", "-b", type=int, default=128, metavar="N",
                        help="images per process per optimizer step (default: 128); split into --grad-accum-steps micro-batches")
    parser.add_argument("--grad-accum-steps", type=int, default=1, metavar="K", help="micro-batches per optimizer step (default: 1)")
    parser.add_argument("--epochs", type=int, default=100, metavar="N", help="epochs (default: 100)")
    g = parser.add_argument_group("optimizer and schedule")
    g.add_argument("--opt", default="adamw", metavar="NAME", help="timm optimizer name (default: adamw)")
    g.add_argument("--opt-eps", type=float, metavar="F", help="optimizer epsilon")
    g.add_argument("--opt-betas", type=float, nargs="+", metavar="F", help="optimizer betas")
    g.add_argument("--momentum", type=float, default=0.9, metavar="F", help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=0.05, metavar="F", help="weight decay (default: 0.05; none on norms, biases and no_weight_decay())")
    g.add_argument("--layer-decay", type=float, metavar="F", help="layer-wise lr decay through the model's group_matcher")
    g.add_argument("--lr", type=float, metavar="LR", help="learning rate (default: --lr-base scaled by the global batch)")
    g.add_argument("--lr-base", type=float, default=1e-3, metavar="LR", help="lr at --lr-base-size images per step (default: 1e-3)")
    g.add_argument("--lr-base-size", type=int, default=1024, metavar="N", help="global batch of --lr-base (default: 1024)")
    g.add_argument("--lr-base-scale", default="linear", choices=("linear", "sqrt"), help="how lr scales with the global batch (default: linear)")
    g.add_argument("--sched", default="cosine", metavar="NAME", help="timm scheduler name (default: cosine), stepped every update")
    g.add_argument("--min-lr", type=float, default=1e-6, metavar="LR", help="final lr (default: 1e-6)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, metavar="LR", help="lr at the start of warmup (default: 1e-6)")
    g.add_argument("--warmup-epochs", type=int, default=5, metavar="N", help="linear warmup epochs (default: 5)")
    g.add_argument("--cooldown-epochs", type=int, default=0, metavar="N", help="epochs at --min-lr after the schedule (default: 0)")
    g.add_argument("--decay-epochs", type=float, default=90, metavar="N", help="step scheduler: epochs between decays")
    g.add_argument("--decay-rate", type=float, default=0.1, metavar="F", help="step scheduler: decay factor")
    g.add_argument("--clip-grad", type=float, metavar="F", help="gradient clipping threshold (default: none)")
    g.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="gradient clipping mode (default: norm)")
    g = parser.add_argument_group("regularisation and augmentation")
    g.add_argument("--drop", type=float, default=0.0, metavar="P", help="classifier dropout (default: 0)")
    g.add_argument("--drop-path", type=float, metavar="P", help="stochastic depth rate (default: the model's)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup alpha (default: 0, off)")
    g.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="cutmix alpha (default: 0, off)")
    g.add_argument("--mixup-prob", type=float, default=1.0, metavar="P", help="probability of mixup or cutmix per batch (default: 1)")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, metavar="P", help="probability of cutmix when both are on (default: 0.5)")
    g.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="mixup mode (default: batch)")
    g.add_argument("--smoothing", type=float, default=0.1, metavar="EPS", help="label smoothing (default: 0.1)")
    g.add_argument("--aa", metavar="POLICY", help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (default: none)")
    g.add_argument("--reprob", type=float, default=0.0, metavar="P", help="random erasing probability (default: 0)")
    g.add_argument("--remode", default="pixel", metavar="MODE", help="random erasing mode (default: pixel)")
    g.add_argument("--recount", type=int, default=1, metavar="N", help="random erasing count (default: 1)")
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), metavar="F", help="random-resized-crop area range (default: 0.08 1)")
    g.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar="F", help="random-resized-crop aspect range")
    g.add_argument("--hflip", type=float, default=0.5, metavar="P", help="horizontal flip probability (default: 0.5)")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="F", help="color jitter (default: 0.4; off when --aa is set)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm's ModelEmaV3) and evaluate it too")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, metavar="F", help="EMA decay (default: 0.9998)")
    g.add_argument("--model-ema-warmup", action="store_true", help="EMA decay warmup")
    g = parser.add_argument_group("speed and memory")
    g.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing per stage")
    g.add_argument("--compile", action="store_true", help="torch.compile(model)")
    g.add_argument("--fsdp", action="store_true", help="FSDP2: fully_shard each stage and the root (under torchrun)")
    g.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True) (exact resume on CUDA)")
    g = parser.add_argument_group("checkpoints and logs")
    g.add_argument("--output", default="output/train", metavar="DIR", help="run folder: checkpoints, metrics, plot, weights (default: output/train)")
    g.add_argument("--resume", metavar="FILE|auto", help="checkpoint to continue from; 'auto' takes the newest loadable one in --output")
    g.add_argument("--checkpoint-hist", type=int, default=3, metavar="N", help="recent checkpoints kept (default: 3)")
    g.add_argument("--save-interval-steps", type=int, default=0, metavar="N", help="also checkpoint every N steps inside an epoch (default: 0, epoch ends only)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="steps between rows of steps.csv (default: 50)")
    g.add_argument("--eval-interval", type=int, default=1, metavar="N", help="epochs between evaluations (default: 1; the last epoch always)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error (or set ATTNZOO_DEBUG=1)")


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    _common_model_data(parser)
    parser.add_argument("--checkpoint", metavar="FILE", help="weights: a training checkpoint (.pt) or a .safetensors file")
    parser.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    parser.add_argument("--batch-size", "-b", type=int, default=128, metavar="N", help="images per process per batch (default: 128)")
    parser.add_argument("--results-file", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error (or set ATTNZOO_DEBUG=1)")


def load_yaml_defaults(path: str, parser: argparse.ArgumentParser, what: str = "--config") -> Dict[str, Any]:
    """The keys of a YAML file as parser defaults (``batch-size`` and ``batch_size`` both work)."""
    import yaml

    if not os.path.isfile(path):
        raise TrainInputError(f"{what}: {path!r} is not a file")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise TrainInputError(f"{what}: {path!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TrainInputError(f"{what}: {path!r} must hold a mapping of argument names to values")
    return _known_keys(data, parser, f"{what} {path!r}")


def _known_keys(data: Dict[str, Any], parser: argparse.ArgumentParser, where: str) -> Dict[str, Any]:
    dests = {a.dest for a in parser._actions}
    out, unknown = {}, []
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        (out.__setitem__(dest, value) if dest in dests else unknown.append(key))
    if unknown:
        raise TrainInputError(f"{where}: unknown keys {unknown}; keys are the argument names (e.g. batch_size, lr, drop_path)")
    return out


# ------------------------------------------------------------------------------------------------
# recipes


def list_recipes() -> List[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Dict[str, Any]:
    """A recipe file: ``family``, ``source`` (list of where each figure comes from), ``train`` (argument
    defaults) and ``variants`` (per-model overrides, e.g. drop_path)."""
    import yaml

    path = Path(name_or_path)
    if not (name_or_path.endswith((".yaml", ".yml")) and path.is_file()):
        path = RECIPE_DIR / f"{name_or_path.lower()}.yaml"
        if not path.is_file():
            raise TrainInputError(f"--recipe: unknown recipe {name_or_path!r}; known: {', '.join(list_recipes())} (or a .yaml path)")
    with open(path) as f:
        recipe = yaml.safe_load(f)
    missing = [k for k in ("family", "source", "train", "variants") if k not in (recipe or {})]
    if missing:
        raise TrainInputError(f"--recipe: {str(path)!r} lacks {missing}")
    recipe["path"] = str(path)
    return recipe


def recipe_defaults(recipe: Dict[str, Any], model: Optional[str], parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """The argument defaults a recipe gives ``model`` (its family defaults plus the variant's)."""
    where = f"--recipe {recipe['path']!r}"
    out = _known_keys(dict(recipe["train"]), parser, where)
    variants = recipe["variants"] or {}
    if model is not None:
        if model not in variants:
            raise TrainInputError(f"--recipe {recipe['family']}: no settings for --model {model!r}; the recipe covers {', '.join(variants)}")
        out.update(_known_keys(dict(variants[model] or {}), parser, where))
    return out


def parse_with_defaults(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of ``--recipe`` and then ``--config`` layered under it."""
    args = parser.parse_args(argv)
    defaults: Dict[str, Any] = {}
    recipe_name = getattr(args, "recipe", None)
    config_defaults = load_yaml_defaults(args.config, parser) if getattr(args, "config", None) else {}
    recipe_name = recipe_name or config_defaults.get("recipe")
    if recipe_name:
        model = args.model or config_defaults.get("model")
        defaults.update(recipe_defaults(load_recipe(recipe_name), model, parser))
    defaults.update(config_defaults)
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    for key in ("scale", "ratio", "mean", "std", "opt_betas"):
        if isinstance(getattr(args, key, None), list):
            setattr(args, key, tuple(getattr(args, key)))
    return args


# ------------------------------------------------------------------------------------------------
# checks (before any work)


def check_model_name(name: Optional[str]) -> None:
    import timm
    import attnzoo  # noqa: F401  (registers attnzoo's models)

    if not name:
        raise TrainInputError("--model: required (a timm model name, e.g. nat_mini; `attnzoo.list_models()` lists attnzoo's)")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise TrainInputError(f"--model: unknown model {name!r}{hint}")


def check_output_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrainInputError(f"--output: {path!r} is not a writable directory ({e.strerror or e})") from None
    return out


def resolve_split_dir(data_dir: Path, split: str, aliases: Sequence[str] = ()) -> Optional[Path]:
    for name in (split, *aliases):
        if (data_dir / name).is_dir():
            return data_dir / name
    return None


def check_image_folder(root: Path, what: str) -> Tuple[List[str], int]:
    """The class folders of an image-folder split and the image count; errors name the folder."""
    from timm.data.readers.img_extensions import get_img_extensions

    exts = get_img_extensions(as_set=True)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TrainInputError(f"{what}: {str(root)!r} has no class folders (expected <split>/<class>/<image>)")
    total = 0
    for c in classes:
        n = sum(1 for f in c.rglob("*") if f.suffix.lower() in exts and f.is_file())
        if n == 0:
            raise TrainInputError(f"{what}: class folder {str(c)!r} has no images ({', '.join(sorted(exts))})")
        total += n
    return [c.name for c in classes], total


def check_train_args(args: argparse.Namespace, world_size: int = 1) -> None:
    """Argument ranges (raise TrainInputError naming the argument)."""
    def positive(name, value, allow_zero=False):
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise TrainInputError(f"--{name.replace('_', '-')}: must be {'>= 0' if allow_zero else '>= 1'}, got {value}")

    for name in ("batch_size", "grad_accum_steps", "epochs", "checkpoint_hist", "eval_interval", "log_interval"):
        positive(name, getattr(args, name))
    for name in ("workers", "warmup_epochs", "save_interval_steps", "cooldown_epochs"):
        positive(name, getattr(args, name), allow_zero=True)
    positive("validation_batch_size", args.validation_batch_size)
    positive("num_classes", args.num_classes)
    positive("img_size", args.img_size)
    if args.batch_size % args.grad_accum_steps:
        raise TrainInputError(f"--batch-size {args.batch_size} is not divisible by --grad-accum-steps {args.grad_accum_steps} "
                              f"(the batch is split into that many equal micro-batches)")
    if (args.mixup > 0 or args.cutmix > 0) and (args.batch_size // args.grad_accum_steps) % 2:
        raise TrainInputError(f"--mixup / --cutmix need an even micro-batch (--batch-size / --grad-accum-steps), got {args.batch_size // args.grad_accum_steps}")
    for name in ("smoothing", "reprob", "mixup_prob", "mixup_switch_prob", "hflip", "drop", "drop_path"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            raise TrainInputError(f"--{name.replace('_', '-')}: must be in [0, 1], got {v}")
    if args.lr is not None and args.lr <= 0:
        raise TrainInputError(f"--lr: must be > 0, got {args.lr}")
    if args.fsdp and world_size < 2:
        raise TrainInputError("--fsdp: shards over the processes of a torchrun launch; start it with torchrun --nproc-per-node N (N >= 2)")
    if args.fsdp and args.model_ema:
        raise TrainInputError("--fsdp with --model-ema is not supported (the EMA copy would not be sharded); drop one of them")
    if args.resume not in (None, "auto") and not os.path.isfile(args.resume):
        raise TrainInputError(f"--resume: {args.resume!r} is not a file (give a checkpoint file or 'auto')")
