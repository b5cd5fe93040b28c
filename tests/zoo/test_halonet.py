"""HaloNet specifics: same weights in, same logits out as timm's ByobNet twins (through
``checkpoint_filter_fn`` and timm's pretrained loader), architecture parity with timm, and the
pretrained cfgs derived from timm's."""
import re
import time

import pytest
import timm
import torch

import attnzoo
import attnzoo.halonet  # registers
from attnzoo.halonet import checkpoint_filter_fn
from attnzoo.layers.halo_attn import HaloAttention2d

NAMES = attnzoo.list_models("HaloNet")
CI_NAME = "az_halonet26t"


def _randomise_twin(model, seed):
    """Random BatchNorm statistics and affine parameters (timm zero-initialises the last BN of
    every residual branch, which would hide half of each block). Moderate ranges keep the deep
    ones (halonet_h1) well conditioned in float32."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _twin_rel_err(name, tmp_path, batch=2):
    timm_name = name[len("az_"):]
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name).eval()
    _randomise_twin(theirs, seed=1)
    path = tmp_path / f"{timm_name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    size = theirs.pretrained_cfg["input_size"]
    x = torch.randn((batch,) + tuple(size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = theirs(x)
        got = ours(x)
    assert got.shape == want.shape == (batch, 1000)
    return ((got - want).norm() / want.norm()).item()


def test_logits_match_timm_twin(tmp_path):
    assert _twin_rel_err(CI_NAME, tmp_path) <= 1e-5


@pytest.mark.extended
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_timm_twin_every_variant(name, tmp_path):
    start = time.perf_counter()
    err = _twin_rel_err(name, tmp_path)
    print(f"{name}: rel err {err:.2e} in {time.perf_counter() - start:.1f}s")
    assert err <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_architecture_matches_timm(name):
    """Same block types, stage by stage, and the same halo attention settings as timm's twin."""
    with torch.device("meta"):
        ours = timm.create_model(name)
        theirs = timm.create_model(name[len("az_"):])
    ours_types = [[type(b).__name__ for b in stage.blocks] for stage in ours.stages]
    theirs_types = [[type(b).__name__ for b in stage] for stage in theirs.stages]
    assert ours_types == theirs_types
    ours_attn = [m for m in ours.modules() if isinstance(m, HaloAttention2d)]
    theirs_attn = [m for m in theirs.modules() if type(m).__name__ == "HaloAttn"]
    assert len(ours_attn) == len(theirs_attn) > 0
    for a, b in zip(ours_attn, theirs_attn):
        assert (a.num_heads, a.dim_head_qk, a.dim_head_v, a.block_size, a.halo_size, a.query_stride) == (
            b.num_heads, b.dim_head_qk, b.dim_head_v, b.block_size, b.halo_size, b.block_stride)
        assert a.avg_down == (not isinstance(b.pool, torch.nn.Identity))
    assert ours.num_features == theirs.num_features
    # feature 0 is the stem at stride 2, as in timm
    assert [f["num_chs"] for f in ours.feature_info] == [f["num_chs"] for f in theirs.feature_info]
    assert [f["reduction"] for f in ours.feature_info] == [f["reduction"] for f in theirs.feature_info]


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_is_timms(name):
    timm_name = name[len("az_"):]
    ours = timm.models.get_pretrained_cfg(name).to_dict()
    theirs = timm.models.get_pretrained_cfg(timm_name).to_dict()
    for key in ("hf_hub_id", "url", "input_size", "min_input_size", "crop_pct", "crop_mode", "interpolation",
                "mean", "std", "num_classes", "pool_size", "license", "tag"):
        assert ours.get(key) == theirs.get(key), key
    assert ours["first_conv"] == theirs["first_conv"] and ours["classifier"] == "head.fc"
    if theirs.get("hf_hub_id"):
        assert ours["hf_hub_id"] == f"timm/{timm_name}.{theirs['tag']}"


def test_checkpoint_filter_passes_timm_keys_through_and_reads_earlier_attnzoo_names():
    torch.manual_seed(0)
    theirs = timm.create_model("haloregnetz_b").state_dict()
    same = checkpoint_filter_fn(theirs)
    assert same.keys() == theirs.keys() and all(torch.equal(same[k], v) for k, v in theirs.items())
    assert checkpoint_filter_fn({"state_dict": theirs}).keys() == theirs.keys()
    # attnzoo's names before they became timm's: stages.i.blocks.j, self_attn.*_rel, linear q / kv
    old = {}
    for k, v in theirs.items():
        k = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", k).replace(".pos_embed.", ".")
        old[k] = v.flatten(1) if k.endswith(("self_attn.q.weight", "self_attn.kv.weight")) else v
    back = checkpoint_filter_fn(old)
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], v) for k, v in theirs.items())


def _timm_state_dict_round_trip(name):
    """timm's state dict loads strictly into the az_ model and the az_ model's into timm's: same
    keys, shapes and layouts, same logits."""
    torch.manual_seed(0)
    theirs = timm.create_model(name[len("az_"):]).eval()
    _randomise_twin(theirs, seed=1)
    with torch.device("meta"):  # assigned the loaded tensors: strict loading without init cost
        ours, back = timm.create_model(name).eval(), timm.create_model(name[len("az_"):]).eval()
    sd = theirs.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in sd.items()]
    ours.load_state_dict(sd, strict=True, assign=True)
    back.load_state_dict(ours.state_dict(), strict=True, assign=True)
    assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items())
    x = torch.randn((1,) + tuple(theirs.pretrained_cfg["input_size"]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


def test_timm_state_dict_round_trip():
    _timm_state_dict_round_trip(CI_NAME)


@pytest.mark.extended
@pytest.mark.parametrize("name", NAMES)
def test_timm_state_dict_round_trip_every_variant(name):
    _timm_state_dict_round_trip(name)


def test_features_only_with_out_indices_and_mixer_backend():
    model = timm.create_model(CI_NAME, features_only=True, out_indices=(2, 4), backend="reference").eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 60))
    assert [f.shape for f in feats] == [(1, 512, 13, 8), (1, 2048, 4, 2)]
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, HaloAttention2d))
