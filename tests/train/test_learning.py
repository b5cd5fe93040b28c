"""A tiny NAT learns the offline demo data (scikit-learn's digits), and ``attnzoo validate`` on
the weights it wrote reports exactly what the loop's evaluation reported."""
from __future__ import annotations

import math

import pytest
import torch

from attnzoo.train.logs import read_csv

from .conftest import run_in_process, train_args


@pytest.fixture(scope="module")
def learned(digits16, tmp_path_factory):
    out = tmp_path_factory.mktemp("learn")
    torch.manual_seed(0)
    summary = run_in_process(train_args(digits16, out, "--epochs", "2", "--batch-size", "32", "--lr", "3e-3",
                                        "--drop-path", "0.0", "--log-interval", "10"))
    return out, summary


def test_tiny_nat_learns_digits_to_90_percent(learned):
    out, summary = learned
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 2
    # 2 epochs x 44 steps of 32 images: the bar is 90% top-1 on the 359 held-out digits (chance: 10%)
    assert summary["best_top1"] > 90.0, rows
    first, last = (float(r["train_loss"]) for r in rows)
    assert last < first < math.log(10)  # below chance-level cross-entropy after one epoch
    lrs = [float(r["lr"]) for r in read_csv(out / "steps.csv")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 3e-3 and lrs[-1] == pytest.approx(1e-6)  # cosine down to --min-lr
    for name in ("metrics.png", "best.safetensors", "final.safetensors", "best.pt"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".tmp-*"))


def test_validate_agrees_with_the_training_loop(learned, digits16):
    import argparse

    from attnzoo.tools.cli import main
    from attnzoo.train.config import add_validate_arguments
    from attnzoo.train.validate import validate

    out, summary = learned
    best_row = next(r for r in read_csv(out / "metrics.csv") if int(r["epoch"]) == summary["best_epoch"])
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    for weights in ("best.safetensors", "best.pt"):
        args = parser.parse_args(["--model", "nat_mini", "--checkpoint", str(out / weights), "--data-dir", str(digits16),
                                  "--img-size", "16", "--batch-size", "32", "--workers", "0"])
        m = validate(args)
        assert m["images"] == 359
        assert m["top1"] == float(best_row["eval_top1"]), weights
        assert m["top5"] == float(best_row["eval_top5"]), weights
        assert m["loss"] == float(best_row["eval_loss"]), weights
    # and through the command line (model kwargs and classes read from the file)
    assert main(["validate", "--model", "nat_mini", "--checkpoint", str(out / "best.safetensors"),
                 "--data-dir", str(digits16), "--img-size", "16", "--batch-size", "32", "--workers", "0"]) == 0


def test_exported_weights_load_with_timm_create_model(learned):
    import timm
    from safetensors.torch import load_file

    out, _ = learned
    path = out / "final.safetensors"
    model = timm.create_model("nat_mini", pretrained=True, num_classes=10, embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 1, 1), pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    state = load_file(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    ckpt = torch.load(sorted(out.glob("checkpoint-*.pt"))[-1], weights_only=True)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in state.items())


def test_trained_weights_convert_and_load_back_with_no_extra_arguments(learned, digits16, tmp_path, capsys):
    """Train -> convert -> load for one's own model (issue 22): the weights record their model,
    classes, --model-kwargs, input size and class names, so `attnzoo convert --checkpoint
    final.safetensors` needs nothing else, and the folder loads with
    timm.create_model("local-dir:...", pretrained=True) alone. Before: convert built the default
    nat_mini and failed (tensor 'head.bias' has shape (10,), nat_mini needs (1000,))."""
    import json

    import timm
    from safetensors.torch import load_file

    from attnzoo.tools.cli import main

    out, summary = learned
    repo = tmp_path / "digits-nat"
    assert main(["convert", "--checkpoint", str(out / "final.safetensors"), "--out", str(repo)]) == 0
    model = timm.create_model(f"local-dir:{repo}", pretrained=True).eval()
    weights = load_file(out / "final.safetensors")
    got = model.state_dict()
    assert set(got) == set(weights) and all(torch.equal(got[k], v) for k, v in weights.items())
    assert model.num_classes == 10 and model.pretrained_cfg["input_size"] == (3, 16, 16)
    config = json.loads((repo / "config.json").read_text())
    assert config["label_names"] == [str(d) for d in range(10)]
    assert config["model_args"]["embed_dim"] == 16 and config["pretrained_cfg"]["license"] == "other"
    card = (repo / "README.md").read_text()
    assert "trained with `attnzoo train`" in card and "ImageNet" not in card
    # validate reads the model, its kwargs, the classes and the input size from the weights too
    assert main(["validate", "--checkpoint", str(out / "final.safetensors"), "--data-dir", str(digits16),
                 "--batch-size", "64", "--workers", "0"]) == 0
    assert "nat_mini @ 16px on 359 images" in capsys.readouterr().out
