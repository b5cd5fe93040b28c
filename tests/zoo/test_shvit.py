"""SHViT specifics: same weights as timm's twin give the same logits, checkpoint conversion from
timm's and the authors' layouts, pretrained cfgs, published figures, strides 16/32/64 at any size."""
import math
import re

import pytest
import timm
import torch

import attnzoo
import attnzoo.shvit  # registers  # noqa: F401
from attnzoo.layers.shvit_attn import SingleHeadAttention2d
from attnzoo.tools.flops import gflops_macs

VARIANTS = ["az_shvit_s1", "az_shvit_s2", "az_shvit_s3", "az_shvit_s4"]


def _timm_name(name):
    return name[len("az_"):]


def _randomise(model, seed):
    """Random BatchNorm statistics and affines and GroupNorm affines (upstream initialises several
    BN scales to zero, which would hide whole branches), on top of the random conv / linear weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _twins(name, tmp_path, seed=0):
    """timm's model with random weights and ours loaded from its saved state dict, both in eval."""
    torch.manual_seed(seed)
    theirs = _randomise(timm.create_model(_timm_name(name)), seed + 1).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    return theirs, ours, path


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _check_twin(name, tmp_path):
    theirs, ours, _ = _twins(name, tmp_path)
    size = theirs.pretrained_cfg["input_size"][1:]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = theirs(x)
        got = ours(x)
    assert want.std() > 0.1  # the randomised network is not degenerate
    assert _rel(got, want) <= 1e-5


def test_same_weights_same_logits_as_timm(tmp_path):
    _check_twin("az_shvit_s1", tmp_path)


@pytest.mark.extended
@pytest.mark.parametrize("name", VARIANTS)
def test_same_weights_same_logits_as_timm_every_variant(name, tmp_path):
    _check_twin(name, tmp_path)


@pytest.mark.parametrize("size", [(97, 131), (32, 32)])
def test_same_features_as_timm_at_odd_sizes(size, tmp_path):
    """At any size timm runs, every stage output equals timm's; 32 px gives 2x2, 1x1, 1x1 maps."""
    theirs, ours, _ = _twins("az_shvit_s1", tmp_path)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        want = theirs.forward_intermediates(x, intermediates_only=True)
        got = ours.forward_intermediates(x, intermediates_only=True)
        assert _rel(ours(x), theirs(x)) <= 1e-5
    assert [t.shape[-2:] for t in got] == [(math.ceil(size[0] / r), math.ceil(size[1] / r)) for r in (16, 32, 64)]
    for a, b in zip(got, want):
        assert a.shape == b.shape and _rel(a, b) <= 1e-5


def test_timm_state_dict_round_trip(tmp_path):
    """timm's state dict loads strictly into az_shvit_s1 and az_shvit_s1's into timm's (same keys,
    shapes, layouts), same logits; the filter passes timm's names through."""
    theirs, _, _ = _twins("az_shvit_s1", tmp_path)
    sd = theirs.state_dict()
    ours = timm.create_model("az_shvit_s1").eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in sd.items()]
    ours.load_state_dict(sd, strict=True)
    back = _randomise(timm.create_model("shvit_s1"), 7).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(ours(x), theirs(x)) <= 1e-5
    converted = attnzoo.shvit.checkpoint_filter_fn(sd, ours)
    assert list(converted) == list(sd) and all(torch.equal(converted[k], v) for k, v in sd.items())


def test_attnzoo_earlier_names_still_load(tmp_path):
    """attnzoo's names before its state dicts became timm's (stem.convN, downsample.pre_conv, ...,
    attn.*, head.norm / head.fc) are converted to timm's."""
    theirs, ours, _ = _twins("az_shvit_s1", tmp_path)
    sd = theirs.state_dict()
    old_names = {
        "patch_embed.6.c.weight": "stem.conv4.c.weight",
        "stages.1.downsample.2.se.fc1.weight": "stages.1.downsample.merge.se.fc1.weight",
        "stages.2.downsample.4.m.pw2.bn.running_var": "stages.2.downsample.post_ffn.pw2.bn.running_var",
        "stages.2.blocks.3.mixer.m.pre_norm.weight": "stages.2.blocks.3.attn.norm.weight",
        "stages.2.blocks.3.mixer.m.proj.1.c.weight": "stages.2.blocks.3.attn.proj.c.weight",
        "stages.0.blocks.0.conv.m.c.weight": "stages.0.blocks.0.conv.c.weight",
        "stages.0.blocks.0.ffn.m.pw1.c.weight": "stages.0.blocks.0.ffn.pw1.c.weight",
        "head.bn.running_mean": "head.norm.running_mean",
        "head.l.weight": "head.fc.weight",
    }
    old = {old_names.get(k, re.sub(r"^patch_embed\.(\d)\.", lambda m: f"stem.conv{int(m.group(1)) // 2 + 1}.", k)): v for k, v in sd.items()}
    assert not any(k.startswith("patch_embed") for k in old)
    converted = attnzoo.shvit.checkpoint_filter_fn(old, ours)
    assert list(converted) == list(sd) and all(torch.equal(converted[k], v) for k, v in sd.items())


