"""``attnzoo validate``: top-1 / top-5, loss and images/s of saved weights on an image folder's
evaluation split, computed by the same function as the training loop's evaluation (so the same
weights, data, input size and batch size give the same figures).

Weights: a training checkpoint (``checkpoint-*.pt`` / ``best.pt``; ``--use-ema`` takes its EMA),
a ``.safetensors`` file written by ``attnzoo train`` or any state dict; ``--model``,
``--model-kwargs`` and the number of classes come from the file when it records them (every file
``attnzoo train`` writes does), and the file is checked against its ``.sha256`` sidecar. Runs under
torchrun too (the set is sharded)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from .config import TrainInputError, add_validate_arguments, check_model_name

__all__ = ["add_arguments", "run", "validate", "read_weights"]

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _warn(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"attnzoo validate: warning: {message}", file=sys.stderr, flush=True)


def _record(meta: Dict[str, Any], path: str) -> Dict[str, Any]:
    """model / num_classes / model_kwargs from a weights file's record (safetensors metadata strings
    or a training checkpoint's meta)."""
    def parsed(key):
        value = meta.get(key)
        return (json.loads(value) if value else None) if isinstance(value, str) else value

    try:
        num_classes, img_size = meta.get("num_classes"), meta.get("img_size")
        return {"model": meta.get("model") or None,
                "num_classes": int(num_classes) if num_classes not in (None, "") else None,
                "model_kwargs": parsed("model_kwargs") or None,
                "img_size": int(img_size) if img_size not in (None, "") else None,
                "data_config": parsed("data_config") or {}}
    except (TypeError, ValueError) as e:
        raise TrainInputError(f"--checkpoint: {path!r} records its model settings unreadably ({e})") from None


