"""``attnzoo convert``: every bad input ends in one line on stderr naming the file or argument and
what was expected, with exit status 2, nothing written and no traceback; a pickle that would run
code is never run, and no message suggests ``weights_only=False``.

Before: 8 of 17 bad inputs ended in a raw traceback (garbage or text files, an empty file in a
bare ``EOFError``, another model's weights, a missing key); torch's hint to "retry with
weights_only=False"; a garbage ``.safetensors`` said "header too large" without naming the file;
errors went to stdout with status 1.
"""
import os
import zipfile

import pytest
import torch
import timm

import attnzoo  # noqa: F401
from attnzoo.tools.cli import main

MODEL = "az_shvit_s1"  # the smallest attnzoo model


@pytest.fixture(scope="module")
def shapes():
    with torch.device("meta"):
        return {k: (tuple(v.shape), v.dtype) for k, v in timm.create_model(MODEL).state_dict().items()}


def _state(shapes, **changes):
    """Zeros in the model's shapes, as stride-0 views of one element (a file of a few KB)."""
    state = {k: torch.zeros((), dtype=dt).expand(s) for k, (s, dt) in shapes.items()}
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def _make(kind, tmp, shapes):
    """(the --checkpoint argument, extra arguments, the fragment the message must hold)."""
    keys = sorted(shapes)
    weight = next(k for k in keys if shapes[k][0] and len(shapes[k][0]) == 4 and shapes[k][1].is_floating_point)
    if kind == "missing":
        return str(tmp / "nope.pth"), [], "does not exist"
    if kind == "folder":
        (tmp / "dir").mkdir()
        return str(tmp / "dir"), [], "is a folder"
    if kind == "empty pth":
        (tmp / "empty.pth").write_bytes(b"")
        return str(tmp / "empty.pth"), [], "is empty (0 bytes)"
    if kind == "empty safetensors":
        (tmp / "empty.safetensors").write_bytes(b"")
        return str(tmp / "empty.safetensors"), [], "is empty (0 bytes)"
    if kind == "text":
        (tmp / "notes.pth").write_text("these are my notes\n")
        return str(tmp / "notes.pth"), [], "is a text file, not a checkpoint"
    if kind == "garbage pth":
        (tmp / "garbage.pth").write_bytes(bytes(range(7, 256)) * 16)
        return str(tmp / "garbage.pth"), [], "is not a checkpoint: neither a torch file"
    if kind == "garbage safetensors":
        (tmp / "garbage.safetensors").write_bytes(bytes(range(7, 256)) * 16)
        return str(tmp / "garbage.safetensors"), [], "is not a checkpoint: neither a torch file"
    if kind == "truncated pth":
        torch.save(_state(shapes), tmp / "whole.pth")
        data = (tmp / "whole.pth").read_bytes()
        (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
        return str(tmp / "truncated.pth"), [], "is a damaged or truncated torch zip archive"
    if kind == "truncated safetensors":
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in _state(shapes).items() if v.numel() < 10000})
        (tmp / "truncated.safetensors").write_bytes(data[:-100])
        return str(tmp / "truncated.safetensors"), [], "is a damaged or truncated safetensors file"
    if kind == "code":
        torch.save({"state_dict": _RunsCode(str(tmp / "ran"))}, tmp / "code.pth")
        return str(tmp / "code.pth"), [], "cannot be read as weights only (it would import "
    if kind == "not a dict":
        torch.save([torch.zeros(3)], tmp / "list.pth")
        return str(tmp / "list.pth"), [], "holds a list, not a state dict"
    if kind == "no tensors":
        torch.save({"epoch": 3, "arch": "x"}, tmp / "meta.pth")
        return str(tmp / "meta.pth"), [], "holds no tensors"
    if kind == "another model":
        with torch.device("meta"):
            other = {k: (tuple(v.shape), v.dtype) for k, v in timm.create_model("nat_mini").state_dict().items()}
        torch.save({k: torch.zeros((), dtype=dt).expand(s) for k, (s, dt) in other.items()}, tmp / "nat.pth")
        return str(tmp / "nat.pth"), [], f"is not a checkpoint of {MODEL}"
    if kind == "missing key":
        torch.save(_state(shapes, **{keys[2]: None}), tmp / "short.pth")
        return str(tmp / "short.pth"), [], f"lacks 1 of {MODEL}'s"
    if kind == "shape":
        torch.save(_state(shapes, **{weight: torch.zeros(shapes[weight][0][::-1])}), tmp / "shape.pth")
        return str(tmp / "shape.pth"), [], f"tensor '{weight}' of "
    if kind == "nan":
        torch.save(_state(shapes, **{weight: torch.full(shapes[weight][0], float("nan"))}), tmp / "nan.pth")
        return str(tmp / "nan.pth"), [], "non-finite values"
    if kind == "integers":
        torch.save({k: torch.zeros(s, dtype=torch.int64) for k, (s, _) in shapes.items()}, tmp / "int.pth")
        return str(tmp / "int.pth"), [], "is torch.int64, but"
    if kind == "bad kwargs":
        torch.save(_state(shapes), tmp / "ok.pth")
        return str(tmp / "ok.pth"), ["--model-kwargs", "embed_dimm=8"], "--model-kwargs: az_shvit_s1 does not take ['embed_dimm']"
    raise ValueError(kind)


KINDS = ["missing", "folder", "empty pth", "empty safetensors", "text", "garbage pth", "garbage safetensors", "truncated pth",
         "truncated safetensors", "code", "not a dict", "no tensors", "another model", "missing key", "shape", "nan", "integers",
         "bad kwargs"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoint_is_one_line_exit_2_and_nothing_written(kind, shapes, tmp_path, capsys):
    src, extra, fragment = _make(kind, tmp_path, shapes)
    out = tmp_path / "repo"
    assert main(["convert", MODEL, "--checkpoint", src, "--out", str(out), *extra]) == 2
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    line = lines[0]
    assert line.startswith("attnzoo convert: error: "), line
    assert fragment in line, line
    if kind != "bad kwargs":
        assert src in line or repr(src) in line, line  # names the file
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line, line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".convert-" in p.name]
    assert not (tmp_path / "ran").exists()  # the pickled code never ran


@pytest.mark.parametrize("argv, fragment", [
    (["nat_minny"], "unknown attnzoo model 'nat_minny'"),
    ([MODEL, "--num-classes", "0"], "--num-classes must be >= 1, got 0"),
    ([MODEL, "--check-size", "8"], "--check-size must be >= 16 px, got 8"),
    ([], "MODEL: required:"),
])
def test_bad_arguments_are_one_line_exit_2(argv, fragment, shapes, tmp_path, capsys):
    torch.save(_state(shapes), tmp_path / "ok.pth")
    assert main(["convert", *argv, "--checkpoint", str(tmp_path / "ok.pth"), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnzoo convert: error: ") and fragment in err, err


def test_existing_files_are_kept_and_a_file_as_out_is_refused(shapes, tmp_path, capsys):
    torch.save(_state(shapes), tmp_path / "ok.pth")
    out = tmp_path / "repo"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"mine")
    assert main(["convert", MODEL, "--checkpoint", str(tmp_path / "ok.pth"), "--out", str(out)]) == 2
    assert "already has model.safetensors; pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"mine"
    (tmp_path / "afile").write_text("x")
    assert main(["convert", MODEL, "--checkpoint", str(tmp_path / "ok.pth"), "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
