"""BiFormer's mixers: BiLevelRoutingAttention2d against a re-implementation of the authors'
legacy module (``attnzoo.tools.bench_routed.LegacyBiLevelRoutingAttention``, with ``auto_pad``)
carrying the same weights, at sizes that are and are not multiples of the region count; and
AttentionLePE2d against its formula."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.layers.biformer_attn import AttentionLePE2d, BiLevelRoutingAttention2d
from attnzoo.tools.bench_routed import LegacyBiLevelRoutingAttention


def _rel(a, b):
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


def _pair(dim, heads, s, topk, seed=0):
    torch.manual_seed(seed)
    ours = BiLevelRoutingAttention2d(dim, heads, s, topk).double()
    with torch.no_grad():  # non-zero biases so the padded tokens (which carry them) matter
        for p in ours.parameters():
            p.normal_(0, 0.3)
    legacy = LegacyBiLevelRoutingAttention(dim, heads, s, topk).double().load_from(ours)
    return ours, legacy


@pytest.mark.parametrize("size,dim,heads,s,topk", [
    ((14, 14), 32, 2, 7, 4),  # divisible: BiFormer at 224 px, stage 3 style
    ((12, 8), 16, 1, 4, 16),  # divisible, every region routed
    ((10, 13), 32, 4, 7, 3),  # padded to 14x14: 2x2 regions
    ((5, 3), 16, 2, 7, 1),  # smaller than the region grid: 1x1 regions, mostly padding
    ((9, 9), 24, 3, 2, 2),  # padded to 10x10
])
def test_matches_the_authors_legacy_module_outputs_and_gradients(size, dim, heads, s, topk):
    ours, legacy = _pair(dim, heads, s, topk)
    x = torch.randn(2, *size, dim, dtype=torch.float64, requires_grad=True)
    a, b = ours(x), legacy(x)
    assert a.shape == x.shape
    assert _rel(a, b) <= 1e-12
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, [x, *ours.parameters()], g)
    gb = torch.autograd.grad(b, [x, *legacy.parameters()], g)
    # parameters in the same order: qkv, lepe, proj (ours) vs lepe, qkv.qkv, wo (legacy)
    named_b = dict(zip([n for n, _ in legacy.named_parameters()], gb[1:]))
    rename = {"qkv.weight": "qkv.qkv.weight", "qkv.bias": "qkv.qkv.bias", "proj.weight": "wo.weight", "proj.bias": "wo.bias",
              "lepe.weight": "lepe.weight", "lepe.bias": "lepe.bias"}
    assert _rel(ga[0], gb[0]) <= 1e-12
    for (name, _), grad in zip(ours.named_parameters(), ga[1:]):
        assert _rel(grad, named_b[rename[name]]) <= 1e-12, name


def test_padding_is_cropped_and_float32_works():
    torch.manual_seed(1)
    m = BiLevelRoutingAttention2d(64, 2, 7, 1)
    x = torch.randn(1, 15, 22, 64)
    out = m(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize("side_dwconv", [5, 0])
def test_attention_lepe_matches_its_formula(side_dwconv):
    torch.manual_seed(3)
    m = AttentionLePE2d(32, 8, side_dwconv=side_dwconv).double()
    assert m.qkv.bias is None  # upstream: no qkv bias
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    qkv = m.qkv(x).reshape(2, 30, 3, 8, 4).permute(2, 0, 3, 1, 4)  # upstream's reshape of the qkv output
    attn = ((qkv[0] @ qkv[1].transpose(-1, -2)) * 4 ** -0.5).softmax(-1)
    want = (attn @ qkv[2]).transpose(1, 2).reshape(2, 5, 6, 32)
    if side_dwconv:
        want = want + F.conv2d(x.permute(0, 3, 1, 2), m.lepe.weight, m.lepe.bias, padding=2, groups=32).permute(0, 2, 3, 1)
    want = m.proj(want)
    assert _rel(m(x), want) <= 1e-12


def test_scale_default_is_the_full_qk_width_as_upstream():
    m = BiLevelRoutingAttention2d(256, 8, 7, 16)
    assert m.scale == 256 ** -0.5
    assert BiLevelRoutingAttention2d(64, 2, qk_scale=0.1).scale == 0.1
    assert AttentionLePE2d(512).scale == 64 ** -0.5


def test_backend_and_repr():
    m = BiLevelRoutingAttention2d(64, 2, 7, 4, backend="reference")
    assert m.backend == "reference"
    assert "num_regions=7" in repr(m) and "topk=4" in repr(m) and "backend=reference" in repr(m)
    assert "backend=reference" in repr(AttentionLePE2d(64, backend="reference"))


@pytest.mark.parametrize("make,match", [
    (lambda: BiLevelRoutingAttention2d(64, 2, 7, 50), "topk must be an int in \\[1, num_regions\\*\\*2 = 49\\]"),
    (lambda: BiLevelRoutingAttention2d(64, 2, 7, -2), "AttentionLePE2d"),
    (lambda: BiLevelRoutingAttention2d(64, 3), "multiples of num_heads"),
    (lambda: BiLevelRoutingAttention2d(64, 2, 0), "num_regions must be an int >= 1"),
    (lambda: BiLevelRoutingAttention2d(64, 2, side_dwconv=4), "side_dwconv"),
    (lambda: AttentionLePE2d(64, 5), "multiple of num_heads"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match="C=64"):
        BiLevelRoutingAttention2d(64, 2)(torch.randn(1, 7, 7, 32))
    with pytest.raises(ValueError, match="C=64"):
        AttentionLePE2d(64)(torch.randn(1, 49, 64))
