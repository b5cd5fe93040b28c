"""Verified checkpoint I/O: every pretrained weight attnzoo reads goes through this module.

Three ways in, one set of checks:

* ``build_model`` (every family's create function, i.e. timm's ``pretrained=True`` path and
  ``timm.create_model('hf-hub:ORG/NAME')``): resolves the pretrained cfg, fetches, verifies and
  reads the file here before the model is built, and hands timm the state dict through the
  family's ``checkpoint_filter_fn``, run under ``check_state_dict``.
* ``attnzoo.mm.AttnZooBackbone(init_cfg=...)`` and ``attnzoo convert``: ``fetch_checkpoint`` +
  ``read_state_dict`` + the family filter + ``check_state_dict``.
* ``create_model``: ``timm.create_model`` that fetches an ``hf-hub:`` model's ``config.json``
  here first (timm's own fetch of it retries for tens of seconds on a failing Hub).

What is verified:

* Hub files (``hub_file``): the sha256 of an LFS file must equal the Hub's LFS ETag (a small
  non-LFS file: its git blob sha1). On mismatch the cached blob and its snapshot link are
  removed. A verified file is remembered (``<cache>/verified/<hash>.json`` with its size, mtime and
  inode), so a warm load does not hash gigabytes again. The file is picked from the cfg
  (``hf_hub_filename``) or the repo's listing, never by trying a second name after a failure.
* URLs (``url_file``): cached under a name derived from the whole URL, written through a temp
  file and renamed; checked against a sha256 when one is given, as pip's ``#sha256=<hex>`` URL
  fragment (in a cfg's ``url``, an ``init_cfg`` checkpoint or ``attnzoo convert --checkpoint``).
* Local files: the format is read from the bytes (torch files with ``weights_only=True`` only),
  and a file with a ``.sha256`` sidecar (what ``attnzoo train`` writes) must match it
  (``attnzoo._checkpoint``); an empty, text, damaged or foreign file is named as what it is.
* Tensors (``check_state_dict``): the names are the model's (none missing, none extra);
  floating tensors are finite; a parameter the model holds in a floating dtype must come as a
  floating tensor (int / bool / complex are refused); shapes equal the model's exactly (the
  family filters convert only the layouts they know). Every message names the model, the key and
  the file, and nothing is copied into the model before all checks pass.

Failures are fast and named: a missing repo or file, an HTTP error (with its status), a timeout
(``HF_HUB_ETAG_TIMEOUT`` for the metadata call, ``HF_HUB_DOWNLOAD_TIMEOUT`` for the transfer) and
offline mode with an empty cache each raise one ``PretrainedLoadError`` naming the model, the
repo or URL and the file, and saying how to pass the file locally in the caller's terms (timm's
``pretrained_cfg_overlay``, OpenMMLab's ``init_cfg``, ``attnzoo convert --checkpoint``).
attnzoo's own cache lives in ``$ATTNZOO_CACHE`` (default ``~/.cache/attnzoo``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch

from ._checkpoint import DigestMismatch, UnreadableCheckpoint, read_checkpoint_file, unwrap_state_dict, verify_digest

__all__ = [
    "PretrainedLoadError", "build_model", "cache_dir", "check_state_dict", "create_model", "fetch_checkpoint",
    "hub_file", "read_checkpoint", "read_state_dict", "url_file", "WEIGHT_FILES",
]

_logger = logging.getLogger(__name__)

# Weight files of a Hub repo, in order of preference, when neither the cfg nor the id names one.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 20


class PretrainedLoadError(RuntimeError):
    """A pretrained checkpoint could not be fetched, verified or read. The message names the model,
    the source (Hub repo or URL) and the file."""


def cache_dir() -> Path:
    """attnzoo's cache: ``$ATTNZOO_CACHE``, default ``~/.cache/attnzoo``."""
    return Path(os.environ.get("ATTNZOO_CACHE") or Path.home() / ".cache" / "attnzoo")


def _hint(model: str, hint: Optional[str] = None) -> str:
    """How to pass the file locally, in the words of the caller's API (default: timm's)."""
    return hint or (f"download the file yourself and pass it: timm.create_model({model!r}, pretrained=True, "
                    f"pretrained_cfg_overlay=dict(file='/path/to/file'))")


