"""`attnzoo convert` and `attnzoo push` against the local Hub endpoint.

Convert: one model of each family from a checkpoint in its upstream format (timm's for the az_
families; for NAT the transformers layout of the shi-labs Hub repos, for BiFormer and TransNeXt
the authors' layouts, from tests/zoo/upstream_*_keys.py), pushed to the local endpoint and loaded back through ``hf-hub:``: the same logits as
the model built from the upstream checkpoint directly.
"""
import json

import pytest
import torch
import timm
from safetensors.torch import load_file, save_file

import attnzoo  # noqa: F401
from attnzoo.tools.cli import main as cli
from attnzoo.tools.convert import OUTPUT_FILES, convert
from attnzoo.tools.push import push

from tests.zoo.upstream_biformer_keys import UPSTREAM_CONFIGS as BIFORMER, authors_keys as biformer_keys
from tests.zoo.upstream_nat_keys import UPSTREAM_CONFIGS as NAT, transformers_keys
from tests.zoo.upstream_transnext_keys import UPSTREAM_CONFIGS as TRANSNEXT, authors_keys as transnext_keys

SIZE = 64  # the logits check's image size (every family runs at any size)


def _random(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.1
    return out


def _upstream(name, seed=0):
    """A checkpoint of ``name`` in its upstream format (BiFormer's wrapped in 'model', as the authors save it)."""
    if name.startswith("az_"):  # timm's twin's keys and shapes (built on the meta device: no init cost)
        with torch.device("meta"):
            twin = timm.create_model(name[3:]).state_dict()
        return _random({k: tuple(v.shape) for k, v in twin.items()}, seed)
    if name.startswith("nat_"):
        return _random(transformers_keys("nat", *NAT[name]), seed)  # the Hub's shi-labs/* layout
    if name.startswith("biformer_"):
        return {"model": _random(biformer_keys(*BIFORMER[name]), seed)}
    if name.startswith("transnext_"):
        return _random(transnext_keys(*TRANSNEXT[name]), seed)
    raise ValueError(name)


# The smallest model of each family. The pipeline (fetch, filter, write, check, push, load through
# hf-hub:) is the same for every family; CI runs it for a timm-format family (SHViT, the cheapest)
# and an authors' format wrapped in 'model' (BiFormer); the others (15-40 s each on 2 busy CPU
# cores, mostly building models) run extended. Each family's converter has its own tests in
# tests/zoo, and every az_ state dict is checked against timm's in test_timm_state_dicts.py.
_CI = ["az_shvit_s1", "biformer_tiny"]
_EXTENDED = ["nat_mini", "transnext_micro", "az_maxvit_rmlp_pico_rw_256", "az_davit_tiny", "az_halonet26t"]
FAMILY_MODELS = _CI + [pytest.param(n, marks=pytest.mark.extended) for n in _EXTENDED]


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_convert_push_and_load_through_hf_hub(name, hub, tmp_path):
    src = tmp_path / "upstream.pth"
    torch.save(_upstream(name), src)
    out = tmp_path / "repo"
    report = convert(name, str(src), str(out), repo=f"attnzoo-test/{name}", check_size=SIZE)
    assert report["rel_err"] <= 1e-6
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 1000 and len(config["label_names"]) == 1000
    for field in ("mean", "std", "crop_pct", "input_size", "license"):
        assert config["pretrained_cfg"][field], field
    card = (out / "README.md").read_text()
    assert f"timm.create_model('hf-hub:attnzoo-test/{name}'" in card and "Parameters (M)" in card and "GFLOPs" in card

    repo = f"attnzoo-test/{name.replace('_', '-')}"
    push(str(out), repo)
    assert hub.repos[repo] == {f: (out / f).read_bytes() for f in OUTPUT_FILES}
    # convert compared the folder's logits with the model built from src (<= 1e-6); loaded through
    # hf-hub: from the local endpoint, the model holds exactly the folder's tensors
    loaded = timm.create_model(f"hf-hub:{repo}", pretrained=True)
    assert loaded.pretrained_cfg["hf_hub_id"] == repo
    written = load_file(str(out / "model.safetensors"))
    got = loaded.state_dict()
    assert set(got) == set(written) and all(torch.equal(got[k], v) for k, v in written.items())


def test_push_cli_creates_the_repo_and_branch(hub, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"architecture": "az_shvit_s1", "num_classes": 1000, "pretrained_cfg": {}}))
    save_file({"w": torch.ones(3)}, str(out / "model.safetensors"))
    (out / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    (out / "notes.txt").write_text("not part of the repo")  # only the three files are uploaded
    assert cli(["push", str(out), "--repo", "attnzoo-test/shvit-dev", "--revision", "dev", "--private"]) == 0
    assert hub.created and hub.created[-1]["name"] == "shvit-dev" and "private" in (hub.created[-1].get("visibility"), hub.created[-1].get("private") and "private")
    assert ("attnzoo-test/shvit-dev", "dev") in hub.branches
    assert hub.commits[-1]["revision"] == "dev" and hub.commits[-1]["files"] == sorted(OUTPUT_FILES)
    assert hub.repos["attnzoo-test/shvit-dev"] == {f: (out / f).read_bytes() for f in OUTPUT_FILES}


def test_convert_never_replaces_files_and_push_refuses_other_folders(tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"mine")
    src = tmp_path / "timm.pth"
    torch.save(_upstream("az_shvit_s1"), src)
    assert cli(["convert", "az_shvit_s1", "--checkpoint", str(src), "--out", str(out)]) == 2
    assert "already has model.safetensors; pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"mine"
    assert cli(["push", str(out), "--repo", "attnzoo-test/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo push: error: DIR ") and "lacks config.json, README.md" in err, err
    assert cli(["push", str(out), "--repo", "not a repo"]) == 2
    assert "attnzoo push: error: --repo must be ORG/NAME" in capsys.readouterr().err
