"""Checkpoint files and state dicts: what every reader, writer and checkpoint filter of attnzoo shares.

* Reading (``read_checkpoint_file``): a file's format is taken from its first bytes, not its
  name (a torch zip archive, a legacy torch pickle, safetensors); torch files are read with
  ``torch.load(weights_only=True)`` only. An empty, text, truncated, damaged or foreign file, and a
  pickle that would run code, raise ``UnreadableCheckpoint`` saying which file and what it is.
  Nothing here ever suggests ``weights_only=False``: attnzoo never runs code from a checkpoint.
* Digests (``verify_digest`` / ``write_digest``): a file ``F`` that ``attnzoo train`` writes has a
  sidecar ``F.sha256`` in ``sha256sum`` format (``<hex>  <name>``). ``verify_digest`` hashes ``F``
  and refuses it (``DigestMismatch``, naming the file and both digests) when it matches no line of
  the sidecar. While a file is being replaced the sidecar lists the new digest and the old one, so
  a crash between the two renames leaves whichever file is in place verifiable.
* Layouts (``fit_layout``): the one conversion a filter may apply to a tensor because of its shape
  alone, a 1x1 conv weight ``(O, I, 1, 1)`` <-> a Linear weight ``(O, I)``. Any other difference
  is left as it is, so the shape check (``attnzoo.hub.check_state_dict``) refuses it naming the
  key, both shapes and the file, before anything is copied.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "UnreadableCheckpoint", "DigestMismatch", "read_checkpoint_file", "read_record", "unwrap_state_dict", "fit_layout",
    "file_sha256", "digest_path", "read_digests", "write_digest", "verify_digest", "DIGEST_SUFFIX",
]

DIGEST_SUFFIX = ".sha256"
_CHUNK = 1 << 20


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be read as weights; the message names the file and says what it is."""


class DigestMismatch(ValueError):
    """A file whose bytes no longer match the sha256 recorded when it was written."""

    def __init__(self, message: str, path: str, expected: Sequence[str], actual: str):
        super().__init__(message)
        self.path, self.expected, self.actual = path, list(expected), actual


# --- reading -----------------------------------------------------------------------------------

def _sniff(path: str, size: int) -> str:
    """'zip' | 'pickle' | 'safetensors' | 'text' | 'unknown' from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 10 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8:
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2-5: torch's legacy format
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return "unknown"


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's and miniz's go on with advice)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__


_GLOBALS = (re.compile(r"GLOBAL\s+([\w.]+)"), re.compile(r"[Uu]nsupported globals?:\s+([\w.]+(?:,\s*[\w.]+)*)"))


def _weights_only_reason(exc: BaseException) -> Optional[str]:
    """Why torch's weights-only unpickler refused a file (the globals it met, or its own error
    line), or None when ``exc`` is not such a refusal. torch's advice around it is dropped."""
    text = str(exc)
    if not ("weights_only" in text or "Weights only" in text or "WeightsUnpickler" in text):
        return None
    found = _GLOBALS[0].findall(text) or _GLOBALS[1].findall(text)
    if found:
        return "it would import " + ", ".join(dict.fromkeys(g.strip() for f in found for g in f.split(",")))
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return f"refused: {m.group(1).strip().rstrip('.')}" if m else "refused by the weights-only unpickler"