def read_weights(path: str, use_ema: bool = False, warn=_warn) -> (Dict[str, torch.Tensor], Dict[str, Any]):
    """State dict and what the file says about the model (model, num_classes, model_kwargs).

    Any weights file: a training checkpoint (``.pt``), a ``.safetensors`` file (attnzoo train's
    record in its metadata) or a plain state dict; the format is read from the bytes. A file with a
    ``.sha256`` sidecar must match it; one of ``attnzoo train``'s without it is loaded with a warning."""
    from attnzoo._checkpoint import DigestMismatch, UnreadableCheckpoint, read_checkpoint_file, unwrap_state_dict, verify_digest

    from .checkpoint import no_digest_warning

    if not path or not os.path.isfile(path):
        raise TrainInputError(f"--checkpoint: {path!r} is not a file")
    try:
        verified = verify_digest(path)
        obj, metadata = read_checkpoint_file(path)
    except (DigestMismatch, UnreadableCheckpoint) as e:
        raise TrainInputError(f"--checkpoint: {e}") from None
    training = isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and "model" in obj
    if verified is None and (training or metadata.get("model")):
        warn(no_digest_warning(Path(path)))
    if training:
        info = _record(obj["meta"], path)
        if use_ema:
            if obj.get("ema") is None:
                raise TrainInputError(f"--use-ema: {path!r} has no EMA weights (trained without --model-ema)")
            return {k[len("module."):]: v for k, v in obj["ema"].items() if k.startswith("module.")}, info
        return obj["model"], info
    if use_ema:
        raise TrainInputError(f"--use-ema: only for training checkpoints (.pt); {path!r} holds one set of weights")
    state = unwrap_state_dict(obj)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainInputError(f"--checkpoint: {path!r} holds no state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}, _record(metadata, path)


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    from .data import build_datasets, eval_loader
    from .trainer import Dist, create_model, data_transforms, evaluate

    dist = Dist(args.device)
    if args.batch_size < 1:
        raise TrainInputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.img_size is not None and args.img_size < 1:
        raise TrainInputError(f"--img-size: must be >= 1, got {args.img_size}")
    state, info = read_weights(args.checkpoint, args.use_ema) if args.checkpoint else ({}, {})
    args.model = args.model or info.get("model")  # attnzoo train records it in every weights file
    check_model_name(args.model)
    if info.get("model") not in (None, args.model):
        raise TrainInputError(f"--checkpoint: {args.checkpoint!r} holds weights of --model {info['model']!r}, not {args.model!r}")
    if not args.model_kwargs and info.get("model_kwargs"):
        args.model_kwargs = info["model_kwargs"]
    # the evaluation transforms of the run that wrote the weights, unless given
    if args.img_size is None and info.get("img_size"):
        args.img_size = info["img_size"]
    recorded = info.get("data_config") or {}
    for key in ("mean", "std"):
        if getattr(args, key) is None and recorded.get(key):
            setattr(args, key, tuple(recorded[key]))
    if args.crop_pct is None and recorded.get("crop_pct") is not None:
        args.crop_pct = recorded["crop_pct"]
    if not args.interpolation and recorded.get("interpolation"):
        args.interpolation = recorded["interpolation"]
    splits = build_datasets(args, train_split=None)
    num_classes = args.num_classes or info.get("num_classes") or splits.num_classes
    if splits.num_classes > num_classes:
        raise TrainInputError(f"--num-classes: the weights have {num_classes} classes, the data {splits.num_classes}")
    torch.manual_seed(args.seed)
    model = create_model(argparse.Namespace(model=args.model, model_kwargs=args.model_kwargs), num_classes,
                         pretrained=not args.checkpoint)
    if args.checkpoint:
        from attnzoo.hub import PretrainedLoadError, check_state_dict

        kwargs = " ".join(f"{k}={v}" for k, v in (args.model_kwargs or {}).items()) or "none"
        settings = f"--model-kwargs {kwargs}, {num_classes} classes"
        try:  # names, dtypes, finite values and exact shapes, one line naming the key, both shapes and the file
            check_state_dict(state, model, model_name=args.model, source=repr(args.checkpoint), exact_keys=True)
            model.load_state_dict(state)
        except PretrainedLoadError as e:
            raise TrainInputError(f"--checkpoint: {e} (built with {settings})") from None
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])[:300]
            raise TrainInputError(f"--checkpoint: {args.checkpoint!r} does not fit {args.model} built with {settings}: {detail}") from None
    cfg, _, eval_tf = data_transforms(args, model, training=False)
    splits.val.transform = eval_tf
    model.to(dist.device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    dist.start()
    try:
        loader = eval_loader(splits.val, args.batch_size, args.workers, dist.rank, dist.world, dist.device.type == "cuda")
        m = evaluate(model, loader, dist, amp_dtype=_AMP_DTYPES[args.amp_dtype] if args.amp else None,
                     channels_last=args.channels_last, desc="validate", progress=True)
        m["images_per_s"] = dist.sum([m["images_per_s"]])[0]
    finally:
        dist.stop()
    m.update(model=args.model, checkpoint=args.checkpoint, img_size=int(cfg["input_size"][-1]))
    return m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_validate_arguments(parser)


def run(args: argparse.Namespace, argv) -> int:
    """Exit status: 0 done, 2 bad input (one line naming the argument), 1 a failure (one line; the
    traceback of an internal error with ``--debug`` or ATTNZOO_DEBUG=1), as attnzoo.tools._errors."""
    from attnzoo.tools._errors import report

    def body() -> int:
        m = validate(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{m['model']} @ {m['img_size']}px on {m['images']} images: top-1 {m['top1']:.3f}%, top-5 {m['top5']:.3f}%, "
                  f"loss {m['loss']:.5f}, {m['images_per_s']:.1f} images/s")
            if args.results_file:
                Path(args.results_file).write_text(json.dumps(m, indent=2) + "\n")
        return 0

    return report("attnzoo validate", body, input_errors=(TrainInputError,), debug=args.debug)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attnzoo validate")
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
