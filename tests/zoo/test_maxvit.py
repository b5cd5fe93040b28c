"""MaxViT specifics: same weights in, same logits out as timm's twin (all three bias layouts),
pretrained cfgs derived from timm's, sizes timm rejects, checkpoint pass-through."""
import pytest
import timm
import torch

import attnzoo
import attnzoo.maxvit  # noqa: F401  (registers; zoo/__init__ imports it once integrated)
from attnzoo.maxvit import _VARIANTS

ALL = list(_VARIANTS)
# CI: the smallest of each timm layout: bias MLP (rmlp), Swin-layout table (_rw_), TF-port table (_tf_)
SMALL = ["az_maxvit_rmlp_pico_rw_256", "az_maxvit_nano_rw_256", "az_maxvit_tiny_tf_224"]


def _randomise(model, seed=1):
    """BatchNorm running stats, bias tables and layer scales are constants at init: make them matter.

    Residual branches are scaled by 0.3 so the residual stream of a random network stays O(1): at
    timm's init a 24-block stack (rmlp_base) grows its features ~1000x and turns chaotic, and fp32
    rounding differences (timm's and gna's attention batch the same sums differently) grow to 1e-3
    without any difference in the math."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        for n, p in model.named_parameters():
            if "relative_position_bias_table" in n:
                p.copy_(torch.randn(p.shape, generator=g))
            elif n.endswith("gamma"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif n.endswith(("conv3_1x1.weight", "mlp.fc2.weight", "attn.proj.weight")):
                p.mul_(0.3)


def _twins(name, tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model(_VARIANTS[name][0]).eval()
    _randomise(ref)
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    return ref, ours


def _check_same_logits(name, tmp_path, size=None, batch=2):
    ref, ours = _twins(name, tmp_path)
    size = size or ref.pretrained_cfg["input_size"][1:]
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ref(x), ours(x)
    err = float((b - a).norm() / a.norm())
    assert err <= 1e-5, f"{name}: relative error {err:.3g}"
    return ours


@pytest.mark.parametrize("name", SMALL)
def test_same_logits_as_timm(name, tmp_path):
    _check_same_logits(name, tmp_path)


@pytest.mark.extended
@pytest.mark.parametrize("name", ALL)
def test_same_logits_as_timm_every_variant(name, tmp_path):
    _check_same_logits(name, tmp_path, batch=1)


def test_tf_port_at_odd_stage_sizes_timm_accepts(tmp_path):
    """222 px: the stem gives 111, so the stride-2 MBConv meets an odd size (TF 'same' padding)."""
    _check_same_logits("az_maxvit_tiny_tf_224", tmp_path, size=(222, 222))


def test_tiny_tf_runs_at_200x300_where_timm_refuses(tmp_path):
    ref, ours = _twins("az_maxvit_tiny_tf_224", tmp_path)
    x = torch.randn(1, 3, 200, 300)
    with pytest.raises(Exception, match="divisible"):
        with torch.no_grad():
            ref(x)
    with torch.no_grad():
        out = ours(x)
        feats = ours.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    # feature 0 is the stem (stride 2), as in timm
    assert [tuple(f.shape[-2:]) for f in feats] == [(100, 150), (50, 75), (25, 38), (13, 19), (7, 10)]


@pytest.mark.parametrize("name", ALL)
def test_structure_matches_timm(name):
    """Parameter count (the bias tables re-laid-out, same numbers), partition, head."""
    with torch.device("meta"):
        ref = timm.create_model(_VARIANTS[name][0])
        ours = timm.create_model(name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(ref)
    assert ours.stages[0].blocks[0].attn_grid.attn.partition_size == ref.stages[0].blocks[0].attn_grid.partition_size
    assert ours.num_classes == ref.num_classes and ours.head_hidden_size == ref.head_hidden_size


@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfgs_are_timms(name):
    timm_name = _VARIANTS[name][0]
    theirs = timm.models.get_arch_pretrained_cfgs(timm_name)
    ours = timm.models.get_arch_pretrained_cfgs(name)
    assert [k.split(".", 1)[1] for k in ours] == [k.split(".", 1)[1] for k in theirs]
    for (_, a), (_, b) in zip(ours.items(), theirs.items()):
        a, b = a.to_dict(), b.to_dict()
        assert a["hf_hub_id"] == f"timm/{timm_name}.{b['tag']}" == b["hf_hub_id"]
        for field in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "license", "num_classes", "pool_size"):
            assert a[field] == b[field], field
        assert a["fixed_input_size"] is False  # any input size works here


def test_published_figures():
    pub = attnzoo.get_entry("az_maxvit_tiny_tf_224").published
    assert (pub.params_m, pub.gflops, pub.top1, pub.img_size) == (31, 5.6, 83.62, 224)
    assert attnzoo.get_entry("az_maxvit_large_tf_224").published.top1 == 85.17
    assert attnzoo.get_entry("az_maxvit_rmlp_pico_rw_256").published.top1 is None
    assert attnzoo.list_models("MaxViT")[0] == "az_maxvit_rmlp_pico_rw_256"


def test_own_checkpoint_passes_through(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("az_maxvit_rmlp_pico_rw_256").eval()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    again = timm.create_model("az_maxvit_rmlp_pico_rw_256", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "ours.pth"))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_timm_weights_at_another_partition_are_resized_as_timm_does(tmp_path):
    """224-px weights (P=7) into the 384-px model (P=12): timm interpolates the TF bias table."""
    torch.manual_seed(0)
    ref = timm.create_model("maxvit_tiny_tf_224")
    _randomise(ref)
    torch.save(ref.state_dict(), tmp_path / "224.pth")
    theirs = timm.create_model("maxvit_tiny_tf_384", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "224.pth")))
    ours = timm.create_model("az_maxvit_tiny_tf_384", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "224.pth")))
    torch.testing.assert_close(
        ours.stages[1].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table,
        theirs.stages[1].blocks[0].attn_block.attn.rel_pos.relative_position_bias_table,
    )


def test_no_weight_decay_names_every_bias_parameter():
    for name in ("az_maxvit_rmlp_pico_rw_256", "az_maxvit_tiny_tf_224"):
        with torch.device("meta"):
            model = timm.create_model(name)
        names = model.no_weight_decay()
        per_mixer = 4 if "rmlp" in name else 1  # rel_pos.mlp.fc{1,2}.{weight,bias} or the table
        assert len(names) == per_mixer * 2 * sum(len(s.blocks) for s in model.stages)


def _timm_state_dict_round_trip(name):
    """timm's state dict loads strictly into the az_ model and the az_ model's into timm's (same
    keys, shapes and layouts; built on the meta device and assigned). The logits of timm's weights
    in the az_ model are test_same_logits_as_timm's (timm's pretrained path loads strictly)."""
    with torch.device("meta"):
        ref, ours, back = timm.create_model(_VARIANTS[name][0]), timm.create_model(name), timm.create_model(_VARIANTS[name][0])
    g = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in ref.state_dict().items()}
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.items()]
    ours.load_state_dict(theirs, strict=True, assign=True)
    back.load_state_dict(ours.state_dict(), strict=True, assign=True)
    assert all(torch.equal(v, theirs[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize("name", SMALL)
def test_timm_state_dict_round_trip(name):
    _timm_state_dict_round_trip(name)


@pytest.mark.extended
@pytest.mark.parametrize("name", ALL)
def test_timm_state_dict_round_trip_every_variant(name):
    _timm_state_dict_round_trip(name)


def test_attnzoo_earlier_checkpoint_names_still_load(tmp_path):
    """A state dict saved by attnzoo before its names became timm's (gna-layout ``rpb``,
    ``rpb_mlp``, qkv in (q|k|v, heads, dim) order) loads to the same model."""
    from attnzoo.layers.maxvit_attn import qkv_from_head_first

    for name in ("az_maxvit_nano_rw_256",):  # Swin-layout table and head-first qkv (the MLP is a rename)
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        old = {}
        for k, v in model.state_dict().items():
            if k.endswith(".rel_pos.relative_position_bias_table"):
                attn = model.get_submodule(k[: -len(".rel_pos.relative_position_bias_table")])
                k, v = k.replace(".rel_pos.relative_position_bias_table", ".rpb"), attn.relative_position_bias()
            elif ".rel_pos.mlp." in k:
                k = k.replace(".rel_pos.mlp.", ".rpb_mlp.")
            elif ".attn.qkv." in k:
                v = qkv_from_head_first(v, model.get_submodule(k.rsplit(".qkv.", 1)[0]).num_heads)
            old[k] = v.detach().clone()
        torch.save(old, tmp_path / "old.pth")
        again = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "old.pth"))).eval()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0, msg=k)