def read_checkpoint_file(path: str) -> Tuple[Any, Dict[str, str]]:
    """(the object a checkpoint file holds, its safetensors metadata or {}).

    The format is sniffed from the bytes; torch files load with ``weights_only=True`` onto the CPU,
    safetensors files as a dict of tensors. Raises ``UnreadableCheckpoint`` naming ``path``.
    """
    path = str(path)
    if not os.path.exists(path):
        raise UnreadableCheckpoint(f"{path!r} does not exist")
    if os.path.isdir(path):
        raise UnreadableCheckpoint(f"{path!r} is a folder, not a checkpoint file")
    size = os.path.getsize(path)
    if size == 0:
        raise UnreadableCheckpoint(f"{path!r} is empty (0 bytes): not a checkpoint (an interrupted copy or download?)")
    kind = _sniff(path, size)
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        except Exception as exc:
            raise UnreadableCheckpoint(f"{path!r} is a damaged or truncated safetensors file ({size} bytes; {_first_line(exc)})") from None
    if kind in ("zip", "pickle"):
        try:
            return torch.load(path, map_location="cpu", weights_only=True), {}
        except Exception as exc:
            reason = _weights_only_reason(exc)
            if reason is not None:
                raise UnreadableCheckpoint(
                    f"{path!r} cannot be read as weights only ({reason}): it holds pickled Python objects other than "
                    "tensors and plain containers, or is damaged; attnzoo never runs code from a checkpoint file: save "
                    "the weights alone (torch.save(model.state_dict(), ...) or safetensors) where the file was made") from None
            what = "torch zip archive" if kind == "zip" else "torch pickle"
            raise UnreadableCheckpoint(f"{path!r} is a damaged or truncated {what} ({size} bytes; "
                                       f"{type(exc).__name__}: {_first_line(exc)})") from None
    if kind == "text":
        with open(path, "rb") as f:
            start = f.read(60).decode("utf-8", "replace").splitlines()[0] if size else ""
        raise UnreadableCheckpoint(f"{path!r} is a text file, not a checkpoint (it starts {start!r}); expected a torch "
                                   "checkpoint (.pth / .pt / .bin) or a .safetensors file")
    with open(path, "rb") as f:
        start = f.read(8).hex(" ")
    raise UnreadableCheckpoint(f"{path!r} is not a checkpoint: neither a torch file (zip archive or pickle) nor safetensors "
                               f"({size} bytes starting {start})")


def read_record(path: str) -> Dict[str, Any]:
    """What a checkpoint file records about its model, read without loading its tensors: the
    safetensors metadata (strings), or a torch checkpoint's ``meta`` dict (``attnzoo train``'s
    training checkpoints; memory-mapped); {} when it records nothing. Raises ``UnreadableCheckpoint``."""
    path = str(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return read_checkpoint_file(path)[1]  # raises the named error
    kind = _sniff(path, os.path.getsize(path))
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return dict(f.metadata() or {})
        except Exception:
            return read_checkpoint_file(path)[1]
    if kind == "zip":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return read_checkpoint_file(path)[1]
        return dict(obj["meta"]) if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    return read_checkpoint_file(path)[1] if kind != "pickle" else {}


def unwrap_state_dict(obj: Any) -> Any:
    """The state dict inside the 'state_dict' / 'model' wrappers training scripts save."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    return obj


# --- layouts -----------------------------------------------------------------------------------

def fit_layout(value: torch.Tensor, target: Iterable[int]) -> torch.Tensor:
    """``value`` in the layout of a parameter of shape ``target`` where the only difference is a
    1x1 conv weight ``(O, I, 1, 1)`` against a Linear weight ``(O, I)`` (either way round); every
    other tensor is returned unchanged, for the shape check to refuse or accept as it is."""
    target = tuple(target)
    shape = tuple(value.shape)
    if shape == target:
        return value
    if len(shape) == 4 and shape[2:] == (1, 1) and target == shape[:2]:
        return value[:, :, 0, 0]
    if len(shape) == 2 and len(target) == 4 and target[2:] == (1, 1) and target[:2] == shape:
        return value[:, :, None, None]
    return value


# --- digests -----------------------------------------------------------------------------------

def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def read_digests(path) -> Optional[List[str]]:
    """The sha256 digests recorded for ``path`` (None: no sidecar)."""
    side = digest_path(path)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return [f"unreadable sidecar ({exc})"]
    return [line.split()[0].lower() for line in text.splitlines() if line.strip()]


def write_digest(path, digests: Sequence[str], tmp_prefix: str = ".tmp-") -> None:
    """Writes ``path``'s sidecar (``sha256sum`` format, one line per digest) atomically."""
    side = digest_path(path)
    name = Path(path).name
    tmp = side.with_name(f"{tmp_prefix}{os.getpid()}-{side.name}")
    try:
        with open(tmp, "w") as f:
            f.write("".join(f"{d}  {name}\n" for d in digests))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, side)
    finally:
        if tmp.exists():
            tmp.unlink()


def verify_digest(path) -> Optional[str]:
    """The verified sha256 of ``path``; None when it has no sidecar (written before attnzoo recorded
    digests, or copied without it). Raises ``DigestMismatch`` when its bytes match no recorded digest."""
    expected = read_digests(path)
    if expected is None:
        return None
    actual = file_sha256(str(path))
    if actual not in expected:
        side = digest_path(path)
        raise DigestMismatch(
            f"{str(path)!r} is damaged: its sha256 is {actual}, but {expected[0]} was recorded in {side.name} when it was "
            "written; the file changed after it was written (disk or copy error) and is not loaded", str(path), expected, actual)
    return actual
