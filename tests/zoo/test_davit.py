"""DaViT specifics: same weights in, same logits out as timm's DaViT (the acceptance test),
parameter counts of every variant, pretrained cfgs derived from timm's, and checkpoint conversion
from the authors' format."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import timm
import torch

import attnzoo
import attnzoo.davit  # registers  # noqa: F401
from attnzoo.davit import _VARIANTS
from attnzoo.layers.davit_attn import ChannelAttention, WindowAttention

NAMES = list(_VARIANTS)
TESTED = ["az_davit_tiny", "az_davit_small", "az_davit_base", "az_davit_large"]  # huge / giant: meta only


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _twin_checkpoint(timm_name, path, seed=0):
    """timm's model with random weights, including every 1-D parameter (norm scales and shifts,
    biases: zero or one at init) so that each of them matters; saved as timm saves it."""
    torch.manual_seed(seed)
    twin = timm.create_model(timm_name).eval()
    with torch.no_grad():
        for p in twin.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save(twin.state_dict(), path)
    return twin


def _compare_with_timm(name, sizes, tmp_path):
    timm_name = _VARIANTS[name][2]
    path = tmp_path / f"{timm_name}.pth"
    twin = _twin_checkpoint(timm_name, path)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    errors = {}
    for size in sizes:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
        with torch.no_grad():
            want, got = twin(x), ours(x)
        errors[size] = _rel(got, want)
    return errors


def test_logits_equal_timm_davit_tiny(tmp_path):
    """224 (every feature map a multiple of the 7x7 window) and 97x131 (padding at the stem, the
    downsamplers and every window attention): timm accepts both."""
    errors = _compare_with_timm("az_davit_tiny", [(224, 224), (97, 131)], tmp_path)
    assert all(e <= 1e-5 for e in errors.values()), errors


@pytest.mark.extended
@pytest.mark.parametrize("name", TESTED)
def test_logits_equal_timm_every_variant(name, tmp_path):
    start = time.perf_counter()
    errors = _compare_with_timm(name, [(224, 224), (97, 131)], tmp_path)
    print(f"{name}: rel err {errors}, {time.perf_counter() - start:.1f}s")
    assert all(e <= 1e-5 for e in errors.values()), errors


@pytest.mark.parametrize("name", NAMES)
def test_same_parameters_and_state_dict_keys_as_timm(name):
    with torch.device("meta"):
        ours = timm.create_model(name)
        twin = timm.create_model(_VARIANTS[name][2])
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    published = attnzoo.get_entry(name).published
    if published.params_m is not None:
        assert abs(sum(p.numel() for p in ours.parameters()) / 1e6 / published.params_m - 1) <= 0.01


def test_published_figures():
    pub = {n: attnzoo.get_entry(n).published for n in NAMES}
    assert [(pub[n].params_m, pub[n].gflops, pub[n].top1) for n in TESTED[:3]] == [(28.3, 4.5, 82.8), (49.7, 8.8, 84.2), (87.9, 15.5, 84.6)]
    assert all((pub[n].params_m, pub[n].gflops, pub[n].top1) == (None, None, None) for n in NAMES[3:])
    assert all(pub[n].img_size == 224 for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfgs_are_timms(name):
    timm_name, tag = _VARIANTS[name][2:]
    ours = timm.models.get_pretrained_cfg(name).to_dict()
    theirs = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}" if tag else timm_name).to_dict()
    for field in ("hf_hub_id", "url", "input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation",
                  "license", "num_classes", "pool_size", "first_conv", "classifier"):
        assert ours.get(field) == theirs.get(field), field
    assert (ours.get("tag") or "") == tag
    assert timm.is_model_pretrained(name) == bool(tag)


def test_pretrained_tags_are_timms():
    assert sorted(timm.list_pretrained("az_davit_*")) == sorted(
        f"az_{n}" for n in timm.list_pretrained("davit_*") if not n.split(".")[0].endswith("_fl"))
    assert timm.models.get_pretrained_cfg("az_davit_tiny").hf_hub_id == "timm/davit_tiny.msft_in1k"


def test_timm_names_are_untouched():
    with torch.device("meta"):
        assert type(timm.create_model("davit_tiny")).__module__ == "timm.models.davit"
        assert type(timm.create_model("az_davit_tiny")).__module__ == "attnzoo.davit"


def test_mixers_are_window_and_channel_attention():
    with torch.device("meta"):
        model = timm.create_model("az_davit_small", backend="reference")
    for stage, heads in zip(model.stages, (3, 6, 12, 24)):
        for dual in stage.blocks:
            spatial, channel = dual
            assert isinstance(spatial.attn, WindowAttention) and spatial.attn.window_size == (7, 7)
            assert isinstance(channel.attn, ChannelAttention) and channel.attn.num_heads == heads
            assert spatial.attn.num_heads == heads
    assert [len(s.blocks) for s in model.stages] == [1, 1, 9, 1]


def test_authors_checkpoint_converts(tmp_path):
    """dingmyu/davit names: patch_embeds.i (0 = stem), main_blocks.i.j.k with cpe.0/cpe.1,
    norms and head at the end."""
    twin = _twin_checkpoint("davit_tiny", tmp_path / "timm.pth", seed=1)
    authors = {}
    for key, value in twin.state_dict().items():
        new = (key.replace("stem.conv.", "patch_embeds.0.proj.").replace("stem.norm.", "patch_embeds.0.norm.")
                  .replace("head.fc.", "head.").replace("head.norm.", "norms.")
                  .replace(".cpe1.", ".cpe.0.").replace(".cpe2.", ".cpe.1."))
        if new.startswith("stages."):
            _, i, rest = new.split(".", 2)
            new = (f"patch_embeds.{i}." + rest.split(".", 1)[1].replace("conv.", "proj.") if rest.startswith("downsample.")
                   else f"main_blocks.{i}." + rest.split(".", 1)[1])
        authors[new] = value
    torch.save({"model": authors}, tmp_path / "authors.pth")
    ours = timm.create_model("az_davit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "authors.pth"))).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert _rel(ours(x), twin(x)) <= 1e-5


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    with torch.device("meta"):
        sd = timm.create_model("davit_small").state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in sd.items()}, tmp_path / "small.pth")
    with pytest.raises(RuntimeError, match=r"^az_davit_tiny: '.*small.pth' has \d+ that az_davit_tiny does not"):
        timm.create_model("az_davit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "small.pth")))


def test_intermediates_pruning_and_head():
    torch.manual_seed(0)
    model = timm.create_model("az_davit_tiny", num_classes=5).eval()
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 19), (8, 10), (4, 5), (2, 3)]
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.get_classifier()(pre), model(x))
        model.prune_intermediate_layers([1], prune_head=False)
        assert len(model.stages) == 2 and model.num_features == 192
        out = model.forward_intermediates(x, indices=[1], intermediates_only=True)
        torch.testing.assert_close(out[0], feats[1])
        assert model(x).shape == (1, 192, 8, 10)  # no pooling, no classifier: NCHW stage-2 features, as timm
    assert model.no_weight_decay() == set()  # as timm's DaVit: its optimizer factory exempts 1-D params


def test_pretrained_downloads_timms_weights_from_the_hub(tmp_path):
    """pretrained=True resolves timm's hf_hub_id (timm/davit_tiny.msft_in1k) through
    huggingface_hub; the Hub is a prepared local cache (HF_HUB_OFFLINE=1), laid out as
    huggingface_hub stores downloads, holding a timm-format checkpoint."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--davit_tiny.msft_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model("davit_tiny").state_dict().items()}
    g = torch.Generator().manual_seed(3)
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, str(snapshot / "model.safetensors"))
    script = textwrap.dedent("""
        import torch, timm, attnzoo.davit
        from safetensors.torch import load_file
        m = timm.create_model('az_davit_tiny', pretrained=True)
        sd = load_file(%r)
        assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
        print('loaded', m.pretrained_cfg['hf_hub_id'])
    """ % str(snapshot / "model.safetensors"))
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded timm/davit_tiny.msft_in1k" in result.stdout
