"""torchrun DDP and FSDP2 (gloo, 2 processes) with the same global batch as one process give the
same weights after the same steps, within fp32 tolerance (only the order of the gradient sums
differs: the data order, the augmentation of each sample and the initial weights are the same);
an FSDP2 run resumes from its gathered checkpoint bit-identically."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from attnzoo.train.logs import read_csv

from .conftest import subprocess_env, train_args

# 192 train images, global batch 16: 12 steps of SGD with momentum; no drop path (its draws are
# per rank). SGD keeps the comparison at fp32 rounding: Adam divides by sqrt(v), which turns the
# last-bit differences of near-zero gradients (biases, norms) into ~1e-4 relative ones.
_RUN = ["--epochs", "1", "--opt", "sgd", "--lr", "0.03", "--drop-path", "0", "--smoothing", "0.1", "--log-interval", "4"]


def _torchrun(nproc: int, argv):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "attnzoo.train", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _max_rel_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(((x - b[k]).abs().max() / x.abs().max().clamp_min(1e-12)).item() for k, x in a.items())


@pytest.fixture(scope="module")
def single(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    proc = subprocess.run([sys.executable, "-m", "attnzoo.train", *train_args(digits_small, out, *_RUN, "--batch-size", "16")],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return out


def test_ddp_two_processes_match_one(digits_small, single, tmp_path):
    one, two = single, tmp_path / "two"
    ddp = _torchrun(2, train_args(digits_small, two, *_RUN, "--batch-size", "8"))
    assert "on 2 x cpu (DDP)" in ddp.stdout and "global batch 16 (2 x 8)" in ddp.stdout, ddp.stdout
    # only rank 0 writes and prints
    assert ddp.stdout.count("done: best top-1") == 1

    worst = _max_rel_diff(load_file(one / "final.safetensors"), load_file(two / "final.safetensors"))
    print(f"DDP(2) vs 1 process after 12 SGD steps: max relative weight difference {worst:.3g}")
    assert worst < 1e-5, worst
    ra, rb = read_csv(one / "metrics.csv")[0], read_csv(two / "metrics.csv")[0]
    assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)
    # evaluation is sharded without padding and summed: the same counts of correct images
    assert float(ra["eval_top1"]) == pytest.approx(float(rb["eval_top1"]), abs=100 / 48 + 1e-9)
    assert float(ra["eval_loss"]) == pytest.approx(float(rb["eval_loss"]), rel=1e-3)


def test_fsdp2_matches_one_process_and_resumes_exactly(digits_small, single, tmp_path):
    out = tmp_path / "fsdp"
    run = _torchrun(2, train_args(digits_small, out, *_RUN, "--batch-size", "8", "--fsdp", "--save-interval-steps", "5"))
    assert "(FSDP2)" in run.stdout, run.stdout
    final = load_file(out / "final.safetensors")
    worst = _max_rel_diff(load_file(single / "final.safetensors"), final)
    print(f"FSDP2(2) vs 1 process after 12 SGD steps: max relative weight difference {worst:.3g}")
    assert worst < 1e-5, worst
    # the full (gathered) checkpoint of step 5 resumes under FSDP2 to the same weights
    for p in out.glob("checkpoint-*.pt"):
        if p.name != "checkpoint-000000005.pt":
            p.unlink()
    (out / "final.safetensors").unlink()
    resumed = _torchrun(2, train_args(digits_small, out, *_RUN, "--batch-size", "8", "--fsdp", "--resume", "auto"))
    assert "resumed from" in resumed.stdout and "step 5/12" in resumed.stdout, resumed.stdout
    again = load_file(out / "final.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_grad_accumulation_changes_memory_not_the_result(digits_small, single, tmp_path):
    """--batch-size 16 in 4 micro-batches of 4 takes the same steps as one batch of 16."""
    from .conftest import run_in_process

    run_in_process(train_args(digits_small, tmp_path / "accum", *_RUN, "--batch-size", "16", "--grad-accum-steps", "4"))
    worst = _max_rel_diff(load_file(single / "final.safetensors"), load_file(tmp_path / "accum" / "final.safetensors"))
    print(f"4 accumulated micro-batches vs one batch after 12 SGD steps: max relative weight difference {worst:.3g}")
    assert worst < 1e-5, worst
