"""TransNeXt specifics: pretrained cfgs, checkpoint conversion from the authors' format (key
names and shapes from tests/zoo/upstream_transnext_keys.py), any input size with one set of
weights, and no stale per-size state."""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import attnzoo
from attnzoo.layers.transnext_attn import AggregatedAttention2d, LengthScaledAttention2d, _cached_table
from attnzoo.transnext import checkpoint_filter_fn

from .upstream_transnext_keys import UPSTREAM_CONFIGS, authors_keys, size_dependent_buffers

SHORT = dict(depths=(1, 1, 2, 1))


def _config(name, overrides=None):
    dims, depths, heads, ratios, srs = UPSTREAM_CONFIGS[name]
    return dims, (overrides or {}).get("depths", depths), heads, ratios, srs


def _authors_state_dict(name, seed=0, overrides=None, buffers=False):
    dims, depths, heads, ratios, srs = _config(name, overrides)
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) for k, s in authors_keys(dims, depths, heads, ratios, srs).items()}
    if buffers:
        for k, s in size_dependent_buffers(depths, srs).items():
            sd[k] = torch.zeros(s, dtype=torch.bool) if k.endswith("padding_mask") else torch.ones(s)
    return sd


def _expected_name(key):
    """The attnzoo name of an upstream key, spelled out independently of checkpoint_filter_fn."""
    head, rest = key.split(".", 1)
    if head.startswith("patch_embed"):
        i = int(head[len("patch_embed"):]) - 1
        return f"stem.{rest}" if i == 0 else f"stages.{i}.downsample.{rest}"
    if head.startswith("block"):
        i = int(head[len("block"):]) - 1
        j, inner = rest.split(".", 1)
        inner = inner.replace("attn.cpb_fc1.", "attn.cpb.fc1.").replace("attn.cpb_fc2.", "attn.cpb.fc2.")
        inner = inner.replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
        return f"stages.{i}.blocks.{j}.{inner}"
    if head.startswith("norm"):
        return f"stages.{int(head[len('norm'):]) - 1}.norm.{rest}"
    return key


def test_pretrained_cfgs_point_at_the_authors_hub_files():
    cfg = timm.models.get_pretrained_cfg("transnext_micro")
    assert cfg.hf_hub_id == "DaiShiResearch/transnext-micro-224-1k"
    assert cfg.hf_hub_filename == "transnext_micro_224_1k.pth"
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.license == "apache-2.0"
    cfg = timm.models.get_pretrained_cfg("transnext_base_384")
    assert cfg.hf_hub_id == "DaiShiResearch/transnext-base-384-1k-ft-1k"
    assert cfg.hf_hub_filename == "transnext_base_384_1k_ft_1k.pth"
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0 and cfg.crop_mode == "squash"
    for size in ("tiny", "small", "base"):
        assert timm.models.get_pretrained_cfg(f"transnext_{size}").hf_hub_filename == f"transnext_{size}_224_1k.pth"
    assert timm.models.get_pretrained_cfg("transnext_small_384").hf_hub_id == "DaiShiResearch/transnext-small-384-1k-ft-1k"
    assert set(attnzoo.list_models("TransNeXt")) == {
        "transnext_micro", "transnext_tiny", "transnext_small", "transnext_base", "transnext_small_384", "transnext_base_384"}


@pytest.mark.parametrize("name", list(UPSTREAM_CONFIGS))
def test_parameters_equal_the_upstream_checkpoint(name):
    """Same parameter names (after conversion) and shapes as the authors' model, variant by variant."""
    with torch.device("meta"):
        model = timm.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    upstream = {_expected_name(k): s for k, s in authors_keys(*_config(name)).items()}
    assert ours == upstream


def test_structure_follows_upstream():
    with torch.device("meta"):
        model = timm.create_model("transnext_micro")
    mixers = [[type(b.attn) for b in s.blocks] for s in model.stages]
    assert mixers == [[AggregatedAttention2d] * 2, [AggregatedAttention2d] * 2, [AggregatedAttention2d] * 15, [LengthScaledAttention2d] * 2]
    assert [s.blocks[0].attn.sr_ratio for s in model.stages[:3]] == [8, 4, 2]
    assert [s.blocks[0].attn.pretrain_size for s in model.stages] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert model.stem.proj.kernel_size == (7, 7) and model.stem.proj.stride == (4, 4)
    assert model.stages[1].downsample.proj.kernel_size == (3, 3) and model.stem.norm.eps == 1e-5
    assert model.stages[0].norm.eps == model.stages[0].blocks[0].norm1.eps == 1e-6
    assert model.stages[0].blocks[0].mlp.hidden_features == 256  # int(2 * 48 * 8 / 3)
    nwd = model.no_weight_decay()
    assert "stages.0.blocks.0.attn.query_embedding" in nwd and "stages.3.blocks.1.attn.cpb.fc2.bias" in nwd
    assert "stages.0.blocks.0.attn.relative_pos_bias_local" in nwd and "stages.2.blocks.0.attn.temperature" in nwd
    assert "stages.0.blocks.0.attn.learnable_tokens" not in nwd and "stages.0.blocks.0.attn.q.weight" not in nwd


