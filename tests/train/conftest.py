"""Shared set-up of the training tests: the offline demo data (scikit-learn's digits) at 16 px
and the arguments of a tiny NAT (one block per stage, width 16: 0.32M parameters)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

pytest.importorskip("sklearn", reason="the demo data is scikit-learn's digits (the [train] extra)")

TINY_MODEL = ["--model", "nat_mini", "--model-kwargs", "embed_dim=16", "depths=(1,1,1,1)", "num_heads=(1,1,1,1)",
              "--img-size", "16"]
# Quiet, single-process loading and digit-safe augmentation (no flips).
COMMON = ["--workers", "0", "--no-progress", "--hflip", "0", "--scale", "0.7", "1", "--warmup-epochs", "0"]


def train_args(data: Path, out: Path, *extra: str) -> List[str]:
    return [*TINY_MODEL, *COMMON, "--data-dir", str(data), "--output", str(out), *extra]


def run_in_process(argv: Sequence[str]):
    from attnzoo.train.config import parse_with_defaults
    from attnzoo.train.trainer import build_parser, train

    return train(parse_with_defaults(build_parser(), list(argv)))


def subprocess_env() -> dict:
    # one thread per process: CPU kernels then reduce in one fixed order (bit-identical reruns)
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnzoo.train", *argv], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def trim_train_split(root: Path, multiple: int) -> int:
    """Delete the last images of train/ until its size is a multiple of ``multiple``; returns the size."""
    files = sorted((root / "train").rglob("*.png"))
    while len(files) % multiple:
        files.pop().unlink()
    return len(files)


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> Path:
    from attnzoo.train.demo import write_digits

    root = tmp_path_factory.mktemp("digits16")
    write_digits(root, size=16, seed=0)
    return root


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> Path:
    """240 digits (192 train, 48 val): the DDP and resume runs."""
    from attnzoo.train.demo import write_digits

    root = tmp_path_factory.mktemp("digits_small")
    write_digits(root, size=16, seed=1, limit=240)
    trim_train_split(root, 16)
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two (and the subprocesses use one too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
