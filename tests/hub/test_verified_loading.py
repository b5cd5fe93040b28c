"""Every pretrained load is verified (attnzoo.hub): against a local Hub endpoint with injected
faults, through timm's ``pretrained=True`` path.

Each fault ends in the correct model or one PretrainedLoadError naming the model, the repo and
the file, within a bound (``BOUND_S``: a hang detector, far above the ~1 s the local endpoint
needs; before attnzoo.hub a 500 took 30-47 s), and leaves nothing in the cache that a later load
would accept: after the fault is cleared the next load gives the correct weights.
"""
import os
import time

import pytest
import torch
import timm
from safetensors.torch import save, save_file

import attnzoo  # noqa: F401  (registers the models)
from attnzoo import hub as azhub
from attnzoo.hub import PretrainedLoadError

from .fake_hub import TIMEOUT_S

MODEL = "az_shvit_s1"  # the smallest attnzoo model (6.3M parameters)
REPO = "attnzoo-test/shvit"
FILE = "model.safetensors"
# huggingface_hub resumes a stalled transfer 5 times, each after HF_HUB_DOWNLOAD_TIMEOUT
BOUND_S = 25 * TIMEOUT_S


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(MODEL).state_dict().items()}
    return state, save(state)


def _load(repo=REPO, **overlay):
    return timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=repo, **overlay))


