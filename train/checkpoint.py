"""Checkpoints of ``attnzoo train``.

Every file in the run folder is written to a hidden temporary file beside it, flushed to disk and
moved into place with ``os.replace`` (atomic on POSIX), so a run killed at any moment leaves whole
files only (plus, at worst, a ``.tmp-*`` file that the next start deletes), and a write that fails
(a full disk: ``OutputWriteError``, "no space left on device writing <file>; nothing was
replaced") leaves every earlier file as it was.

The weights files (``checkpoint-<update>.pt``, ``best.pt``, ``best.safetensors``,
``final.safetensors``, ``final_ema.safetensors``) each get a ``<file>.sha256`` sidecar in
``sha256sum`` format, hashed from the bytes as they are written (``sha256sum -c`` checks one by
hand). It is moved into place before the file it describes, listing the new digest and the one it
replaces, and rewritten with the new digest alone afterwards, so at every moment the file in place
matches its sidecar. Loading (``load_checkpoint``: resume, validate) refuses a file whose bytes
match no recorded digest, naming the file and both digests; a file without a sidecar (written
before attnzoo recorded digests) loads with a warning.

A checkpoint holds the model, optimizer, scheduler, grad scaler and EMA states, the epoch and the
step within it, the metric history and the random generator states of every rank (python, numpy,
torch, CUDA), and the run's model settings (``meta``: model, num_classes, model_kwargs, img_size).
It loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from attnzoo._checkpoint import (
    DIGEST_SUFFIX, DigestMismatch, UnreadableCheckpoint, digest_path, read_checkpoint_file, read_digests, verify_digest,
    write_digest,
)

__all__ = [
    "atomic_write", "atomic_save", "clean_temporaries", "list_checkpoints", "checkpoint_path", "load_checkpoint",
    "find_resume_checkpoint", "prune_checkpoints", "rng_state", "set_rng_state", "export_safetensors",
    "CheckpointMismatch", "CheckpointUnusable", "OutputWriteError", "check_compatible",
]

_NAME = re.compile(r"^checkpoint-(\d{9})\.pt$")


class CheckpointMismatch(ValueError):
    """A checkpoint made for another model / number of classes / model kwargs."""


class CheckpointUnusable(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged (digest mismatch) or not a training checkpoint."""


class OutputWriteError(OSError):
    """A file of the run could not be written; the file it was to replace (if any) is untouched."""

    def __init__(self, path: Path, exc: OSError):
        self.path = Path(path)
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            text = f"no space left on device writing {self.path}; nothing was replaced"
        else:
            text = f"{(exc.strerror or str(exc)).lower()} writing {self.path}; nothing was replaced"
        super().__init__(exc.errno, text)
        self.message = text

    def __str__(self) -> str:
        return self.message