def _describe(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "code", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"HTTP {status}: {text}" if isinstance(status, int) else f"{type(exc).__name__}: {text}"


# --- hashing and the verified-file record -----------------------------------------------------

def _file_hash(path: str, kind: str) -> str:
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
    if kind == "git-sha1":
        h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hash_kind(expected: str) -> Optional[str]:
    if _SHA256.match(expected):
        return "sha256"
    if _SHA1.match(expected):
        return "git-sha1"
    return None


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino]


def _record_path(expected: str) -> Path:
    return cache_dir() / "verified" / f"{expected}.json"


def _remembered(path: str, expected: str) -> bool:
    try:
        return json.loads(_record_path(expected).read_text()) == _stamp(path)
    except (OSError, ValueError):
        return False


def _remember(path: str, expected: str) -> None:
    record = _record_path(expected)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_stamp(path)))
        os.replace(tmp, record)
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        _logger.debug("could not record verified hash of %s: %s", path, exc)


def _verify(path: str, expected: str, what: str, on_mismatch: Callable[[], None], model: str, hint: Optional[str] = None) -> None:
    """Raises (after ``on_mismatch()``) unless ``path``'s hash is ``expected`` (sha256 or git blob sha1)."""
    kind = _hash_kind(expected)
    if kind is None or _remembered(path, expected):
        return
    actual = _file_hash(path, kind)
    if actual != expected:
        on_mismatch()
        raise PretrainedLoadError(f"{what}: {kind} mismatch, expected {expected}, got {actual}; the damaged file was removed from the cache; load again to fetch it anew, or {_hint(model, hint)}")
    _remember(path, expected)


# --- Hub files ---------------------------------------------------------------------------------

def _hub():
    # imported when used, so HF_ENDPOINT and friends set by the caller are honoured
    import huggingface_hub
    from huggingface_hub import constants

    return huggingface_hub, constants


def _is_not_found(exc: BaseException) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(exc, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)) or status in (401, 403, 404)


def _cached(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    hf, _ = _hub()
    found = hf.try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _remove_cached(path: str) -> None:
    blob = os.path.realpath(path)
    for p in {blob, path}:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def _pick_hub_filename(repo_id: str, revision: Optional[str], model: str, hint: Optional[str] = None) -> str:
    """The weight file of a repo whose cfg names none: from the cache when offline, else from the
    repo's listing (one metadata call, ``HF_HUB_ETAG_TIMEOUT``)."""
    hf, constants = _hub()
    where = f"{model}: Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    if constants.is_offline_mode():
        for name in WEIGHT_FILES:
            if _cached(repo_id, name, revision):
                return name
        raise PretrainedLoadError(f"{where}: offline (HF_HUB_OFFLINE=1) and its weight file ({' or '.join(map(repr, WEIGHT_FILES))}) "
                                  f"is not in the cache; {_hint(model, hint)}")
    try:
        info = hf.HfApi().model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:
        for name in WEIGHT_FILES:  # the listing is unreachable, but a cached weight file is still usable
            if not _is_not_found(exc) and _cached(repo_id, name, revision):
                _logger.warning("%s: listing failed (%s); using the cached %s", where, _describe(exc), name)
                return name
        problem = "not found, or not visible with your token" if _is_not_found(exc) else "could not list the repo's files"
        raise PretrainedLoadError(f"{where}: {problem} ({_describe(exc)}); {_hint(model, hint)}") from exc
    names = [s.rfilename for s in (info.siblings or [])]
    for name in WEIGHT_FILES:
        if name in names:
            return name
    raise PretrainedLoadError(f"{where} has none of {', '.join(WEIGHT_FILES)} (files: {', '.join(names) or 'none'}); "
                              f"name one with pretrained_cfg_overlay=dict(hf_hub_filename=...) or {_hint(model, hint)}")


def hub_file(repo_id: str, filename: Optional[str] = None, revision: Optional[str] = None, *, model: str = "checkpoint",
             hint: Optional[str] = None) -> str:
    """A verified local copy of ``filename`` (None: picked from the cfg / listing) of a Hub repo.

    One metadata call (no retries, ``HF_HUB_ETAG_TIMEOUT``), then huggingface_hub's download into
    its cache, then the hash check against the ETag (the blob's name in the cache). Offline, or when
    the Hub is unreachable, a cached copy is used (and verified); without one the error says so.
    """
    hf, constants = _hub()
    filename = filename or _pick_hub_filename(repo_id, revision, model, hint)
    what = f"{model}: file {filename!r} of Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    expected = None
    if constants.is_offline_mode():
        path = _cached(repo_id, filename, revision)
        if path is None:
            raise PretrainedLoadError(f"{what}: offline (HF_HUB_OFFLINE=1) and not in the cache; {_hint(model, hint)}")
    else:
        try:
            meta = hf.get_hf_file_metadata(hf.hf_hub_url(repo_id, filename, revision=revision), timeout=constants.HF_HUB_ETAG_TIMEOUT)
            expected = meta.etag
        except Exception as exc:
            path = None if _is_not_found(exc) else _cached(repo_id, filename, revision)
            if path is None:
                kind = "not found, or not visible with your token" if _is_not_found(exc) else "unreachable"
                raise PretrainedLoadError(f"{what}: {kind} ({_describe(exc)}); {_hint(model, hint)}") from exc
            _logger.warning("%s: Hub unreachable (%s); using the cached copy", what, _describe(exc))
        else:
            try:
                path = hf.hf_hub_download(repo_id, filename, revision=revision)
            except Exception as exc:
                raise PretrainedLoadError(f"{what}: download failed ({_describe(exc)}); {_hint(model, hint)}") from exc
    # The cache stores a blob under its ETag: a cached file is checked against its own name.
    expected = expected or os.path.basename(os.path.realpath(path))
    _verify(path, expected, what, lambda: _remove_cached(path), model, hint)
    return path


# --- URLs --------------------------------------------------------------------------------------

def _url_cache_path(url: str) -> Path:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(url.split("?")[0].rstrip("/")) or "file")[-80:]
    return cache_dir() / "url" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}-{base}"