def _assert_weights(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def _timed(fn):
    start = time.monotonic()
    try:
        return fn(), None, time.monotonic() - start
    except PretrainedLoadError as exc:
        return None, exc, time.monotonic() - start


def test_correct_file_loads_and_is_verified(hub, weights):
    state, data = weights
    hub.add(REPO, FILE, data)
    model, err, _ = _timed(_load)
    assert err is None
    _assert_weights(model, state)
    assert model.pretrained_cfg["hf_hub_id"] == REPO and not model.pretrained_cfg.get("file")  # no cache path leaks into the cfg
    # the repo's listing picked the file: no request for any other name
    assert not any(p.endswith("pytorch_model.bin") for _, p in hub.requests)


@pytest.mark.parametrize("fault, message", [
    ("404 repo", r"Hub repo 'attnzoo-test/missing'.*not found"),
    ("404 file", r"file 'absent.safetensors' of Hub repo 'attnzoo-test/shvit'.*not found.*HTTP 404"),
    ("500", r"file 'model.safetensors' of Hub repo 'attnzoo-test/shvit'.*HTTP 500"),
    ("stall", r"file 'model.safetensors' of Hub repo 'attnzoo-test/shvit'.*(?i:timed? ?out)"),
    # huggingface_hub resumes a stalled transfer 5 times (~13 s here): extended only
    pytest.param("stall_body", r"file 'model.safetensors' of Hub repo 'attnzoo-test/shvit'.*download failed.*(?i:timed? ?out)",
                 marks=pytest.mark.extended),
    ("truncated", r"file 'model.safetensors' of Hub repo 'attnzoo-test/shvit'.*download failed.*size"),
    ("flipped", r"file 'model.safetensors' of Hub repo 'attnzoo-test/shvit'.*sha256 mismatch, expected [0-9a-f]{64}, got [0-9a-f]{64}"),
    ("drop", None),  # a connection dropped mid-file: huggingface_hub resumes, the hash check passes
])
def test_fault_ends_in_the_model_or_a_named_error(hub, weights, fault, message):
    state, data = weights
    hub.add(REPO, FILE, data)
    repo, overlay = REPO, {}
    if fault == "404 repo":
        repo = "attnzoo-test/missing"
    elif fault == "404 file":
        overlay = dict(hf_hub_filename="absent.safetensors")
    else:
        hub.fault(REPO, FILE, fault)
    model, err, took = _timed(lambda: _load(repo, **overlay))
    assert took < BOUND_S, f"{fault}: {took:.1f} s"
    if message is None:
        assert err is None
        _assert_weights(model, state)
        return
    assert err is not None, f"{fault}: loaded without an error"
    text = str(err)
    assert text.startswith(f"{MODEL}: "), text
    assert __import__("re").search(message, text), text
    assert "pretrained_cfg_overlay=dict(file=" in text, text  # says how to pass the file locally
    # nothing a later load would accept was left behind: with the fault gone, the next load is right
    hub.faults.clear()
    if fault not in ("404 repo", "404 file"):
        _assert_weights(_load(), state)


def test_flipped_bytes_are_removed_from_the_cache(hub, weights):
    _, data = weights
    hub.add(REPO, FILE, data)
    hub.fault(REPO, FILE, "flipped")
    with pytest.raises(PretrainedLoadError, match="removed from the cache"):
        _load()
    blobs = [f for _, _, files in os.walk(os.environ["HF_HUB_CACHE"]) for f in files if len(f) == 64]
    assert blobs == []


def test_offline_with_an_empty_cache_fails_at_once(hub, weights, monkeypatch):
    from huggingface_hub import constants

    hub.add(REPO, FILE, weights[1])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, err, took = _timed(_load)
    assert err is not None and "offline (HF_HUB_OFFLINE=1)" in str(err) and REPO in str(err), err
    assert "its weight file ('model.safetensors' or 'pytorch_model.bin') is not in the cache" in str(err), err  # the file it needed
    assert hub.requests == []  # not one request went out
    assert took < BOUND_S


def test_warm_load_does_not_rehash_and_a_damaged_cached_file_is_caught(hub, weights, monkeypatch):
    state, data = weights
    hub.add(REPO, FILE, data)
    model = _load()
    path = azhub.hub_file(REPO, FILE, model=MODEL)
    calls = []
    real_hash = azhub._file_hash
    monkeypatch.setattr(azhub, "_file_hash", lambda p, kind: calls.append(p) or real_hash(p, kind))
    _assert_weights(_load(), state)
    assert calls == []  # remembered: the warm load hashed nothing
    # bytes damaged in place (same size, new mtime): re-hashed, refused and removed
    blob = os.path.realpath(path)
    with open(blob, "r+b") as f:
        f.seek(os.path.getsize(blob) - 40)
        f.write(b"\xff" * 8)
    with pytest.raises(PretrainedLoadError, match="sha256 mismatch"):
        _load()
    assert calls and not os.path.exists(blob)
    _assert_weights(_load(), state)  # fetched again, verified


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_checkpoint_is_refused_naming_the_key(tmp_path, dtype):
    """Before: nat_mini loaded an all-int64 / all-bool checkpoint 'successfully' (weights 0.0 / 1.0)."""
    name = "nat_mini" if dtype is torch.bool else MODEL
    with torch.device("meta"):
        keys = timm.create_model(name).state_dict()
    bad = {k: torch.ones(v.shape, dtype=dtype) for k, v in keys.items()}
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(PretrainedLoadError, match=rf"^{name}: tensor '.+' of '.*bad.safetensors' is torch\.{str(dtype)[6:]}, but {name} holds it as torch.float32"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_non_finite_and_misshapen_tensors_are_refused(tmp_path, weights):
    state = dict(weights[0])
    key = [k for k, v in state.items() if v.is_floating_point() and v.dim() == 4][-1]  # not the input conv (timm adapts that one)
    nan = dict(state, **{key: state[key].clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan")))})
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(PretrainedLoadError, match=rf"^{MODEL}: tensor '{key}' of '.*nan.safetensors' has \d+ non-finite"):
        timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nan.safetensors")))
    small = dict(state, **{key: state[key][:1].contiguous()})
    save_file(small, str(tmp_path / "shape.safetensors"))
    with pytest.raises(PretrainedLoadError, match=rf"^{MODEL}: tensor '{key}' of '.*shape.safetensors' has shape \(1,"):
        timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "shape.safetensors")))


def test_urls_are_cached_by_the_whole_url(hub):
    """Two URLs ending in the same file name are two cache entries (they collided before)."""
    hub.add("org/a", FILE, b"A" * 100)
    hub.add("org/b", FILE, b"B" * 100)
    a = azhub.url_file(f"{hub.endpoint}/org/a/resolve/main/{FILE}")
    b = azhub.url_file(f"{hub.endpoint}/org/b/resolve/main/{FILE}")
    assert a != b and open(a, "rb").read() == b"A" * 100 and open(b, "rb").read() == b"B" * 100
    assert not [f for f in os.listdir(os.path.dirname(a)) if f.endswith(".partial")]


def test_url_hash_mismatch_caches_nothing(hub):
    import hashlib

    hub.add("org/a", FILE, b"A" * 100)
    url = f"{hub.endpoint}/org/a/resolve/main/{FILE}"
    with pytest.raises(PretrainedLoadError, match=rf"URL '{url}': sha256 mismatch.*nothing was cached"):
        azhub.url_file(url, sha256=hashlib.sha256(b"other").hexdigest(), model=MODEL)
    assert not os.path.exists(azhub._url_cache_path(url))
    assert azhub.url_file(url, sha256=hashlib.sha256(b"A" * 100).hexdigest()) == str(azhub._url_cache_path(url))


def test_url_in_a_cfg_is_checked_against_its_sha256_fragment(hub, weights):
    import hashlib

    hub.add("org/w", FILE, weights[1])
    url = f"{hub.endpoint}/org/w/resolve/main/{FILE}"
    bad = f"{url}#sha256={hashlib.sha256(b'other').hexdigest()}"
    with pytest.raises(PretrainedLoadError, match=rf"^{MODEL}: URL '{url}': sha256 mismatch"):
        timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=None, url=bad))
    good = f"{url}#sha256={hashlib.sha256(weights[1]).hexdigest()}"
    model = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=None, url=good))
    _assert_weights(model, weights[0])