class _HashingWriter:
    """A binary file that hashes what goes through it (torch.save and safetensors write sequentially)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._h = hashlib.sha256()
        self.error: Optional[OSError] = None  # torch's writer turns an exception of write() into "unexpected pos"

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self._h.update(data)
        return n if n is not None else len(data)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _open_for_writing(path: Path) -> BinaryIO:
    """Where every file of the run is written (a function of its own so a test can fill the disk)."""
    return open(path, "xb")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, digest: bool = False) -> str:
    """Writes ``path`` through ``write(binary_file)`` via a temporary beside it and ``os.replace``;
    returns the sha256 of the bytes written. ``digest``: keep a ``.sha256`` sidecar (see the module
    docstring). Any OSError becomes ``OutputWriteError`` with ``path`` and every existing file intact."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    out = None
    try:
        with _open_for_writing(tmp) as f:
            out = _HashingWriter(f)
            try:
                write(out)
            except Exception as exc:
                if out.error is not None and not isinstance(exc, OSError):
                    raise out.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        sha = out.hexdigest()
        if digest:
            replaced = (read_digests(path) or []) if path.exists() else []
            write_digest(path, [sha] + [d for d in replaced if d != sha][:1])
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise OutputWriteError(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    if digest:
        try:
            write_digest(path, [sha])
        except OSError:
            pass  # the sidecar written before the replace lists this digest too
    return sha


def atomic_save(obj: Any, path: Path) -> str:
    """``torch.save(obj)`` to ``path`` atomically, with a ``.sha256`` sidecar; returns the digest."""
    return atomic_write(path, lambda f: torch.save(obj, f), digest=True)


def clean_temporaries(folder: Path) -> List[str]:
    """Deletes what a killed run can leave: ``.tmp-*`` files, and sidecars whose file never arrived."""
    removed = []
    for p in Path(folder).glob(".tmp-*"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    for side in Path(folder).glob(f"checkpoint-*.pt{DIGEST_SUFFIX}"):
        if not side.with_name(side.name[: -len(DIGEST_SUFFIX)]).exists():
            side.unlink(missing_ok=True)
            removed.append(side.name)
    return removed


def checkpoint_path(folder: Path, update: int) -> Path:
    return Path(folder) / f"checkpoint-{update:09d}.pt"


def list_checkpoints(folder: Path) -> List[Path]:
    """``checkpoint-*.pt`` in ``folder``, newest (highest update count) first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("checkpoint-*.pt") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def no_digest_warning(path: Path) -> str:
    return (f"{Path(path).name} carries no sha256 digest ({digest_path(path).name} is missing: written before attnzoo "
            "recorded digests, or copied without it); loading it unverified")


def load_checkpoint(path: Path, warn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """A training checkpoint, verified against its sidecar (``warn`` is told when it has none).
    Raises ``CheckpointUnusable`` naming the file: damaged (both digests), unreadable, or not a
    checkpoint of ``attnzoo train``."""
    try:
        verified = verify_digest(path)
        ckpt, _ = read_checkpoint_file(str(path))
    except (DigestMismatch, UnreadableCheckpoint) as exc:
        raise CheckpointUnusable(str(exc)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointUnusable(f"{str(path)!r} is not an attnzoo training checkpoint (no 'model' / 'meta'; "
                                 "weights alone load with --pretrained and pretrained_cfg_overlay, not --resume)")
    if verified is None and warn is not None:
        warn(no_digest_warning(path))
    return ckpt


def _setting(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={_setting(v)}" for k, v in value.items()) or "(none)"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_setting(v) for v in value) + ")"
    return str(value)


def check_compatible(ckpt: Dict[str, Any], path: Path, model: str, num_classes: Optional[int],
                     model_kwargs: Optional[Dict[str, Any]] = None) -> None:
    """Refuses a checkpoint written by a run of another model, class count or ``--model-kwargs``,
    naming the settings that differ and how to start fresh."""
    meta = ckpt["meta"]
    fresh = "resume with the settings of the run that wrote it, or start fresh: another --output, or no --resume"
    if meta.get("model") != model:
        raise CheckpointMismatch(f"--resume: {str(path)!r} is a checkpoint of --model {meta.get('model')!r}, not {model!r}; {fresh}")
    diffs = []
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        diffs.append(f"--num-classes (checkpoint {meta.get('num_classes')}, this run {num_classes})")
    if model_kwargs is not None and meta.get("model_kwargs") is not None:
        theirs, ours = dict(meta["model_kwargs"]), dict(model_kwargs)
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key, "(unset)") != ours.get(key, "(unset)"):
                diffs.append(f"--model-kwargs {key} (checkpoint {_setting(theirs.get(key, '(unset)'))}, "
                             f"this run {_setting(ours.get(key, '(unset)'))})")
    if diffs:
        raise CheckpointMismatch(f"--resume: {str(path)!r} was written by a run of {model} with other settings: "
                                 f"{'; '.join(diffs)}. Its weights do not fit this run's model; {fresh}")


def find_resume_checkpoint(folder: Path, warn: Callable[[str], None] = warnings.warn) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint in ``folder`` that loads and verifies; damaged or unreadable newer
    ones are reported and skipped."""
    for path in list_checkpoints(folder):
        try:
            return path, load_checkpoint(path, warn=warn)
        except CheckpointUnusable as e:
            warn(f"--resume auto: skipping {path.name}: {e}; trying the previous one")
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    for path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


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


def export_safetensors(state_dict: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> str:
    """Weights only, in the model's own (timm) names, with a ``.sha256`` sidecar: loads with
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``. Written
    from Python (``safetensors.torch.save``), so a full disk raises instead of leaving a short file."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    seen = set()
    for k, v in tensors.items():  # safetensors refuses tensors sharing memory: copy the second and later ones
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            tensors[k] = v.clone()
        seen.add(ptr)
    return atomic_write(Path(path), lambda f: f.write(save(tensors, metadata=metadata)), digest=True)