@pytest.mark.parametrize("name,overrides,wrap,buffers", [
    ("transnext_micro", {}, "model", True),
    ("transnext_tiny", SHORT, None, False),
])
def test_authors_checkpoint_loads_through_timm(name, overrides, wrap, buffers, tmp_path):
    upstream = _authors_state_dict(name, seed=1, overrides=overrides, buffers=buffers)
    path = tmp_path / f"{name}.pth"
    torch.save({wrap: upstream} if wrap else upstream, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **overrides)
    ours = model.state_dict()
    weights = {k: v for k, v in upstream.items() if k in authors_keys(*_config(name, overrides))}
    assert len(ours) == len(weights)
    for key, value in weights.items():
        assert torch.equal(ours[_expected_name(key)], value), key
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 80))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_filter_passes_attnzoo_checkpoints_and_drops_buffers():
    with torch.device("meta"):
        model = timm.create_model("transnext_micro", **SHORT)
    sd = {k: torch.zeros(1) for k in model.state_dict()}
    extra = {"stages.0.blocks.0.attn.padding_mask": torch.zeros(1), "relative_coords_table1": torch.zeros(1)}
    assert set(checkpoint_filter_fn({"state_dict": {**sd, **extra}}, model)) == set(sd)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "micro.pth"
    torch.save(_authors_state_dict("transnext_micro", overrides=SHORT), path)
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|has shape"):
        timm.create_model("transnext_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SHORT)


def test_checkpoint_with_a_missing_tensor_is_refused(tmp_path):
    sd = _authors_state_dict("transnext_micro", overrides=SHORT)
    del sd["block2.0.attn.learnable_tokens"]
    path = tmp_path / "micro.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match="stages.1.blocks.0.attn.learnable_tokens"):
        timm.create_model("transnext_micro", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SHORT)


def test_no_stale_per_size_state():
    """At 224 the output is bit-identical whether or not the same model ran at other sizes first,
    and whether the per-size tables were built before or after those runs."""
    torch.manual_seed(0)
    model = timm.create_model("transnext_micro").eval()
    x = torch.randn(1, 3, 224, 224)
    _cached_table.cache_clear()
    with torch.no_grad():
        fresh = model(x)
        for size in ((256, 256), (384, 384), (200, 300)):
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 1000) and torch.isfinite(out).all()
        again = model(x)
        _cached_table.cache_clear()
        model(torch.randn(1, 3, 200, 300))
        rebuilt = model(x)
    assert torch.equal(fresh, again) and torch.equal(fresh, rebuilt)


def _forward_backward(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0).train()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]


SIZES = [(224, 224), (256, 256), (384, 384), (200, 300)]


@pytest.mark.parametrize("size", SIZES)
def test_micro_trains_at_any_size(size):
    _forward_backward("transnext_micro", size)


@pytest.mark.extended
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["transnext_tiny", "transnext_small", "transnext_base", "transnext_small_384", "transnext_base_384"])
def test_bigger_variants_train_at_any_size(name, size):
    _forward_backward(name, size)


def test_pretrained_downloads_from_the_hub_id_and_filename(tmp_path):
    """pretrained=True resolves hf_hub_id + hf_hub_filename through huggingface_hub; the Hub is a
    prepared local cache (HF_HUB_OFFLINE=1), laid out as huggingface_hub stores downloads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--DaiShiResearch--transnext-micro-224-1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    sd = _authors_state_dict("transnext_micro", seed=3)
    torch.save({"model": sd}, snapshot / "transnext_micro_224_1k.pth")
    expected = sd["head.weight"][:3, :3].tolist()
    script = textwrap.dedent(f"""
        import torch, timm, attnzoo
        m = timm.create_model('transnext_micro', pretrained=True)
        got = m.head.weight[:3, :3]
        assert torch.allclose(got, torch.tensor({expected!r})), got
        print('loaded', m.pretrained_cfg['hf_hub_id'])
    """)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded DaiShiResearch/transnext-micro-224-1k" in result.stdout