def test_url_http_error_names_the_status(hub):
    url = f"{hub.endpoint}/org/none/resolve/main/{FILE}"
    with pytest.raises(PretrainedLoadError, match=rf"^{MODEL}: URL '{url}': download failed \(HTTP 404"):
        azhub.url_file(url, model=MODEL)


# --- hf-hub: model names -------------------------------------------------------------------------
# timm.create_model("hf-hub:ORG/REPO") fetches config.json itself, with huggingface_hub's retries
# (a 500 took 23-33 s and ended in "Please check your connection", naming no repo); that call is
# outside attnzoo's reach (README, "Pretrained weights"). attnzoo.hub.create_model fetches it
# first, fast and named; the weights are attnzoo's on both paths.

HF_BOUND_S = 10  # the bound for an hf-hub: failure on a local endpoint


def _hf_repo(hub, weights):
    import json

    hub.add(REPO, "config.json", json.dumps({"architecture": MODEL, "num_classes": 1000, "pretrained_cfg": {}}).encode())
    hub.add(REPO, FILE, weights[1])


@pytest.mark.parametrize("fault, message", [
    ("500", r"file 'config.json' of Hub repo 'attnzoo-test/shvit': unreachable \(HTTP 500"),
    ("stall", r"file 'config.json' of Hub repo 'attnzoo-test/shvit': unreachable \(.*(?i:timed? ?out)"),
    ("unknown repo", r"file 'config.json' of Hub repo 'attnzoo-test/missing': not found"),
    ("offline", r"file 'config.json' of Hub repo 'attnzoo-test/shvit'.*: offline \(HF_HUB_OFFLINE=1\) and not in the cache"),
])
def test_hf_hub_name_fails_fast_naming_repo_and_file(hub, weights, monkeypatch, fault, message):
    from huggingface_hub import constants

    _hf_repo(hub, weights)
    repo = "attnzoo-test/missing" if fault == "unknown repo" else REPO
    if fault in ("500", "stall"):
        hub.fault(REPO, "config.json", fault)
    if fault == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, err, took = _timed(lambda: azhub.create_model(f"hf-hub:{repo}", pretrained=True))
    assert took < HF_BOUND_S, f"{fault}: {took:.1f} s"
    assert err is not None and __import__("re").search(rf"^hf-hub:{repo}: {message}", str(err)), err
    assert "local-dir:" in str(err)  # says how to do without the Hub
    if fault == "offline":
        assert hub.requests == []


def test_hf_hub_name_loads_and_a_failing_weights_file_is_fast_and_named(hub, weights):
    """config.json fine, weights answering 500: through timm.create_model itself the weights are
    attnzoo's (fast, named); then the good path through both entries gives the same weights."""
    state, _ = weights
    _hf_repo(hub, weights)
    hub.fault(REPO, FILE, "500")
    _, err, took = _timed(lambda: timm.create_model(f"hf-hub:{REPO}", pretrained=True))
    assert took < HF_BOUND_S and err is not None, (took, err)
    assert str(err).startswith(f"{MODEL}: file 'model.safetensors' of Hub repo '{REPO}': unreachable (HTTP 500"), err
    hub.faults.clear()
    _assert_weights(azhub.create_model(f"hf-hub:{REPO}", pretrained=True), state)
    _assert_weights(timm.create_model(f"hf-hub:{REPO}", pretrained=True), state)
