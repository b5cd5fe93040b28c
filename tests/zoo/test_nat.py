"""NAT / DiNAT specifics: dilation schedules, pretrained cfgs and checkpoint conversion from the
upstream formats (key names and shapes from tests/zoo/upstream_nat_keys.py)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file

import attnzoo
from attnzoo.hub import PretrainedLoadError
from attnzoo.layers import NeighborhoodAttention

from .upstream_nat_keys import UPSTREAM_CONFIGS, authors_keys, transformers_keys


def _random_state_dict(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


# nat_small is the layer-scale layout; two blocks a stage keep its checkpoints small and the tests fast
SHORT = dict(depths=(2, 2, 2, 2))


def _config(name, overrides):
    dim, depths, heads, mlp, layer_scale, kernel = UPSTREAM_CONFIGS[name]
    return dim, overrides.get("depths", depths), heads, mlp, layer_scale, kernel


def _hf_state_dict(name, seed=0, overrides=None):
    base = "dinat" if name.startswith("dinat") else "nat"
    return _random_state_dict(transformers_keys(base, *_config(name, overrides or {})), seed)


def _mixers(model):
    return [m for m in model.modules() if isinstance(m, NeighborhoodAttention)]


@pytest.mark.parametrize("name,expected", [
    ("nat_tiny", [[1] * 3, [1] * 4, [1] * 18, [1] * 5]),
    ("dinat_mini", [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1] * 5]),
    ("dinat_tiny", [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]),
    ("dinat_large_384", [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]),
    ("dinat_large_11x11_384", [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]),
])
def test_dilation_schedules_match_upstream(name, expected):
    with torch.device("meta"):
        model = timm.create_model(name)
    got = [[blk.attn.dilation[0] for blk in stage.blocks] for stage in model.stages]
    assert got == expected
    kernel = 11 if "11x11" in name else 7
    assert all(m.kernel_size == (kernel, kernel) for m in _mixers(model))


def test_pretrained_cfgs_point_at_upstream_hub_weights():
    cfg = timm.models.get_pretrained_cfg("nat_tiny")
    assert cfg.hf_hub_id == "shi-labs/nat-tiny-in1k-224" and cfg.input_size == (3, 224, 224)
    cfg = timm.models.get_pretrained_cfg("dinat_large_384")
    assert cfg.hf_hub_id == "shi-labs/dinat-large-in22k-in1k-384" and cfg.input_size == (3, 384, 384)
    assert timm.models.get_pretrained_cfg("dinat_large_11x11_384").hf_hub_id == "shi-labs/dinat-large-11x11-in22k-in1k-384"


@pytest.mark.parametrize("name,overrides", [("nat_mini", {}), ("nat_small", SHORT), ("dinat_mini", {})])
def test_transformers_checkpoint_loads_through_timm(name, overrides, tmp_path):
    upstream = _hf_state_dict(name, seed=1, overrides=overrides)
    path = tmp_path / "model.safetensors"
    save_file(upstream, str(path))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **overrides)
    ours = model.state_dict()
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in upstream.values())

    base = "dinat" if name.startswith("dinat") else "nat"
    _, depths, _, _, layer_scale, _ = _config(name, overrides)
    assert torch.equal(ours["stem.conv1.weight"], upstream[f"{base}.embeddings.patch_embeddings.projection.0.weight"])
    assert torch.equal(ours["stem.norm.bias"], upstream[f"{base}.embeddings.norm.bias"])
    for i, depth in enumerate(depths):
        for j in range(depth):
            up = f"{base}.encoder.levels.{i}.layers.{j}"
            me = f"stages.{i}.blocks.{j}"
            for kind in ("weight", "bias"):
                qkv = torch.cat([upstream[f"{up}.attention.self.{w}.{kind}"] for w in ("query", "key", "value")])
                assert torch.equal(ours[f"{me}.attn.qkv.{kind}"], qkv)
                assert torch.equal(ours[f"{me}.attn.proj.{kind}"], upstream[f"{up}.attention.output.dense.{kind}"])
                assert torch.equal(ours[f"{me}.mlp.fc1.{kind}"], upstream[f"{up}.intermediate.dense.{kind}"])
                assert torch.equal(ours[f"{me}.mlp.fc2.{kind}"], upstream[f"{up}.output.dense.{kind}"])
                assert torch.equal(ours[f"{me}.norm1.{kind}"], upstream[f"{up}.layernorm_before.{kind}"])
                assert torch.equal(ours[f"{me}.norm2.{kind}"], upstream[f"{up}.layernorm_after.{kind}"])
            assert torch.equal(ours[f"{me}.attn.rpb"], upstream[f"{up}.attention.self.rpb"])
            if layer_scale:
                assert torch.equal(ours[f"{me}.ls1.gamma"], upstream[f"{up}.layer_scale_parameters"][0])
                assert torch.equal(ours[f"{me}.ls2.gamma"], upstream[f"{up}.layer_scale_parameters"][1])
        if i > 0:
            assert torch.equal(ours[f"stages.{i}.downsample.conv.weight"], upstream[f"{base}.encoder.levels.{i - 1}.downsample.reduction.weight"])
            assert torch.equal(ours[f"stages.{i}.downsample.norm.weight"], upstream[f"{base}.encoder.levels.{i - 1}.downsample.norm.weight"])
    assert torch.equal(ours["norm.weight"], upstream[f"{base}.layernorm.weight"])
    assert torch.equal(ours["head.weight"], upstream["classifier.weight"])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_authors_checkpoint_gives_the_same_model_as_the_transformers_one(tmp_path):
    """The same weights in both upstream layouts must build identical models."""
    name = "nat_small"
    hf = _hf_state_dict(name, seed=2, overrides=SHORT)
    authors = {}
    for key, shape in authors_keys(*_config(name, SHORT)).items():
        src = (key.replace("patch_embed.proj.", "nat.embeddings.patch_embeddings.projection.")
                  .replace("patch_embed.norm.", "nat.embeddings.norm."))
        if key.startswith("levels."):
            parts = key.split(".")
            i = parts[1]
            if parts[2] == "downsample":
                src = f"nat.encoder.levels.{i}.downsample.{'.'.join(parts[3:])}"
            else:
                j, rest = parts[3], ".".join(parts[4:])
                up = f"nat.encoder.levels.{i}.layers.{j}"
                if rest.startswith("attn.qkv."):
                    kind = rest.split(".")[-1]
                    authors[key] = torch.cat([hf[f"{up}.attention.self.{w}.{kind}"] for w in ("query", "key", "value")])
                    continue
                if rest in ("gamma1", "gamma2"):
                    authors[key] = hf[f"{up}.layer_scale_parameters"][int(rest[-1]) - 1].clone()
                    continue
                src = up + "." + {
                    "norm1": "layernorm_before", "attn.rpb": "attention.self.rpb", "attn.proj": "attention.output.dense",
                    "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
                }[rest.rsplit(".", 1)[0] if rest != "attn.rpb" else rest] + ("" if rest == "attn.rpb" else "." + rest.rsplit(".", 1)[1])
        elif key.startswith("norm."):
            src = "nat.layernorm." + key.split(".", 1)[1]
        elif key.startswith("head."):
            src = "classifier." + key.split(".", 1)[1]
        authors[key] = hf[src]
        assert tuple(authors[key].shape) == shape, key
    torch.save({"model": authors}, tmp_path / "nat_small.pth")
    save_file(hf, str(tmp_path / "model.safetensors"))
    a = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nat_small.pth")), **SHORT).eval()
    b = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors")), **SHORT).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_hf_state_dict("nat_mini"), str(path))
    with pytest.raises(PretrainedLoadError, match=r"^nat_tiny: '.*model.safetensors' lacks \d+ of nat_tiny's \d+ tensors"):
        timm.create_model("nat_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_checkpoint_with_a_missing_projection_is_refused(tmp_path):
    sd = _hf_state_dict("nat_mini")
    del sd["nat.encoder.levels.0.layers.0.attention.self.key.weight"]
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    with pytest.raises(PretrainedLoadError, match=r"^nat_mini: '.*model.safetensors' cannot be converted.*query, key and value"):
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pretrained_downloads_from_the_hub_id(tmp_path):
    """pretrained=True resolves the cfg's hf_hub_id through huggingface_hub; the Hub is a prepared
    local cache (HF_HUB_OFFLINE=1), laid out as huggingface_hub stores downloads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--shi-labs--nat-mini-in1k-224"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    sd = _hf_state_dict("nat_mini", seed=3)
    save_file(sd, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"model_type": "nat"}))
    expected = sd["classifier.weight"][:3, :3].tolist()
    script = textwrap.dedent(f"""
        import torch, timm, attnzoo
        m = timm.create_model('nat_mini', pretrained=True)
        got = m.head.weight[:3, :3]
        assert torch.allclose(got, torch.tensor({expected!r})), got
        print('loaded', m.pretrained_cfg['hf_hub_id'])
    """)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded shi-labs/nat-mini-in1k-224" in result.stdout
