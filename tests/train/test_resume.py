"""Exact resume: a run killed with SIGKILL in the middle of an epoch and continued with
``--resume auto`` ends bit-identical to an uninterrupted run (weights, optimizer, scheduler and EMA
state, metrics); a corrupt newest checkpoint is reported and the previous one is used; whatever
the moment of the kill, every file in --output is whole."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnzoo.train.logs import TIMING_COLUMNS, read_csv

from .conftest import cli, subprocess_env, train_args

# 192 images, batch 8: 24 steps per epoch, 2 epochs; a checkpoint every 4 steps. Drop path (the
# model's 0.2 default), mixup, label smoothing and EMA all draw random numbers: the resume must
# restore every generator for the runs to match.
_RUN = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--save-interval-steps", "4", "--log-interval", "5",
        "--checkpoint-hist", "3", "--mixup", "0.2", "--model-ema", "--model-ema-decay", "0.9"]


def _logic_rows(path: Path):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(path)]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "final.safetensors"), load_file(b / "final.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ca = torch.load(sorted(a.glob("checkpoint-*.pt"))[-1], weights_only=True)
    cb = torch.load(sorted(b.glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert ca["meta"]["update"] == cb["meta"]["update"] == 48
    for part in ("model", "ema"):
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part]), part
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert ca["scheduler"] == cb["scheduler"]
    for name in ("metrics.csv", "steps.csv"):
        assert _logic_rows(a / name) == _logic_rows(b / name), name


def _assert_whole_files(folder: Path) -> None:
    from PIL import Image

    from attnzoo._checkpoint import verify_digest

    for p in folder.iterdir():
        if p.name.startswith(".tmp-"):
            continue  # a temporary of the killed process: never read, deleted on resume
        if p.suffix == ".sha256":
            described = p.with_name(p.name[: -len(".sha256")])
            assert described.exists() or described.name.startswith("checkpoint-"), p  # a checkpoint's may precede it
            if described.exists():
                assert verify_digest(described), described
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)
        elif p.suffix == ".safetensors":
            load_file(p)
        elif p.suffix == ".csv":
            rows = read_csv(p)
            assert rows and all(None not in r and all(v is not None for v in r.values()) for r in rows), p
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.verify()
        else:
            raise AssertionError(f"unexpected file {p}")


@pytest.fixture(scope="module")
def reference(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(*train_args(digits_small, out, *_RUN))
    assert proc.returncode == 0, proc.stderr
    return out


def test_sigkill_mid_epoch_then_resume_is_bit_identical(digits_small, reference, tmp_path):
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "attnzoo.train", *train_args(digits_small, out, *_RUN)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("checkpoint-*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.stderr.close()
    _assert_whole_files(out)
    assert not (out / "final.safetensors").exists()

    resumed = cli(*train_args(digits_small, out, *_RUN, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    line = next(l for l in resumed.stdout.splitlines() if l.startswith("resumed from"))
    step = int(line.split("step ")[1].split("/")[0])
    print(line)
    assert 0 < step < 24, line  # continued inside an epoch, at the next batch
    _assert_same_run(reference, out)
    assert not list(out.glob(".tmp-*"))
    _assert_whole_files(out)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(digits_small, reference, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    newest, previous = sorted(out.glob("checkpoint-*.pt"))[-1], sorted(out.glob("checkpoint-*.pt"))[-2]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    (out / "final.safetensors").unlink()
    resumed = cli(*train_args(digits_small, out, *_RUN, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: --resume auto: skipping {newest.name}: '{newest}' is damaged: its sha256 is" in resumed.stderr, resumed.stderr
    assert f"resumed from {previous}" in resumed.stdout, resumed.stdout
    _assert_same_run(reference, out)


def _flip_one_byte_of_tensor_data(path: Path) -> None:
    """One bit flipped in the middle of the largest tensor's bytes inside the checkpoint's zip
    archive: the zip directory, headers and pickle stay intact, so torch.load reads it happily."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def test_flipped_byte_is_refused_and_resume_auto_skips_it(digits_small, reference, tmp_path):
    """Before: 0 of 40 single-bit flips inside a checkpoint's tensor data were caught; --resume auto
    said "resumed from ..." and the run ended with other weights."""
    from attnzoo.train.config import TrainInputError

    from .conftest import run_in_process

    out = tmp_path / "flipped"
    shutil.copytree(reference, out)
    newest, previous = sorted(out.glob("checkpoint-*.pt"))[-1], sorted(out.glob("checkpoint-*.pt"))[-2]
    _flip_one_byte_of_tensor_data(newest)
    torch.load(newest, weights_only=True)  # the damage is invisible to the reader itself
    with pytest.raises(TrainInputError, match=rf"^--resume: '{newest}' is damaged: its sha256 is [0-9a-f]{{64}}, but "
                                              rf"[0-9a-f]{{64}} was recorded in {newest.name}.sha256"):
        run_in_process(train_args(digits_small, out, *_RUN, "--resume", str(newest)))
    resumed = cli(*train_args(digits_small, out, *_RUN, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: --resume auto: skipping {newest.name}: '{newest}' is damaged" in resumed.stderr, resumed.stderr
    assert f"resumed from {previous}" in resumed.stdout, resumed.stdout
    _assert_same_run(reference, out)
    _assert_whole_files(out)
