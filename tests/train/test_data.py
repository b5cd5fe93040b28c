"""The data pieces that make runs reproducible: per-sample seeded augmentation that leaves the
process's generators alone, a sampler that resumes at an offset, and timm's RandAugment at full
magnitude on the pinned Pillow."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from attnzoo.train.data import ResumableDistributedSampler, SeededSamples


class _RandomDraws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_seeded_samples_repeat_and_leave_global_generators_alone():
    ds = SeededSamples(_RandomDraws(), seed=3)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    first = [ds[i] for i in range(10)]
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert [ds[i] for i in reversed(range(10))] == first[::-1]  # order-independent
    assert len(set(first)) == 10
    ds.set_epoch(1)
    assert all(ds[i] != first[i] for i in range(10))  # a new epoch draws anew


def test_sampler_resumes_at_an_offset_with_the_same_order():
    data = list(range(37))
    for rank in (0, 1):
        full = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=5)
        full.set_epoch(4)
        order = list(full)
        part = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=5)
        part.set_epoch(4)
        part.set_start(7)
        assert list(part) == order[7:] and len(part) == len(order) - 7
    a, b = (ResumableDistributedSampler(data, 2, r, 5) for r in (0, 1))
    assert sorted(set(list(a)) | set(list(b))) == data


def test_randaugment_increasing_posterize_at_full_magnitude():
    # timm's 'inc' posterize keeps 4 - int(level / 10 * 4) bits: 0 at magnitude 10 (mstd can reach it).
    # Pillow 13 rejects 0 bits; the pinned Pillow (< 13) turns the image black, as timm intends.
    from timm.data.auto_augment import AugmentOp

    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getpixel((0, 0)) == (0, 0, 0)
