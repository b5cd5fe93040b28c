"""``attnzoo validate``: top-1 / top-5, loss and images/s of saved weights on an image folder's
evaluation split, computed by the same function as the training loop's evaluation (so the same
weights, data, input size and batch size give the same figures).

Weights: a training checkpoint (``checkpoint-*.pt`` / ``best.pt``; ``--use-ema`` takes its EMA)
or a ``.safetensors`` file written by ``attnzoo train``; ``--model-kwargs`` and the number of
classes come from the file when it records them. Runs under torchrun too (the set is sharded).
"""
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


def read_weights(path: str, use_ema: bool = False) -> (Dict[str, torch.Tensor], Dict[str, Any]):
    """State dict and what the file says about the model (model, num_classes, model_kwargs)."""
    if not path or not os.path.isfile(path):
        raise TrainInputError(f"--checkpoint: {path!r} is not a file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise TrainInputError(f"--checkpoint: {path!r} does not load as safetensors ({e})") from None
        info = {"model": meta.get("model"), "num_classes": int(meta["num_classes"]) if meta.get("num_classes") else None,
                "model_kwargs": json.loads(meta["model_kwargs"]) if meta.get("model_kwargs") else None}
        if use_ema:
            raise TrainInputError("--use-ema: only for training checkpoints (.pt); a .safetensors file holds one set of weights")
        return state, info
    from .checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(Path(path))
    except Exception as e:
        raise TrainInputError(f"--checkpoint: {path!r} does not load ({type(e).__name__}: {e})") from None
    meta = ckpt["meta"]
    if use_ema:
        if ckpt.get("ema") is None:
            raise TrainInputError(f"--use-ema: {path!r} has no EMA weights (trained without --model-ema)")
        state = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    else:
        state = ckpt["model"]
    return state, {"model": meta.get("model"), "num_classes": meta.get("num_classes"), "model_kwargs": meta.get("model_kwargs")}


def validate(args: argparse.Namespace) -> Dict[str, Any]:
    from .data import build_datasets, eval_loader
    from .trainer import Dist, create_model, data_transforms, evaluate

    dist = Dist(args.device)
    check_model_name(args.model)
    if args.batch_size < 1:
        raise TrainInputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.img_size is not None and args.img_size < 1:
        raise TrainInputError(f"--img-size: must be >= 1, got {args.img_size}")
    state, info = read_weights(args.checkpoint, args.use_ema) if args.checkpoint else ({}, {})
    if info.get("model") not in (None, args.model):
        raise TrainInputError(f"--checkpoint: {args.checkpoint!r} holds weights of --model {info['model']!r}, not {args.model!r}")
    if not args.model_kwargs and info.get("model_kwargs"):
        args.model_kwargs = info["model_kwargs"]
    splits = build_datasets(args, train_split=None)
    num_classes = args.num_classes or info.get("num_classes") or splits.num_classes
    if splits.num_classes > num_classes:
        raise TrainInputError(f"--num-classes: the weights have {num_classes} classes, the data {splits.num_classes}")
    torch.manual_seed(args.seed)
    model = create_model(argparse.Namespace(model=args.model, model_kwargs=args.model_kwargs), num_classes,
                         pretrained=not args.checkpoint)
    if args.checkpoint:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise TrainInputError(f"--checkpoint: {args.checkpoint!r} does not fit {args.model} with "
                                  f"--model-kwargs {args.model_kwargs} and {num_classes} classes: {str(e)[:400]}") from None
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
    try:
        m = validate(args)
    except TrainInputError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"attnzoo validate: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{m['model']} @ {m['img_size']}px on {m['images']} images: top-1 {m['top1']:.3f}%, top-5 {m['top5']:.3f}%, "
              f"loss {m['loss']:.5f}, {m['images_per_s']:.1f} images/s")
        if args.results_file:
            Path(args.results_file).write_text(json.dumps(m, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attnzoo validate")
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
