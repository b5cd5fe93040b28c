"""``attnzoo train``: image classification on timm's components, one process per device.

Launch: ``attnzoo train ...`` (one process) or ``torchrun --nproc-per-node N -m attnzoo.train ...``
(DDP: gloo on CPU, nccl on CUDA; ``--fsdp`` shards with FSDP2 ``fully_shard`` per stage).
timm supplies the datasets, transforms, Mixup / CutMix, optimizer (with ``no_weight_decay`` and
layer decay through ``group_matcher``), scheduler, EMA, losses and ``accuracy``; this module is the
loop, the checkpointing (``attnzoo.train.checkpoint``) and the launch glue.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import (
    CheckpointMismatch, CheckpointUnusable, OutputWriteError, atomic_save, check_compatible, checkpoint_path,
    clean_temporaries, export_safetensors, find_resume_checkpoint, load_checkpoint, prune_checkpoints, rng_state,
    set_rng_state,
)
from .config import TrainInputError, add_train_arguments, check_model_name, check_output_dir, check_train_args, parse_with_defaults
from .logs import History

__all__ = ["add_arguments", "run", "main", "train", "evaluate", "Dist"]

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------
# distributed glue


class Dist:
    """This process's place in a torchrun launch (WORLD_SIZE / RANK / LOCAL_RANK), or a single process."""

    def __init__(self, device_arg: Optional[str] = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kind = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
        if kind.startswith("cuda") and not torch.cuda.is_available():
            raise TrainInputError(f"--device {kind!r}: CUDA is not available here (use --device cpu)")
        if kind == "cuda":
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device(kind)
        self.started = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        if self.distributed and not self.started:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.started = True

    def stop(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.started = False

    def sum(self, values) -> list:
        """Sum of a list of floats over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        if self.started:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
        if self.started:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list:
        if not self.started:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.barrier()


# ------------------------------------------------------------------------------------------------
# evaluation (shared with `attnzoo validate`)


def evaluate(net: torch.nn.Module, loader, dist: Dist, *, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, pad_batches: bool = False, desc: Optional[str] = None,
             progress: bool = False) -> Dict[str, float]:
    """Cross-entropy, top-1 and top-5 (%) over the whole eval set, summed over ranks; ``images_per_s``
    is this rank's forward throughput. ``pad_batches``: ranks with fewer batches run dummy forwards
    (FSDP needs every rank in every forward)."""
    from timm.utils import accuracy
    from tqdm import tqdm

    net.eval()
    device = dist.device
    loss_sum = c1 = c5 = 0.0
    n = 0
    n_batches = dist.max(len(loader)) if pad_batches else len(loader)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    bar = tqdm(total=len(loader), desc=desc, unit="batch", leave=False, disable=not (progress and dist.main), file=sys.stderr)
    it = iter(loader)
    t0 = time.perf_counter()
    example = None
    with torch.no_grad():
        for b in range(n_batches):
            batch = next(it, None) if b < len(loader) else None
            if batch is None:
                if example is not None:
                    with autocast:
                        net(example[:1])
                continue
            x, y = batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            example = x
            with autocast:
                out = net(x)
            out = out.float()
            k5 = min(5, out.shape[-1])
            top1, top5 = accuracy(out, y, topk=(1, k5))
            bs = y.shape[0]
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            c1 += round(float(top1) * bs / 100.0)
            c5 += round(float(top5) * bs / 100.0)
            n += bs
            bar.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    bar.close()
    loss_sum, c1, c5, n_all = dist.sum([loss_sum, c1, c5, float(n)])
    if n_all == 0:
        raise TrainInputError("the evaluation split has no images")
    return {"loss": loss_sum / n_all, "top1": 100.0 * c1 / n_all, "top5": 100.0 * c5 / n_all,
            "images": int(n_all), "images_per_s": n / elapsed if elapsed > 0 else float("nan")}


# ------------------------------------------------------------------------------------------------
# model and data set-up


def data_transforms(args: argparse.Namespace, model: torch.nn.Module, training: bool):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(dict(img_size=args.img_size, crop_pct=args.crop_pct, mean=args.mean, std=args.std,
                                   interpolation=args.interpolation), model=model)
    eval_tf = create_transform(**cfg, is_training=False)
    if not training:
        return cfg, None, eval_tf
    train_tf = create_transform(
        cfg["input_size"], is_training=True, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=0.0,
        color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
    )
    return cfg, train_tf, eval_tf


def create_model(args: argparse.Namespace, num_classes: int, pretrained: bool = False) -> torch.nn.Module:
    import timm
    import attnzoo  # noqa: F401

    kwargs = dict(args.model_kwargs or {})
    if getattr(args, "drop", 0.0):
        kwargs["drop_rate"] = args.drop
    if getattr(args, "drop_path", None) is not None:
        kwargs["drop_path_rate"] = args.drop_path
    try:
        return timm.create_model(args.model, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise TrainInputError(f"--model-kwargs / --drop / --drop-path: {args.model} does not take {sorted(kwargs)} ({e})") from None


def _lr(args: argparse.Namespace, global_batch: int) -> float:
    if args.lr is not None:
        return args.lr
    ratio = global_batch / args.lr_base_size
    return args.lr_base * (ratio if args.lr_base_scale == "linear" else math.sqrt(ratio))


def _plain(obj: Any) -> Any:
    """Arguments as plain python (they go into checkpoints loaded with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


# ------------------------------------------------------------------------------------------------
# the run


class _Printer:
    def __init__(self, main: bool):
        self.main = main

    def __call__(self, msg: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()

    def warn(self, msg: str) -> None:
        if self.main:
            print(f"attnzoo train: warning: {msg}", file=sys.stderr, flush=True)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run (or continue) a training run; returns the final summary. Raises TrainInputError on bad input."""
    from torch.utils.data import IterableDataset

    from .data import build_datasets

    t_start = time.perf_counter()
    dist = Dist(args.device)
    say = _Printer(dist.main)

    # --- checks: every bad input is reported before any work ---
    check_train_args(args, dist.world)
    check_model_name(args.model)
    out = check_output_dir(args.output)
    splits = build_datasets(args, args.train_split)
    num_classes = args.num_classes or splits.num_classes
    if args.num_classes is not None and args.num_classes < splits.num_classes:
        raise TrainInputError(f"--num-classes {args.num_classes}: the dataset has {splits.num_classes} classes")
    iterable = isinstance(splits.train, IterableDataset)
    per_rank = math.ceil(len(splits.train) / dist.world) if not iterable else None
    if per_rank is not None and per_rank < args.batch_size:
        raise TrainInputError(f"--batch-size {args.batch_size}: larger than the {per_rank} training images per process "
                              f"({len(splits.train)} images over {dist.world} process(es))")
    resume = None
    if args.resume == "auto":
        if dist.main:
            clean_temporaries(out)
        found = find_resume_checkpoint(out, warn=say.warn)
        if found is None:
            say(f"--resume auto: no checkpoint in {out}, starting from scratch")
        resume = found
    elif args.resume:
        try:
            resume = (Path(args.resume), load_checkpoint(Path(args.resume), warn=say.warn))
        except CheckpointUnusable as e:
            raise TrainInputError(f"--resume: {e}") from None
    if resume is not None:
        try:
            check_compatible(resume[1], resume[0], args.model, num_classes, _plain(args.model_kwargs or {}))
        except CheckpointMismatch as e:
            raise TrainInputError(str(e)) from None

    # --- set-up ---
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    dist.start()
    try:
        return _train(args, dist, say, out, splits, num_classes, resume, t_start, iterable)
    finally:
        dist.stop()


def _train(args, dist: Dist, say: "_Printer", out: Path, splits, num_classes: int, resume, t_start: float,
           iterable: bool) -> Dict[str, Any]:
    from torch.utils.data import DataLoader
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad
    from tqdm import tqdm

    from .data import ResumableDistributedSampler, SeededSamples, eval_loader

    device = dist.device
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = create_model(args, num_classes, pretrained=args.pretrained)
    data_cfg, train_tf, eval_tf = data_transforms(args, model, training=True)
    splits.train.transform = train_tf
    if splits.val is not None:
        splits.val.transform = eval_tf
    random.seed(args.seed + dist.rank)
    np.random.seed(args.seed + dist.rank)
    torch.manual_seed(args.seed + dist.rank)

    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) if args.model_ema else None
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for stage in getattr(model, "stages", []):
            fully_shard(stage)
        fully_shard(model)

    micro = args.batch_size // args.grad_accum_steps
    global_batch = args.batch_size * dist.world
    if iterable:
        steps_per_epoch = len(splits.train) // global_batch
        sampler = None
        train_set = splits.train
    else:
        train_set = SeededSamples(splits.train, args.seed)
        sampler = ResumableDistributedSampler(train_set, dist.world, dist.rank, args.seed)
        steps_per_epoch = sampler.num_samples // args.batch_size
    lr = _lr(args, global_batch)
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs["betas"] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                                    layer_decay=args.layer_decay, **opt_kwargs)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, cooldown_epochs=args.cooldown_epochs,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    amp_dtype = _AMP_DTYPES[args.amp_dtype] if args.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob, switch_prob=args.mixup_switch_prob,
                         mode=args.mixup_mode, label_smoothing=args.smoothing, num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    # --- resume ---
    history = History()
    start_epoch, start_step, updates = 0, 0, 0
    meter = [0.0, 0.0]  # sum of step losses, steps (all ranks) in the current epoch
    best = {"top1": None, "epoch": None}
    if resume is not None:
        path, ckpt = resume
        meta = ckpt["meta"]
        try:
            if args.fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

                set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                               options=StateDictOptions(full_state_dict=True))
            else:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # a checkpoint that predates the recorded model kwargs
            first = str(e).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:2])[:300]
            raise TrainInputError(f"--resume: the weights in {str(path)!r} do not fit this run's model ({detail}); resume with "
                                  "the --model-kwargs / --num-classes of the run that wrote it, or start fresh: another "
                                  "--output, or no --resume") from None
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        history = History.from_state_dict(ckpt["history"])
        start_epoch, start_step, updates = meta["epoch"], meta["step"], meta["update"]
        # the checkpoint holds the loss sum of all ranks so far in the epoch: rank 0 carries it on
        meter = [ckpt["meter"][0] if dist.main else 0.0, ckpt["meter"][1]]
        best = dict(ckpt["best"])
        states = ckpt["rng"]
        if len(states) == dist.world:
            set_rng_state(states[dist.rank])
        else:
            say.warn(f"{path.name} was written by {len(states)} process(es), this run has {dist.world}: "
                     "the data order and random draws continue differently (not an exact resume)")
        if meta.get("steps_per_epoch") not in (None, steps_per_epoch):
            say.warn(f"{path.name} had {meta['steps_per_epoch']} steps per epoch, this run has {steps_per_epoch}")
        say(f"resumed from {path} (epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch}, update {updates})")
        del ckpt

    net = torch.compile(model) if args.compile else model
    ddp = None
    train_net = net
    if dist.distributed and not args.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        train_net = ddp

    val_loader = (eval_loader(splits.val, args.validation_batch_size or micro, args.workers, dist.rank, dist.world,
                              device.type == "cuda") if splits.val is not None else None)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"attnzoo train: {args.model} ({n_params / 1e6:.2f}M params, {num_classes} classes, input {tuple(data_cfg['input_size'])}) "
        f"on {dist.world} x {device.type}{' (FSDP2)' if args.fsdp else ' (DDP)' if ddp else ''}; {splits.description}; "
        f"global batch {global_batch} ({dist.world} x {args.batch_size}"
        f"{f' in {args.grad_accum_steps} micro-batches' if args.grad_accum_steps > 1 else ''}), lr {lr:.3g}, "
        f"{num_epochs} epochs x {steps_per_epoch} steps; output {out}")
    if steps_per_epoch == 0:
        raise TrainInputError(f"--batch-size {args.batch_size}: no full step fits in an epoch of this dataset")

    data_record = {k: _plain(data_cfg[k]) for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in data_cfg}
    meta_base = dict(model=args.model, num_classes=num_classes, model_kwargs=_plain(args.model_kwargs or {}),
                     img_size=int(data_cfg["input_size"][-1]), data_config=data_record, class_names=splits.class_names,
                     steps_per_epoch=steps_per_epoch, world_size=dist.world, args=_plain(vars(args)))

    def weights_state() -> Dict[str, torch.Tensor]:
        if args.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return model.state_dict()

    def save(epoch: int, step: int, extra_files: Callable[[Dict[str, Any]], None] = None) -> None:
        """Collective (every rank calls it); rank 0 writes."""
        if args.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            msd, osd = model.state_dict(), optimizer.state_dict()
        rngs = dist.gather(rng_state())
        failed = None
        if dist.main:
            ckpt = dict(meta=dict(meta_base, epoch=epoch, step=step, update=updates), model=msd, optimizer=osd,
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                        ema=ema.state_dict() if ema is not None else None, history=history.state_dict(),
                        meter=list(meter), best=dict(best), rng=rngs)
            try:
                atomic_save(ckpt, checkpoint_path(out, updates))
                prune_checkpoints(out, args.checkpoint_hist)
                if extra_files is not None:
                    extra_files(ckpt)
            except OutputWriteError as e:
                failed = e
        # every rank learns whether rank 0 could write (instead of waiting for it at a barrier forever)
        if dist.max(int(failed is not None)):
            raise failed if failed is not None else OutputWriteError(out, OSError(0, "rank 0 failed"))

    def st_meta(epoch: int, top1: Optional[float]) -> Dict[str, str]:
        """The run's record in every weights file: what `attnzoo convert` / `validate` need to rebuild the model."""
        return {"model": args.model, "num_classes": str(num_classes), "model_kwargs": json.dumps(_plain(args.model_kwargs or {})),
                "img_size": str(meta_base["img_size"]), "data_config": json.dumps(data_record),
                "class_names": json.dumps(splits.class_names) if splits.class_names else "",
                "data": splits.description, "epoch": str(epoch), "top1": "" if top1 is None else repr(top1), "format": "pt"}

    title = f"{args.model} - {splits.description}"
    epoch = start_epoch
    for epoch in range(start_epoch, num_epochs):
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            meter = [0.0, 0.0]
        if sampler is not None:
            sampler.set_epoch(epoch)
            sampler.set_start(first_step * args.batch_size)
            train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=micro, sampler=sampler, num_workers=args.workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            generator=torch.Generator().manual_seed(args.seed * 1000003 + epoch))
        it = iter(loader)
        train_net.train()
        bar = tqdm(total=steps_per_epoch, initial=first_step, desc=f"epoch {epoch + 1}/{num_epochs}", unit="step",
                   disable=args.no_progress or not dist.main, file=sys.stderr, dynamic_ncols=False, ncols=110,
                   bar_format="{l_bar}{bar:20}{r_bar}")
        t_epoch = time.perf_counter()
        t_log = time.perf_counter()
        images_since_log = 0
        for step in range(first_step, steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for k in range(args.grad_accum_steps):
                x, y = next(it)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if mixup_fn is not None:
                    x, y = mixup_fn(x, y)
                last_micro = k == args.grad_accum_steps - 1
                sync = ddp.no_sync() if (ddp is not None and not last_micro) else contextlib.nullcontext()
                if args.fsdp and args.grad_accum_steps > 1:
                    model.set_requires_gradient_sync(last_micro)  # reduce-scatter once per step
                with sync:
                    with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()):
                        loss = criterion(train_net(x), y)
                    scaler.scale(loss / args.grad_accum_steps).backward()
                step_loss += float(loss.detach()) / args.grad_accum_steps
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at epoch {epoch + 1} step {step + 1}; lower --lr or enable --clip-grad")
            if args.clip_grad is not None:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), value=args.clip_grad, mode=args.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            updates += 1
            if ema is not None:
                ema.update(model, step=updates)
            scheduler.step_update(num_updates=updates)
            meter[0] += step_loss
            meter[1] += 1
            images_since_log += global_batch
            cur_lr = optimizer.param_groups[0]["lr"]
            if dist.main and not args.no_progress:
                elapsed = time.perf_counter() - t_epoch
                done = step + 1 - first_step
                bar.set_postfix_str(f"loss {meter[0] / meter[1]:.4f} lr {cur_lr:.2e} {done * global_batch / max(elapsed, 1e-9):.0f} img/s", refresh=False)
                bar.update(1)
            if (step + 1) % args.log_interval == 0 or step + 1 == steps_per_epoch:
                (loss_all,) = dist.sum([step_loss])
                now = time.perf_counter()
                history.steps.append(dict(epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch, update=updates,
                                          loss=loss_all / dist.world, lr=cur_lr, time_s=now - t_log,
                                          images_per_s=images_since_log / max(now - t_log, 1e-9)))
                t_log, images_since_log = now, 0
            if args.save_interval_steps and (step + 1) % args.save_interval_steps == 0 and step + 1 < steps_per_epoch:
                saved_meter = list(meter)
                meter[:] = dist.sum(meter[:1]) + [meter[1]]
                save(epoch, step + 1)
                meter[:] = saved_meter
        bar.close()
        train_time = time.perf_counter() - t_epoch
        (loss_total,) = dist.sum(meter[:1])
        row = dict(epoch=epoch + 1, update=updates, lr=optimizer.param_groups[0]["lr"],
                   train_loss=loss_total / (meter[1] * dist.world))
        scheduler.step(epoch + 1)
        is_last = epoch + 1 == num_epochs
        evaluated = val_loader is not None and ((epoch + 1) % args.eval_interval == 0 or is_last)
        if evaluated:
            m = evaluate(net, val_loader, dist, amp_dtype=amp_dtype, channels_last=args.channels_last,
                         pad_batches=args.fsdp, desc="eval", progress=not args.no_progress)
            row.update(eval_loss=m["loss"], eval_top1=m["top1"], eval_top5=m["top5"])
            if ema is not None:
                me = evaluate(ema.module, val_loader, dist, amp_dtype=amp_dtype, channels_last=args.channels_last)
                row.update(ema_eval_loss=me["loss"], ema_eval_top1=me["top1"], ema_eval_top5=me["top5"])
            row.update(eval_images_per_s=m["images_per_s"] * dist.world)
        row.update(epoch_time_s=train_time, train_images_per_s=(steps_per_epoch - first_step) * global_batch / max(train_time, 1e-9))
        history.epochs.append(row)
        key = "ema_eval_top1" if ema is not None else "eval_top1"
        improved = evaluated and (best["top1"] is None or row[key] > best["top1"])
        if improved:
            best = {"top1": row[key], "epoch": epoch + 1}
        msg = f"epoch {epoch + 1}/{num_epochs}: train loss {row['train_loss']:.4f}"
        if evaluated:
            msg += f", eval loss {row['eval_loss']:.4f}, top-1 {row['eval_top1']:.2f}%, top-5 {row['eval_top5']:.2f}%"
            if ema is not None:
                msg += f", EMA top-1 {row['ema_eval_top1']:.2f}%"
        say(msg + f" ({train_time:.1f}s)")
        meter = [0.0, 0.0]

        best_weights = None
        if improved:
            best_weights = ema.module.state_dict() if ema is not None else weights_state()

        def write_files(ckpt: Dict[str, Any], best_weights=best_weights, row=row, is_last=is_last, improved=improved) -> None:
            history.write(out, title)
            if improved:
                atomic_save(ckpt, out / "best.pt")
                export_safetensors(best_weights, out / "best.safetensors", st_meta(epoch + 1, best["top1"]))
            if is_last:
                export_safetensors(ckpt["model"], out / "final.safetensors", st_meta(epoch + 1, row.get("eval_top1")))
                if ema is not None:
                    export_safetensors(ema.module.state_dict(), out / "final_ema.safetensors", st_meta(epoch + 1, row.get("ema_eval_top1")))

        save(epoch + 1, 0, write_files)

    summary = dict(best_top1=best["top1"], best_epoch=best["epoch"], epochs=num_epochs, output=str(out),
                   best=str(out / "best.safetensors") if best["top1"] is not None else None,
                   final=str(out / "final.safetensors"), wall_s=time.perf_counter() - t_start,
                   history=history)
    if best["top1"] is not None:
        say(f"done: best top-1 {best['top1']:.2f}% at epoch {best['epoch']} -> {summary['best']}; final weights "
            f"{summary['final']}; metrics {out / 'metrics.csv'}, plot {out / 'metrics.png'} ({summary['wall_s'] / 60:.1f} min)")
    else:
        say(f"done: no evaluation split; final weights {summary['final']} ({summary['wall_s'] / 60:.1f} min)")
    return summary


# ------------------------------------------------------------------------------------------------
# command line


def build_parser(prog: str = "attnzoo train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").strip().splitlines()[0])
    add_train_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def run(args: argparse.Namespace, argv) -> int:
    """Re-parses ``argv`` so that ``--recipe`` and ``--config`` become defaults under the command line.
    Exit status: 0 done, 2 bad input (one line naming the argument), 1 a failure (one line; the
    traceback of an internal error with ``--debug`` or ATTNZOO_DEBUG=1), as attnzoo.tools._errors."""
    from attnzoo.tools._errors import report

    def body() -> int:
        train(parse_with_defaults(build_parser(), list(argv)))
        return 0

    return report("attnzoo train", body, input_errors=(TrainInputError,), explained=(OutputWriteError, FloatingPointError),
                  debug="--debug" in argv)


def main(argv=None) -> int:
    return run(argparse.Namespace(), sys.argv[1:] if argv is None else argv)
