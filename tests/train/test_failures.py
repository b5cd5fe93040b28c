"""Failures of ``attnzoo train`` / ``validate`` end in one line and an exit status, and nothing a
user saved is lost or replaced: a full disk, a resume with other model settings, a damaged or
digest-less weights file, an internal error (traceback only with --debug / ATTNZOO_DEBUG=1).

One tiny run (one epoch of the 0.32M-parameter NAT on 192 digits) is shared by the tests that
need a finished run folder; the full disk gets its own two-epoch run.
"""
from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from attnzoo.train.config import TrainInputError

from .conftest import TINY_MODEL, run_in_process, train_args

_RUN = ["--batch-size", "16", "--lr", "1e-3", "--log-interval", "4"]


@pytest.fixture(scope="module")
def run_dir(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_epoch")
    run_in_process(train_args(digits_small, out, "--epochs", "1", *_RUN))
    return out


def _cli(argv):
    from attnzoo.tools.cli import main

    return main(list(argv))


def _one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _hashes(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class _FullFile:
    """A file on a disk that fills after ``room`` bytes: write() then raises ENOSPC, as the OS does."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_full_disk_fails_in_one_line_and_replaces_nothing(digits_small, tmp_path, monkeypatch, capsys):
    """Before: 'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...' (torch's
    writer), a traceback. Now the disk fills after epoch 1: the epoch-2 checkpoint cannot be written,
    the run ends with exit status 1 and one line naming the file, every file of epoch 1 is as it was
    (same bytes, digests verify), and once there is room again --resume auto finishes the run."""
    import attnzoo.train.checkpoint as ckpt_mod
    from attnzoo._checkpoint import verify_digest

    out = tmp_path / "run"
    real_open = ckpt_mod._open_for_writing
    before = {}

    def opener(path):
        f = real_open(path)
        if "checkpoint-" in path.name and list(out.glob("checkpoint-*.pt")):  # epoch 2's checkpoint: the disk is full
            if not before:
                before.update(_hashes(out))
                del before[path.name]  # its own (empty) temporary
            return _FullFile(f, room=100)
        return f

    monkeypatch.setattr(ckpt_mod, "_open_for_writing", opener)
    argv = train_args(digits_small, out, "--epochs", "2", *_RUN)
    assert _cli(["train", *argv]) == 1
    line = _one_line(capsys.readouterr().err)
    new = ckpt_mod.checkpoint_path(out, 24)
    assert line == f"attnzoo train: error: no space left on device writing {new}; nothing was replaced", line
    assert before and _hashes(out) == before  # nothing replaced, nothing half-written left behind
    for name in ("checkpoint-000000012.pt", "best.pt", "best.safetensors"):
        assert verify_digest(out / name), name

    monkeypatch.setattr(ckpt_mod, "_open_for_writing", real_open)  # room again
    assert _cli(["train", *argv, "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert verify_digest(out / "final.safetensors") and verify_digest(new)


def test_resume_with_other_model_kwargs_names_the_settings(run_dir, digits_small, capsys):
    """Before: a traceback ending in 'size mismatch for head.weight'."""
    argv = train_args(digits_small, run_dir, "--epochs", "1", *_RUN, "--resume", "auto")
    argv[argv.index("embed_dim=16")] = "embed_dim=24"
    with pytest.raises(TrainInputError) as info:
        run_in_process(argv)
    text = str(info.value)
    assert text.startswith(f"--resume: '{sorted(run_dir.glob('checkpoint-*.pt'))[-1]}' was written by a run of nat_mini "
                           "with other settings: --model-kwargs embed_dim (checkpoint 16, this run 24)."), text
    assert text.endswith("start fresh: another --output, or no --resume"), text
    assert _cli(["train", *argv]) == 2
    assert _one_line(capsys.readouterr().err).startswith("attnzoo train: error: --resume:")


def test_damaged_weights_are_refused_everywhere_attnzoo_loads_them(run_dir, digits_small, tmp_path, capsys):
    """A flipped byte in best.safetensors: validate (exit 2) and timm's pretrained path both refuse
    it naming the file and both digests."""
    import timm

    from attnzoo.hub import PretrainedLoadError

    folder = tmp_path / "copy"
    shutil.copytree(run_dir, folder)
    path = folder / "best.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    assert _cli(["validate", "--checkpoint", str(path), "--data-dir", str(digits_small), "--workers", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"attnzoo validate: error: --checkpoint: '{path}' is damaged: its sha256 is "), line
    assert "was recorded in best.safetensors.sha256" in line, line
    with pytest.raises(PretrainedLoadError, match=r"^nat_mini: checkpoint file '.*best.safetensors' is damaged: its sha256 is [0-9a-f]{64}, "
                                                  r"but [0-9a-f]{64} was recorded"):
        timm.create_model("nat_mini", pretrained=True, num_classes=10, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))


def test_files_without_a_digest_load_with_a_warning(run_dir, digits_small, tmp_path, capsys):
    """Checkpoints written before digests existed still resume and validate, saying they are unverified."""
    folder = tmp_path / "old"
    shutil.copytree(run_dir, folder)
    for side in folder.glob("*.sha256"):
        side.unlink()
    run_in_process(train_args(digits_small, folder, "--epochs", "1", *_RUN, "--resume", "auto"))  # the run is complete: loads, no work
    err = capsys.readouterr().err
    newest = sorted(folder.glob("checkpoint-*.pt"))[-1].name
    assert f"warning: {newest} carries no sha256 digest ({newest}.sha256 is missing" in err, err
    assert _cli(["validate", "--checkpoint", str(folder / "best.safetensors"), "--data-dir", str(digits_small), "--workers", "0",
                 "--batch-size", "64"]) == 0
    assert "attnzoo validate: warning: best.safetensors carries no sha256 digest" in capsys.readouterr().err


def test_an_internal_error_is_one_line_and_its_traceback_is_behind_debug(digits_small, tmp_path, monkeypatch, capsys):
    import attnzoo.train.trainer as trainer

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(trainer, "_train", broken)
    argv = ["train", *train_args(digits_small, tmp_path / "out", "--epochs", "1", *_RUN)]
    assert _cli(argv) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == "attnzoo train: internal error: KeyError: 'a bug' (run again with --debug or ATTNZOO_DEBUG=1 for the traceback)"
    assert _cli([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and err.rstrip().endswith("attnzoo train: internal error: KeyError: 'a bug'"), err
    monkeypatch.setenv("ATTNZOO_DEBUG", "1")
    assert _cli(argv) == 1
    assert "Traceback (most recent call last):" in capsys.readouterr().err


def test_validate_with_other_model_kwargs_is_one_line_naming_key_and_shapes(run_dir, digits_small, capsys):
    """Arguments given win over the file's record; weights that do not fit are refused in one line
    (before: torch's multi-line 'Error(s) in loading state_dict ... size mismatch' text)."""
    path = run_dir / "best.safetensors"
    assert _cli(["validate", "--checkpoint", str(path), "--data-dir", str(digits_small), "--workers", "0",
                 "--model-kwargs", "embed_dim=24", "depths=(1,1,1,1)", "num_heads=(1,1,1,1)"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"attnzoo validate: error: --checkpoint: nat_mini: tensor "), line
    assert f" of '{path}' has shape " in line and "nat_mini needs" in line, line
    assert line.endswith("(built with --model-kwargs embed_dim=24 depths=(1, 1, 1, 1) num_heads=(1, 1, 1, 1), 10 classes)"), line
