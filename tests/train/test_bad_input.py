"""Every bad input of the issue gets a clear error naming the argument, before any work starts
(no model built, nothing written to --output)."""
from __future__ import annotations

import shutil

import pytest
import torch

from attnzoo.train.config import TrainInputError

from .conftest import run_in_process, train_args


def _nothing_written(out):
    return not out.exists() or not [p for p in out.iterdir()]


@pytest.fixture()
def folder(tmp_path, digits_small):
    data = tmp_path / "data"
    shutil.copytree(digits_small, data)
    return data


def _expect(argv, *fragments):
    with pytest.raises(TrainInputError) as info:
        run_in_process(argv)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_missing_data_dir(tmp_path):
    _expect(train_args(tmp_path / "nope", tmp_path / "out"), "--data-dir", "does not exist")
    assert _nothing_written(tmp_path / "out")


def test_empty_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(train_args(tmp_path / "empty", tmp_path / "out"), "--data-dir", "is empty")
    assert _nothing_written(tmp_path / "out")


def test_class_folder_without_images(tmp_path, folder):
    (folder / "train" / "10").mkdir()
    (folder / "train" / "10" / "notes.txt").write_text("not an image")
    _expect(train_args(folder, tmp_path / "out"), "--data-dir", "class folder", "10", "has no images")
    assert _nothing_written(tmp_path / "out")


def test_val_classes_missing_from_train(tmp_path, folder):
    shutil.rmtree(folder / "train" / "3")
    _expect(train_args(folder, tmp_path / "out"), "--data-dir", "classes that", "'3'")


def test_unknown_model(tmp_path, folder):
    argv = train_args(folder, tmp_path / "out")
    argv[argv.index("nat_mini")] = "nat_minny"
    _expect(argv, "--model", "unknown model 'nat_minny'", "nat_mini")


def test_unknown_recipe(tmp_path, folder):
    _expect(train_args(folder, tmp_path / "out", "--recipe", "swin"), "--recipe", "unknown recipe 'swin'", "nat")


def test_recipe_without_the_model(tmp_path, folder):
    _expect(train_args(folder, tmp_path / "out", "--recipe", "shvit"), "--recipe", "no settings for --model 'nat_mini'")


def test_batch_not_divisible_by_grad_accum(tmp_path, folder):
    _expect(train_args(folder, tmp_path / "out", "--batch-size", "10", "--grad-accum-steps", "4"),
            "--batch-size 10", "--grad-accum-steps 4", "not divisible")


@pytest.mark.parametrize("arg, value, fragment", [
    ("--epochs", "0", "--epochs: must be >= 1"),
    ("--smoothing", "1.5", "--smoothing: must be in [0, 1]"),
    ("--lr", "-1", "--lr: must be > 0"),
    ("--batch-size", "1000", "larger than the"),
])
def test_out_of_range(tmp_path, folder, arg, value, fragment):
    _expect(train_args(folder, tmp_path / "out", arg, value), fragment)


def test_resume_from_another_models_checkpoint(tmp_path, folder):
    ckpt = tmp_path / "other.pt"
    torch.save({"meta": {"model": "az_shvit_s1", "num_classes": 10}, "model": {}}, ckpt)
    out = tmp_path / "out"
    _expect(train_args(folder, out, "--resume", str(ckpt)), "--resume", "az_shvit_s1", "not 'nat_mini'")
    assert not list(out.glob("checkpoint-*"))
    # the same through --resume auto: a run folder of another model
    out.mkdir(exist_ok=True)
    shutil.copy(ckpt, out / "checkpoint-000000001.pt")
    _expect(train_args(folder, out, "--resume", "auto"), "--resume", "az_shvit_s1")


def test_resume_file_that_is_not_a_checkpoint(tmp_path, folder):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _expect(train_args(folder, tmp_path / "out", "--resume", str(bad)), "--resume", "is a text file, not a checkpoint")
    _expect(train_args(folder, tmp_path / "out", "--resume", str(tmp_path / "missing.pt")), "--resume", "is not a file")


def test_output_not_writable(tmp_path, folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _expect(train_args(folder, blocker / "run"), "--output", "is not a writable directory")


def test_command_line_exit_status_and_message(tmp_path, capsys):
    from attnzoo.tools.cli import main

    assert main(["train", *train_args(tmp_path / "nope", tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo train: error: --data-dir:"), err
    assert main(["validate", "--model", "nat_mini", "--checkpoint", str(tmp_path / "x.safetensors"),
                 "--data-dir", str(tmp_path)]) == 2
    assert "attnzoo validate: error: --checkpoint:" in capsys.readouterr().err
