"""Checkpoints of ``attnzoo train``.

Every file in the run folder is written to a hidden temporary file beside it and moved into place
with ``os.replace`` (atomic on POSIX), so a run killed at any moment leaves whole files only
(plus, at worst, a ``.tmp-*`` file that the next start deletes). A checkpoint
``checkpoint-<update>.pt`` holds the model, optimizer, scheduler, grad scaler and EMA states, the
epoch and the step within it, the metric history and the random generator states of every rank
(python, numpy, torch, CUDA). It loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "atomic_write", "atomic_save", "clean_temporaries", "list_checkpoints", "checkpoint_path", "load_checkpoint",
    "find_resume_checkpoint", "prune_checkpoints", "rng_state", "set_rng_state", "export_safetensors",
    "CheckpointMismatch",
]

_NAME = re.compile(r"^checkpoint-(\d{9})\.pt$")


class CheckpointMismatch(ValueError):
    """A checkpoint made for another model / number of classes."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # some writers (safetensors) create private files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


def clean_temporaries(folder: Path) -> List[str]:
    removed = []
    for p in Path(folder).glob(".tmp-*"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def checkpoint_path(folder: Path, update: int) -> Path:
    return Path(folder) / f"checkpoint-{update:09d}.pt"


def list_checkpoints(folder: Path) -> List[Path]:
    """``checkpoint-*.pt`` in ``folder``, newest (highest update count) first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("checkpoint-*.pt") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint(path: Path) -> Dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not an attnzoo training checkpoint (no 'model' / 'meta')")
    return ckpt


def check_compatible(ckpt: Dict[str, Any], path: Path, model: str, num_classes: Optional[int]) -> None:
    meta = ckpt["meta"]
    if meta.get("model") != model:
        raise CheckpointMismatch(f"--resume: {str(path)!r} is a checkpoint of --model {meta.get('model')!r}, not {model!r}")
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise CheckpointMismatch(f"--resume: {str(path)!r} has {meta.get('num_classes')} classes, this run has {num_classes}")


def find_resume_checkpoint(folder: Path, warn: Callable[[str], None] = warnings.warn) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint in ``folder`` that loads; unreadable newer ones are reported and skipped."""
    for path in list_checkpoints(folder):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # truncated / corrupt file: any error of the unpickler or zip reader
            warn(f"--resume auto: skipping {path.name}, it does not load ({type(e).__name__}: {str(e)[:200]}); trying the previous one")
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)


def rng_state() -> Dict[str, Any]:
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": py,
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def export_safetensors(state_dict: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    """Weights only, in the model's own (timm) names: loads with ``timm.create_model(name,
    pretrained=True, pretrained_cfg_overlay=dict(file=path))``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
    atomic_write(Path(path), lambda p: save_file(tensors, p, metadata=metadata))
