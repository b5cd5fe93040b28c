"""BiFormer specifics: the upstream configurations, GFLOPs against the published figures,
conversion of the authors' checkpoints (key names and shapes from tests/zoo/upstream_biformer_keys.py),
the download of the authors' files, and forward + backward at the sizes users run."""
from __future__ import annotations

import pytest
import timm
import torch

import attnzoo
from attnzoo.layers.biformer_attn import AttentionLePE2d, BiLevelRoutingAttention2d
from attnzoo.tools.bench_routed import LegacyBiLevelRoutingAttention
from attnzoo.tools.flops import gflops_macs

from .upstream_biformer_keys import UPSTREAM_CONFIGS, authors_keys

NAMES = list(UPSTREAM_CONFIGS)
SHORT = dict(depths=(1, 1, 2, 1))  # small/base checkpoints with fewer blocks keep the tests fast


def _authors_state_dict(name, seed=0, depths=None):
    dims, up_depths, topks, mlp = UPSTREAM_CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in authors_keys(dims, depths or up_depths, topks, mlp).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("name", NAMES)
def test_configuration_matches_upstream(name):
    dims, depths, topks, mlp = UPSTREAM_CONFIGS[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    assert [len(s.blocks) for s in model.stages] == list(depths)
    for stage, dim, topk in zip(model.stages, dims, topks):
        for block in stage.blocks:
            assert block.mlp.fc1.out_features == mlp * dim
            assert block.norm1.eps == 1e-6 and block.pos_embed.proj.kernel_size == (3, 3)
            if topk > 0:
                assert isinstance(block.attn, BiLevelRoutingAttention2d)
                assert (block.attn.num_heads, block.attn.num_regions, block.attn.topk) == (dim // 32, 7, topk)
                assert block.attn.lepe.kernel_size == (5, 5)
            else:
                assert isinstance(block.attn, AttentionLePE2d) and block.attn.num_heads == 8
    assert [i["num_chs"] for i in model.feature_info] == list(dims)
    assert [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", [NAMES[0], *(pytest.param(n, marks=pytest.mark.extended) for n in NAMES[1:])])
def test_gflops_match_published(name):
    model = timm.create_model(name)
    published = attnzoo.get_entry(name).published
    assert abs(gflops_macs(model, 224) / published.gflops - 1) <= 0.05


def test_pretrained_cfgs_point_at_the_authors_files():
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url.startswith("https://api.onedrive.com/") and cfg.hf_hub_id is None
        assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.license == "mit"
    assert len({timm.models.get_pretrained_cfg(n).url for n in NAMES}) == 3


@pytest.mark.parametrize("name,overrides,wrapped", [
    ("biformer_tiny", {}, True),
    ("biformer_tiny", {}, False),
    ("biformer_base", SHORT, True),
])
def test_authors_checkpoint_loads_through_timm(name, overrides, wrapped, tmp_path):
    upstream = _authors_state_dict(name, seed=1, depths=overrides.get("depths"))
    path = tmp_path / f"{name}.pth"
    torch.save({"model": upstream} if wrapped else upstream, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **overrides)
    ours = model.state_dict()
    assert len(ours) == len(upstream)
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in upstream.values())
    pairs = {
        "stem.conv1.weight": "downsample_layers.0.0.weight",
        "stem.norm1.running_var": "downsample_layers.0.1.running_var",
        "stem.conv2.bias": "downsample_layers.0.3.bias",
        "stem.norm2.weight": "downsample_layers.0.4.weight",
        "stages.2.downsample.conv.weight": "downsample_layers.2.0.weight",
        "stages.3.downsample.norm.running_mean": "downsample_layers.3.1.running_mean",
        "stages.0.blocks.0.pos_embed.proj.weight": "stages.0.0.pos_embed.weight",
        "stages.1.blocks.0.attn.qkv.weight": "stages.1.0.attn.qkv.qkv.weight",
        "stages.1.blocks.0.attn.qkv.bias": "stages.1.0.attn.qkv.qkv.bias",
        "stages.2.blocks.1.attn.proj.weight": "stages.2.1.attn.wo.weight",
        "stages.2.blocks.1.attn.lepe.weight": "stages.2.1.attn.lepe.weight",
        "stages.3.blocks.0.attn.qkv.weight": "stages.3.0.attn.qkv.weight",
        "stages.3.blocks.0.attn.proj.bias": "stages.3.0.attn.proj.bias",
        "stages.3.blocks.0.attn.lepe.bias": "stages.3.0.attn.lepe.bias",
        "stages.0.blocks.0.mlp.fc1.weight": "stages.0.0.mlp.0.weight",
        "stages.0.blocks.0.mlp.fc2.bias": "stages.0.0.mlp.3.bias",
        "stages.2.blocks.0.norm2.weight": "stages.2.0.norm2.weight",
        "norm.running_var": "norm.running_var",
        "head.weight": "head.weight",
    }
    for mine, theirs in pairs.items():
        assert torch.equal(ours[mine], upstream[theirs]), mine
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_converted_routing_mixer_computes_what_the_authors_module_computes(tmp_path):
    """The converted block-level mixer against the authors' legacy module loaded with the same
    authors' tensors under their own names (double precision, a 224-px stage-2 input)."""
    upstream = _authors_state_dict("biformer_tiny", seed=2)
    torch.save({"model": upstream}, tmp_path / "tiny.pth")
    model = timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "tiny.pth")))
    ours = model.stages[1].blocks[1].attn.double()
    legacy = LegacyBiLevelRoutingAttention(128, 4, 7, 4, auto_pad=False).double()
    prefix = "stages.1.1.attn."
    legacy.load_state_dict({k[len(prefix):]: v.double() for k, v in upstream.items() if k.startswith(prefix)})
    x = torch.randn(2, 28, 28, 128, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), legacy(x), rtol=1e-12, atol=1e-12)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"model": _authors_state_dict("biformer_tiny")}, path)
    with pytest.raises(RuntimeError, match=r"^biformer_small: '.*tiny.pth' lacks \d+ of biformer_small's \d+ tensors"):
        timm.create_model("biformer_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_checkpoint_with_a_missing_tensor_is_refused(tmp_path):
    sd = _authors_state_dict("biformer_tiny")
    del sd["stages.2.3.attn.wo.weight"]
    path = tmp_path / "tiny.pth"
    torch.save(sd, path)
    with pytest.raises(RuntimeError, match="stages.2.blocks.3.attn.proj.weight"):
        timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pretrained_downloads_the_authors_file_under_its_own_name(tmp_path, monkeypatch):
    """The three OneDrive urls all end in '/content': attnzoo.hub caches each under a name derived
    from the whole url, once."""
    import io

    from attnzoo import hub

    fetched = []
    buf = io.BytesIO()
    torch.save({"model": _authors_state_dict("biformer_tiny", seed=3)}, buf)

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(buf.getvalue()))}

    def fake_urlopen(request, timeout):
        fetched.append(request.full_url)
        return Response(buf.getvalue())

    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(hub.urllib.request, "urlopen", fake_urlopen)
    model = timm.create_model("biformer_tiny", pretrained=True)
    url = timm.models.get_pretrained_cfg("biformer_tiny").url
    assert fetched == [url]
    expected = _authors_state_dict("biformer_tiny", seed=3)["head.weight"]
    assert torch.equal(model.head.weight, expected)
    timm.create_model("biformer_tiny", pretrained=True)  # cached: no second download
    assert len(fetched) == 1
    others = {timm.models.get_pretrained_cfg(n).url for n in ("biformer_small", "biformer_base")}
    assert {hub._url_cache_path(u) for u in others | {url}}.__len__() == 3  # no two variants share a cache file


def _forward_backward(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0)
    x = torch.randn(1, 3, *size)
    out = model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(-(-size[0] // r), -(-size[1] // r)) for r in (4, 8, 16, 32)]


SIZES = [(224, 224), (256, 256), (384, 384), (200, 300)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", [NAMES[0], *(pytest.param(n, marks=pytest.mark.extended) for n in NAMES[1:])])
def test_forward_backward_at_the_sizes_users_run(name, size):
    _forward_backward(name, size)