def url_file(url: str, sha256: Optional[str] = None, *, model: str = "checkpoint", hint: Optional[str] = None) -> str:
    """A local copy of ``url``, cached under a name derived from the whole URL, downloaded through a
    temp file renamed into place (``HF_HUB_DOWNLOAD_TIMEOUT`` per read), checked against ``sha256``
    or the URL's ``#sha256=<hex>`` fragment when given."""
    _, constants = _hub()
    url, _, fragment = url.partition("#")
    if fragment.startswith("sha256="):
        if sha256 is not None and sha256 != fragment[7:]:
            raise ValueError(f"sha256 {sha256!r} and the URL's #sha256= fragment disagree")
        sha256 = fragment[7:]
    what = f"{model}: URL {url!r}"
    path = _url_cache_path(url)
    if sha256 is not None and not _SHA256.match(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if path.is_file():
        if sha256:
            _verify(str(path), sha256, what, lambda: path.unlink(missing_ok=True), model, hint)
        return str(path)
    if constants.is_offline_mode():
        raise PretrainedLoadError(f"{what}: offline (HF_HUB_OFFLINE=1) and not in the cache ({path}); {_hint(model, hint)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "attnzoo"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            size = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if size is not None and received != int(size):
            raise PretrainedLoadError(f"{what}: received {received} bytes of {size}")
        if sha256 and digest.hexdigest() != sha256:
            raise PretrainedLoadError(f"{what}: sha256 mismatch, expected {sha256}, got {digest.hexdigest()}")
        os.replace(tmp, path)
    except PretrainedLoadError as exc:
        os.unlink(tmp)
        raise PretrainedLoadError(f"{exc}; nothing was cached; {_hint(model, hint)}") from None
    except Exception as exc:
        os.unlink(tmp)
        raise PretrainedLoadError(f"{what}: download failed ({_describe(exc)}); {_hint(model, hint)}") from exc
    if sha256:
        _remember(str(path), sha256)
    return str(path)


# --- sources -----------------------------------------------------------------------------------

def fetch_checkpoint(source: str, *, model: str = "checkpoint", sha256: Optional[str] = None, hint: Optional[str] = None) -> str:
    """A verified local path for a checkpoint given as a file, an http(s) URL or
    ``hf-hub:<org>/<repo>[@<revision>][/<filename>]`` (no filename: picked from the listing).
    ``hint`` says how to pass a file locally in the caller's terms (default: timm's)."""
    if source.startswith("hf-hub:"):
        try:
            repo, filename, revision = parse_hub_id(source[len("hf-hub:"):])
        except ValueError as exc:
            raise PretrainedLoadError(f"{model}: {exc}") from None
        return hub_file(repo, filename, revision, model=model, hint=hint)
    if source.startswith(("http://", "https://")):
        return url_file(source, sha256, model=model, hint=hint)
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        raise PretrainedLoadError(f"{model}: checkpoint {source!r} is a folder; give the weights file in it "
                                  f"({' or '.join(WEIGHT_FILES)}, a .pth, ...)")
    raise PretrainedLoadError(f"{model}: checkpoint {source!r} does not exist; give a file, an http(s) URL or "
                              "'hf-hub:<org>/<repo>[/<filename>]'")


def parse_hub_id(hub_id: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``org/repo[@revision][/filename]`` -> (repo_id, filename or None, revision or None)."""
    parts = hub_id.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"Hub id {hub_id!r}: expected '<org>/<repo>[@<revision>][/<filename>]'")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", "/".join(parts[2:]) or None, revision or None


def read_checkpoint(path: str, *, model: str = "checkpoint") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(flat state dict, what the file records about its model) of a checkpoint file.

    The format is read from the bytes (``attnzoo._checkpoint.read_checkpoint_file``: safetensors,
    or a torch file loaded with ``weights_only=True``); a file with a ``.sha256`` sidecar (what
    ``attnzoo train`` writes) must match it. The state dict is unwrapped from ``state_dict`` /
    ``model`` and DDP's ``module.`` prefix removed. The record is the safetensors metadata, or a
    training checkpoint's ``meta`` (model, num_classes, model_kwargs, ...); {} when there is none.
    Every failure is a ``PretrainedLoadError`` naming the model and the file."""
    try:
        verify_digest(path)
        obj, metadata = read_checkpoint_file(path)
    except (UnreadableCheckpoint, DigestMismatch) as exc:
        raise PretrainedLoadError(f"{model}: checkpoint file {exc}") from None
    record: Dict[str, Any] = dict(metadata)
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        record = dict(obj["meta"])
    state = unwrap_state_dict(obj)
    if not isinstance(state, dict):
        raise PretrainedLoadError(f"{model}: checkpoint file {str(path)!r} holds a {type(state).__name__}, not a state dict "
                                  "(a dict of tensor names to tensors)")
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(map(repr, list(state)[:6])) or "none"
        raise PretrainedLoadError(f"{model}: checkpoint file {str(path)!r} holds no tensors (keys: {keys}); not a weights file")
    return {k[7:] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in state.items()}, record


def read_state_dict(path: str, *, model: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The flat state dict of a checkpoint file (see ``read_checkpoint``)."""
    return read_checkpoint(path, model=model)[0]


def _examples(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(map(repr, keys[:n])) + (", ..." if len(keys) > n else "")


def check_state_dict(state: Dict[str, torch.Tensor], model: torch.nn.Module, *, model_name: str, source: str,
                     skip_shape: Iterable[str] = (), any_in_chans: Iterable[str] = (), exact_keys: bool = False,
                     optional: Iterable[str] = ()) -> None:
    """Refuses a state dict (already in the model's names) that would load garbage into ``model``,
    before anything is copied: non-finite floating tensors, non-floating tensors for floating
    parameters / buffers, tensors whose shape differs from the model's in any way (except keys in
    ``skip_shape``, which the caller adapts, and dim 1 of ``any_in_chans``, an input conv timm
    adapts to ``in_chans``). With ``exact_keys`` the names must be the model's (``optional``: keys
    that may be absent from either side). Every message names the model, the key and ``source``."""
    own = model.state_dict()
    skip, chans, optional = set(skip_shape), set(any_in_chans), set(optional)
    if exact_keys:
        missing = [k for k in own if k not in state and k not in optional]
        unexpected = [k for k in state if k not in own and k not in optional]
        if missing or unexpected:
            common = sum(1 for k in state if k in own)
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} of {model_name}'s {len(own)} tensors ({_examples(missing)})")
            if unexpected:
                parts.append(f"has {len(unexpected)} that {model_name} does not ({_examples(unexpected)})")
            lead = (f"{model_name}: {source} is not a checkpoint of {model_name} (only {common} of its {len(state)} names are "
                    f"{model_name}'s): it " if common < len(state) / 2 else f"{model_name}: {source} ")
            raise PretrainedLoadError(lead + " and ".join(parts) + "; nothing was loaded")
    misshapen = []
    for key, value in state.items():
        where = f"{model_name}: tensor {key!r} of {source}"
        target = own.get(key)
        if not isinstance(value, torch.Tensor):
            if target is not None:
                raise PretrainedLoadError(f"{where} is a {type(value).__name__}, not a tensor: not a weights file for {model_name}")
            continue
        if value.is_complex():
            raise PretrainedLoadError(f"{where} is {value.dtype}; complex tensors are not weights of any attnzoo model")
        if target is not None and target.is_floating_point() and not value.is_floating_point():
            raise PretrainedLoadError(f"{where} is {value.dtype}, but {model_name} holds it as {target.dtype}: not a weights file for this model")
        # a finite sum means finite elements (one reduction, cheaper than isfinite); an overflowing sum gets the exact test
        if value.is_floating_point() and not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise PretrainedLoadError(f"{where} has {bad} non-finite values (NaN / inf) of {value.numel()}")
        if target is None or key in skip:
            continue
        got, need = tuple(value.shape), tuple(target.shape)
        if key in chans and len(got) == len(need) >= 2:
            same = got[:1] + got[2:] == need[:1] + need[2:]
        else:
            same = got == need
        if not same:
            misshapen.append((key, got, need))
    if misshapen:
        key, got, need = misshapen[0]
        more = (f" ({len(misshapen) - 1} more tensors differ in shape: weights of another variant, or made with other "
                f"model kwargs?)" if len(misshapen) > 1 else "")
        raise PretrainedLoadError(f"{model_name}: tensor {key!r} of {source} has shape {got}, {model_name} needs {need}{more}; "
                                  "nothing was loaded")


# --- hf-hub: model names -----------------------------------------------------------------------

def create_model(model_name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model`` (same arguments, same model) that fails fast and named on the Hub.

    For an ``hf-hub:<org>/<repo>[@<revision>]`` name, timm fetches the repo's ``config.json``
    itself (``hf_hub_download``) before any attnzoo code runs, and huggingface_hub retries that
    request when no copy is cached (a 5xx or a timeout: 5 more tries with 1-8 s pauses, up to 60 s
    each), then ends in an error that names neither repo nor file. Here ``config.json`` is fetched
    first by ``hub_file`` (one metadata request within ``HF_HUB_ETAG_TIMEOUT``, checked against the
    Hub's hash): a failure is one ``PretrainedLoadError`` naming the repo and the file; on success
    timm finds it cached and does not retry. The weights are fetched and verified by attnzoo on
    both paths. Other names go to ``timm.create_model`` unchanged.
    """
    import timm

    source, _, rest = model_name.partition(":")
    if rest and source in ("hf-hub", "hf_hub"):
        try:
            repo, filename, revision = parse_hub_id(rest)
        except ValueError as exc:
            raise PretrainedLoadError(f"{model_name}: {exc}") from None
        if filename:
            raise PretrainedLoadError(f"{model_name}: an hf-hub: model name is '<org>/<repo>[@<revision>]', without a file")
        hub_file(repo, "config.json", revision, model=model_name,
                 hint=("download the repo's files (config.json and the weights) into a folder and load it with "
                       "timm.create_model('local-dir:/path/to/folder', pretrained=True)"))
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


# --- timm's pretrained path --------------------------------------------------------------------

def _hub_source(cfg: Dict) -> Optional[Tuple[str, Optional[str]]]:
    if cfg.get("hf_hub_id"):
        return cfg["hf_hub_id"], cfg.get("hf_hub_filename")
    return None


def _fetch_for_cfg(name: str, cfg: Dict) -> Tuple[str, str]:
    """(verified local file, source description) of the weights a resolved pretrained cfg names."""
    source = cfg.get("source") or ""
    if source == "local-dir":
        folder = Path(cfg.get("file") or "")
        for fname in WEIGHT_FILES:
            if (folder / fname).is_file():
                return str(folder / fname), str(folder / fname)
        raise PretrainedLoadError(f"{name}: local folder {str(folder)!r} has none of {', '.join(WEIGHT_FILES)}")
    if source != "hf-hub" and cfg.get("file"):
        path = str(cfg["file"])
        if not os.path.isfile(path):
            what = "is a folder, not a weights file" if os.path.isdir(path) else "does not exist"
            raise PretrainedLoadError(f"{name}: pretrained file {path!r} {what}")
        return path, repr(path)
    hub = _hub_source(cfg)
    if hub is not None:
        repo, filename, revision = parse_hub_id(hub[0])
        filename = hub[1] or filename
        path = hub_file(repo, filename, revision, model=name)
        return path, f"{path!r} (Hub repo {repo!r})"
    if cfg.get("url"):
        path = url_file(cfg["url"], model=name)
        return path, f"{path!r} (from {cfg['url'].partition('#')[0]})"
    raise PretrainedLoadError(f"{name}: its pretrained cfg names no weights (no file, hf_hub_id or url); use pretrained=False or {_hint(name)}")


# timm takes a pretrained cfg's ``state_dict`` as the weights; build_model hands it this one-entry
# marker (timm deep-copies cfgs) and passes the state dict it read and checked through the filter.
_STATE_MARKER_KEY = "attnzoo: the verified state dict is passed through pretrained_filter_fn"


def _filter_and_check(name: str, source: str, state: Dict[str, torch.Tensor], filter_fn: Optional[Callable], cfg: Dict,
                      num_classes: Optional[int], in_chans: int, strict: bool) -> Callable:
    """The ``pretrained_filter_fn`` timm calls: returns ``state`` after the family's converter and
    ``check_state_dict``, in the conditions timm then loads it under (a classifier timm drops for
    another ``num_classes``, an input conv it adapts to another ``in_chans``, strictness)."""

    def filter_and_check(marker, model):
        if not (isinstance(marker, dict) and _STATE_MARKER_KEY in marker):
            raise RuntimeError(f"{name}: timm passed another state dict than attnzoo's verified one")
        try:
            out = filter_fn(state, model) if filter_fn is not None else dict(state)
        except PretrainedLoadError:
            raise
        except Exception as exc:
            raise PretrainedLoadError(f"{name}: {source} cannot be converted to {name}'s layout: {type(exc).__name__}: {exc}") from None
        classifier = cfg.get("classifier")
        classifier = [classifier] if isinstance(classifier, str) else list(classifier or ())
        dropped, optional = [], []
        if num_classes != cfg.get("num_classes"):
            # timm drops the classifier and loads the rest non-strictly; a head rebuilt for another class
            # count (or none: num_classes=0) may lose more than the classifier (SHViT's BN-Linear head)
            dropped = [f"{c}.{p}" for c in classifier for p in ("weight", "bias")]
            heads = tuple(f"{c.rsplit('.', 1)[0] if '.' in c else c}." for c in classifier)
            optional = dropped + [k for k in (*out, *model.state_dict()) if heads and k.startswith(heads)]
        first_conv = cfg.get("first_conv")
        first_conv = [first_conv] if isinstance(first_conv, str) else list(first_conv or ())
        adapted = [f"{c}.weight" for c in first_conv] if in_chans != (cfg.get("input_size") or (3,))[0] else []
        check_state_dict(out, model, model_name=name, source=source, skip_shape=dropped, any_in_chans=adapted,
                         exact_keys=strict, optional=optional)
        return out

    return filter_and_check


def build_model(model_cls, variant: str, pretrained: bool, *, pretrained_filter_fn: Optional[Callable] = None, **kwargs):
    """timm's ``build_model_with_cfg`` with attnzoo's verified loading in front of it.

    With ``pretrained``, the weights named by the resolved pretrained cfg (``file``, a Hub repo,
    an ``hf-hub:`` model's repo, a ``local-dir:`` folder or a URL) are fetched, verified and read
    here, before the model is built (a bad file costs no model build); timm gets them through
    ``pretrained_filter_fn``: the family's converter (any exception it raises becomes a
    ``PretrainedLoadError`` naming the file) and ``check_state_dict`` with exact names and shapes.
    The model's ``pretrained_cfg`` is left as resolved (no local path or state dict in it).
    """
    from timm.models import build_model_with_cfg
    from timm.models._builder import resolve_pretrained_cfg

    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn, **kwargs)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")).to_dict()
    if cfg.get("state_dict") is not None:
        state, source = cfg["state_dict"], "the state_dict given in pretrained_cfg"
    else:
        path, source = _fetch_for_cfg(variant, cfg)
        state = read_state_dict(path, model=variant)
    kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, source="",
                                            state_dict={_STATE_MARKER_KEY: torch.zeros(())})
    check = _filter_and_check(variant, source, state, pretrained_filter_fn, cfg, kwargs.get("num_classes", cfg.get("num_classes")),
                              kwargs.get("in_chans", 3), kwargs.get("pretrained_strict", True))
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=check, **kwargs)
    for module in model.modules():  # the cfg the user sees names the source, not our cache path or state dict
        given = getattr(module, "pretrained_cfg", None)
        if isinstance(given, dict):
            for key in ("file", "source", "state_dict"):
                if cfg.get(key) is None:
                    given.pop(key, None)
                else:
                    given[key] = cfg[key]
    return model