def _authors_layout(timm_sd):
    """timm's keys in the authors' layout (ysj9909/SHViT model/shvit.py): stage i is blocks{i+1};
    later stages hold the downsampler as entries 0 (dw + FFN), 1 (PatchMerging), 2 (dw + FFN)."""
    out = {}
    for key, value in timm_sd.items():
        parts = key.split(".")
        if parts[0] == "stages":
            stage, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "blocks":
                key = f"blocks{stage + 1}.{index + (3 if stage else 0)}.{rest}"
            else:
                entry = {0: "0.0", 1: "0.1", 2: "1", 3: "2.0", 4: "2.1"}[index]
                key = f"blocks{stage + 1}.{entry}.{rest}"
        out[key] = value
    return {"model": out}


def test_authors_checkpoint_gives_the_same_model(tmp_path):
    theirs, ours, _ = _twins("az_shvit_s1", tmp_path)
    path = tmp_path / "shvit_s1.pth"
    torch.save(_authors_layout(theirs.state_dict()), path)
    other = timm.create_model("az_shvit_s1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(other(x), ours(x), rtol=0, atol=0)


def test_distilled_authors_checkpoint_is_refused(tmp_path):
    theirs, ours, _ = _twins("az_shvit_s1", tmp_path)
    sd = _authors_layout(theirs.state_dict())
    sd["model"]["head_dist.l.weight"] = sd["model"]["head.l.weight"].clone()
    with pytest.raises(ValueError, match="head_dist"):
        attnzoo.shvit.checkpoint_filter_fn(sd, ours)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    _, _, path = _twins("az_shvit_s1", tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|has shape"):
        timm.create_model("az_shvit_s2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize("name", VARIANTS)
def test_pretrained_cfgs_are_timms(name):
    ours = timm.models.get_pretrained_cfg(name).to_dict()
    theirs = timm.models.get_pretrained_cfg(_timm_name(name)).to_dict()
    assert ours["hf_hub_id"] == f"timm/{_timm_name(name)}.in1k" and ours["tag"] == "in1k"
    assert ours["first_conv"] == "patch_embed.0.c" and ours["classifier"] == "head.l"  # timm's names
    for key in set(theirs) - {"architecture"}:
        assert ours[key] == theirs[key], key
    assert attnzoo.get_entry(name).published.img_size == ours["input_size"][-1]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.extended) if n != "az_shvit_s1" else n for n in VARIANTS])
def test_flops_match_published(name):
    """Multiply-adds at the published resolution (S1-S3 224 px, S4 256 px), as the paper counts them."""
    published = attnzoo.get_entry(name).published
    assert abs(gflops_macs(timm.create_model(name), published.img_size) / published.gflops - 1) <= 0.01


def test_structure():
    with torch.device("meta"):
        model = timm.create_model("az_shvit_s1", backend="reference")
    assert [i["reduction"] for i in model.feature_info] == [16, 32, 64]
    assert [i["num_chs"] for i in model.feature_info] == [128, 224, 320]
    assert [len(s.blocks) for s in model.stages] == [2, 4, 5]
    attn = [[b.attn for b in s.blocks] for s in model.stages]
    assert all(a is None for a in attn[0])  # the first stage has no attention
    assert [{(a.partial_dim, a.qk_dim) for a in stage} for stage in attn[1:]] == [{(48, 16)}, {(68, 16)}]
    assert all(isinstance(a, SingleHeadAttention2d) and a.backend == "reference" for stage in attn[1:] for a in stage)


def test_features_only_and_nhwc_intermediates():
    torch.manual_seed(0)
    model = timm.create_model("az_shvit_s1", features_only=True, out_indices=(1, 2)).eval()
    assert model.feature_info.reduction() == [32, 64]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 70, 50))
    assert [f.shape for f in feats] == [(1, 224, 3, 2), (1, 320, 2, 1)]
    full = timm.create_model("az_shvit_s1").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        nchw = full.forward_intermediates(x, intermediates_only=True)
        nhwc = full.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(nchw, nhwc):
        torch.testing.assert_close(a.permute(0, 2, 3, 1), b)
