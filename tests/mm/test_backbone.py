"""AttnZooBackbone: the MMDetection backbone contract on every family (CPU, small inputs)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from tests.mm._require import require_mm

require_mm()

import timm  # noqa: E402
from safetensors.torch import save, save_file  # noqa: E402

import attnzoo  # noqa: E402
from attnzoo.hub import PretrainedLoadError  # noqa: E402
from attnzoo.mm import AttnZooBackbone  # noqa: E402
from tests.hub.fake_hub import hub  # noqa: E402,F401  (the local Hub endpoint fixture)

# The smallest variant of each family (CPU time); the configs/ tests build the detection variants.
SMALL = {
    "nat": "nat_mini",
    "maxvit": "az_maxvit_rmlp_pico_rw_256",
    "davit": "az_davit_tiny",
    "halonet": "az_halonet26t",
    "shvit": "az_shvit_s1",
    "biformer": "biformer_tiny",
    "transnext": "transnext_micro",
}
FAMILIES = [f for f, name in SMALL.items() if name in attnzoo.list_models()]


def _stage_info(name):
    info = list(timm.create_model(name).feature_info)
    return info[1:] if info[0]["module"].startswith("stem") else info


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_match_feature_info_at_a_size_no_stage_divides(family):
    name = SMALL[family]
    stages = _stage_info(name)
    idx = tuple(range(len(stages)))
    torch.manual_seed(0)
    backbone = AttnZooBackbone(name, out_indices=idx).eval()
    x = torch.randn(1, 3, 100, 132)
    with torch.no_grad():
        outs = backbone(x)
    assert len(outs) == len(idx)
    for out, info in zip(outs, stages):
        r = info["reduction"]
        assert out.shape[1] == info["num_chs"]
        # each output covers the input at its stride (rounded as the family's downsampling does)
        assert abs(out.shape[2] - 100 / r) < 1.01 and abs(out.shape[3] - 132 / r) < 1.01, (out.shape, r)
        assert torch.isfinite(out).all()
    assert backbone.channels == [s["num_chs"] for s in stages]


def test_out_indices_select_and_prune():
    backbone = AttnZooBackbone("nat_mini", out_indices=(1, 2), out_norm=None).eval()
    full = timm.create_model("nat_mini").eval()
    backbone.model.load_state_dict({k: v for k, v in full.state_dict().items() if k in backbone.model.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = backbone(x)
        ref = full.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert [o.shape[1] for o in outs] == [128, 256]
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r)
    # nothing the outputs do not need is kept: no head, no final norm, no stage 3
    names = [n for n, _ in backbone.model.named_parameters()]
    assert not any(n.startswith(("head", "norm.", "stages.3")) for n in names)


def test_stem_feature_is_not_a_stage_index():
    # MaxViT reports timm's stride-2 stem feature first; out_indices count stages only.
    backbone = AttnZooBackbone(SMALL["maxvit"], out_indices=(0, 1, 2, 3))
    assert backbone.strides == [4, 8, 16, 32]


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_stages_stay_frozen_after_train(family):
    name = SMALL[family]
    backbone = AttnZooBackbone(name, frozen_stages=1, out_indices=(0, 1))
    backbone.train()
    frozen = {n for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert frozen, "frozen_stages=1 froze nothing"
    # the stem is whatever the model's group_matcher calls it (SHViT keeps timm's "patch_embed")
    stem_re = backbone.model.group_matcher(coarse=True)["stem"]
    is_stem = lambda n: re.match(stem_re, n) is not None
    assert all(is_stem(n) or n.startswith("stages.0.") for n in frozen), sorted(frozen)[:5]
    assert any(is_stem(n) for n in frozen) and any(n.startswith("stages.0.") for n in frozen)
    assert all(p.requires_grad for n, p in backbone.model.named_parameters() if n.startswith("stages.1."))
    for n, m in backbone.model.named_modules():
        if n and (is_stem(n) or n.startswith("stages.0")):
            assert not m.training, n
    # gradients really are off: a backward leaves the frozen parameters without .grad
    outs = backbone(torch.randn(1, 3, 64, 64))
    sum(o.float().square().mean() for o in outs).backward()
    for n, p in backbone.model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
    assert any(p.grad is not None for n, p in backbone.model.named_parameters() if n.startswith("stages.1."))


def test_frozen_stages_minus_one_freezes_nothing_and_zero_only_the_stem():
    assert all(p.requires_grad for p in AttnZooBackbone("nat_mini", frozen_stages=-1).parameters())
    b = AttnZooBackbone("nat_mini", frozen_stages=0)
    assert {n.split(".")[0] for n, p in b.model.named_parameters() if not p.requires_grad} == {"stem"}


def test_norm_eval_keeps_batchnorm_statistics():
    backbone = AttnZooBackbone(SMALL["halonet"], norm_eval=True, out_norm=None)
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    backbone(torch.randn(2, 3, 64, 64))
    for m, b in zip(bns, before):
        torch.testing.assert_close(m.running_mean, b, rtol=0, atol=0)
    other = AttnZooBackbone(SMALL["halonet"], norm_eval=False, out_norm=None).train()
    assert all(m.training for m in other.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    a = AttnZooBackbone("nat_mini", with_cp=False, out_indices=(0, 1))
    b = AttnZooBackbone("nat_mini", with_cp=True, out_indices=(0, 1))
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    x = torch.randn(1, 3, 64, 64)
    la = sum(o.square().mean() for o in a(x))
    lb = sum(o.square().mean() for o in b(x))
    torch.testing.assert_close(la, lb)
    la.backward(), lb.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_cfg_loads_a_local_safetensors_file(family, tmp_path):
    name = SMALL[family]
    torch.manual_seed(1)
    source = timm.create_model(name)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = AttnZooBackbone(name, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    src = source.state_dict()
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(v, src[k], rtol=0, atol=0, msg=k)


def test_init_cfg_loads_a_torch_pickle_under_state_dict(tmp_path):
    source = timm.create_model("nat_mini")
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict(), "meta": {"epoch": 3}}, path)
    backbone = AttnZooBackbone("nat_mini", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    src = source.state_dict()
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(v, src[k], rtol=0, atol=0, msg=k)


def test_init_cfg_of_another_model_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("nat_tiny").state_dict().items()}, str(path))
    backbone = AttnZooBackbone("nat_mini", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises((KeyError, RuntimeError)):
        backbone.init_weights()


def test_init_cfg_from_a_hub_id_offline(tmp_path, monkeypatch):
    # A prepared Hugging Face cache stands in for the Hub (no network in tests).
    from huggingface_hub import constants

    repo = "attnzoo-test/nat-mini-weights"
    cache = tmp_path / "hub"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    source = timm.create_model("nat_mini")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = AttnZooBackbone("nat_mini", init_cfg=dict(type="Pretrained", checkpoint=f"hf-hub:{repo}"))
    backbone.init_weights()
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(v, source.state_dict()[k], rtol=0, atol=0)


def test_init_cfg_urls_ending_in_the_same_file_name_do_not_collide(hub):
    """Every Hub URL ends in '/resolve/main/model.safetensors': each must load its own weights
    (they were cached under the file name alone, so the second loaded the first's)."""
    name = SMALL["shvit"]
    sources = {}
    for repo, seed in (("org-a/shvit", 1), ("org-b/shvit", 2)):
        torch.manual_seed(seed)
        state = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
        hub.add(repo, "model.safetensors", save(state))
        sources[f"{hub.endpoint}/{repo}/resolve/main/model.safetensors"] = state
    for url, state in sources.items():
        backbone = AttnZooBackbone(name, init_cfg=dict(type="Pretrained", checkpoint=url))
        backbone.init_weights()
        for k, v in backbone.model.state_dict().items():
            assert torch.equal(v, state[k]), (url, k)


def test_init_cfg_hub_id_offline_with_an_empty_cache_fails_at_once_naming_the_repo(hub, monkeypatch):
    """No blind second filename: offline, one error naming the model and repo, and no request."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = AttnZooBackbone("nat_mini", init_cfg=dict(type="Pretrained", checkpoint="hf-hub:shi-labs/nat-mini-in1k-224"))
    with pytest.raises(PretrainedLoadError, match=r"^nat_mini: Hub repo 'shi-labs/nat-mini-in1k-224'.*offline \(HF_HUB_OFFLINE=1\)") as info:
        backbone.init_weights()
    assert hub.requests == []
    # the way out is OpenMMLab's (before: timm's pretrained_cfg_overlay, which an mm config cannot use)
    assert "init_cfg=dict(type='Pretrained', checkpoint='/path/to/file')" in str(info.value)
    assert "pretrained_cfg_overlay" not in str(info.value)


def test_init_cfg_with_integer_tensors_is_refused(tmp_path):
    source = timm.create_model(SMALL["shvit"])
    path = tmp_path / "int.safetensors"
    save_file({k: v.to(torch.int64) for k, v in source.state_dict().items()}, str(path))
    backbone = AttnZooBackbone(SMALL["shvit"], init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(PretrainedLoadError, match=r"is torch.int64, but az_shvit_s1 holds it as torch.float32"):
        backbone.init_weights()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(out_indices=(0, 4)), "out_indices"),
        (dict(out_indices=()), "out_indices"),
        (dict(frozen_stages=5), "frozen_stages"),
        (dict(frozen_stages=-2), "frozen_stages"),
        (dict(out_norm="bn"), "out_norm"),
        (dict(init_cfg=dict(type="Kaiming")), "init_cfg"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttnZooBackbone("nat_mini", **kwargs)


def test_unknown_model_name_is_refused():
    with pytest.raises((KeyError, ValueError), match="resnet50"):
        AttnZooBackbone("resnet50")


def test_registered_into_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    for registry in (DET, SEG):
        b = registry.build(dict(type="AttnZooBackbone", model_name="nat_mini", out_indices=(3,)))
        assert isinstance(b, AttnZooBackbone) and b.channels == [512]


def test_importing_attnzoo_does_not_import_openmmlab():
    code = "import sys, attnzoo, timm; timm.create_model('nat_mini'); print(sorted(m for m in sys.modules if m.split('.')[0] in ('mmdet', 'mmseg', 'mmcv', 'mmengine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
