"""Data for the trainer: timm's ``create_dataset`` / ``create_transform``, plus the two pieces that
make runs reproducible and resumable:

* ``SeededSamples`` draws each sample's augmentation from its own generator seeded by
  (seed, epoch, index), with the process's random / numpy / torch generators saved and put back
  around it. The augmentation of a sample is then the same whatever the number of processes or
  loader workers and wherever a run resumes.
* ``ResumableDistributedSampler`` is torch's ``DistributedSampler`` (per-epoch seeded shuffle,
  one shard per rank) that can start at an offset, so a run resumed mid-epoch continues at the
  next batch.

Evaluation shards the set without padding (``rank::world``) and sums counts across ranks, so its
figures do not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from .config import TrainInputError, check_image_folder, resolve_split_dir

__all__ = ["SeededSamples", "ResumableDistributedSampler", "ShardSampler", "DataSplits", "build_datasets", "eval_loader"]

_VAL_ALIASES = ("validation", "val", "valid", "eval", "evaluation")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """``dataset[i]`` with every random draw of its transform seeded by (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, index)
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose iteration starts at ``start`` (samples of this rank's shard)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class ShardSampler(Sampler):
    """Indices ``rank::world`` in order, no padding (evaluation)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DataSplits:
    def __init__(self, train: Dataset, val: Optional[Dataset], num_classes: int, description: str,
                 class_names: Optional[List[str]] = None):
        self.train, self.val, self.num_classes, self.description = train, val, num_classes, description
        self.class_names = class_names  # an image folder's class folders, in label order


def _folder_splits(args: argparse.Namespace, train_split: Optional[str]) -> Tuple[Optional[Path], Optional[Path], List[str]]:
    if not args.data_dir:
        raise TrainInputError("--data-dir: required (an image folder with train/ and val/ class folders)")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise TrainInputError(f"--data-dir: {args.data_dir!r} does not exist or is not a directory")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise TrainInputError(f"--data-dir: {args.data_dir!r} is empty")
    val_dir = resolve_split_dir(root, args.val_split, _VAL_ALIASES)
    train_dir = resolve_split_dir(root, train_split, ("training",)) if train_split else None
    if train_split and train_dir is None:
        if val_dir is not None:
            raise TrainInputError(f"--data-dir: {args.data_dir!r} has a {val_dir.name}/ split but no {train_split}/ folder")
        train_dir = root  # the class folders sit directly in data-dir: train only
    ref = train_dir if train_dir is not None else (val_dir if val_dir is not None else root)
    classes, _ = check_image_folder(ref, "--data-dir")
    if val_dir is not None and val_dir != ref:
        val_classes, _ = check_image_folder(val_dir, "--data-dir")
        extra = sorted(set(val_classes) - set(classes))
        if extra:
            raise TrainInputError(f"--data-dir: {str(val_dir)!r} has classes that {str(ref)!r} lacks: {extra[:10]}")
    if train_split is None and val_dir is None:
        val_dir = root  # validate on a folder of class folders
    return train_dir, val_dir, classes


def build_datasets(args: argparse.Namespace, train_split: Optional[str] = "train") -> DataSplits:
    """Datasets without transforms (set later from the model's data config). ``train_split=None``:
    the evaluation split only (``attnzoo validate``)."""
    from timm.data import create_dataset

    if args.dataset in ("", "folder", "imagefolder"):
        train_dir, val_dir, classes = _folder_splits(args, train_split)
        class_map = {c: i for i, c in enumerate(classes)}
        train = create_dataset("", root=str(train_dir), search_split=False, class_map=class_map) if train_dir else None
        val = create_dataset("", root=str(val_dir), search_split=False, class_map=class_map) if val_dir else None
        desc = f"{len(train) if train else 0} train / {len(val) if val else 0} val images, {len(classes)} classes"
        return DataSplits(train, val, len(classes), desc, class_names=list(classes))
    # hfds/, wds/, torch/ ...: timm's readers (their packages must be installed)
    if args.data_dir is None and not args.dataset.lower().startswith(("hfds/", "hfids/")):
        raise TrainInputError(f"--data-dir: required for --dataset {args.dataset!r}")
    try:
        train = create_dataset(args.dataset, root=args.data_dir, split=train_split, is_training=True,
                               batch_size=args.batch_size, seed=args.seed) if train_split else None
        val = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                             batch_size=args.batch_size)
    except (ImportError, ModuleNotFoundError) as e:
        raise TrainInputError(f"--dataset {args.dataset!r}: its reader needs a package that is not installed ({e})") from None
    if args.num_classes is None:
        reader = getattr(train if train is not None else val, "reader", None)
        n = len(getattr(reader, "class_to_idx", {}) or {})
        if not n:
            raise TrainInputError(f"--num-classes: required for --dataset {args.dataset!r} (its class count is not known up front)")
        args.num_classes = n
    return DataSplits(train, val, args.num_classes, f"--dataset {args.dataset}")


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int, world: int, pin: bool) -> DataLoader:
    sampler = None if isinstance(dataset, IterableDataset) else ShardSampler(len(dataset), rank, world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      drop_last=False, persistent_workers=False)
