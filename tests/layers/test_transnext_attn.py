"""TransNeXt's mixers (AggregatedAttention2d, LengthScaledAttention2d), the continuous position
bias tables and ConvolutionalGLU.

The module-level checks compare against the authors' formulation written here in their
token layout ([B, N, C], [B, heads, N, d], nn.Unfold windows, AdaptiveAvgPool2d, unique
coordinate tables), fed with the module's own parameters: same weights in, same outputs out.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.layers.convglu import ConvolutionalGLU
from attnzoo.layers.transnext_attn import (
    AggregatedAttention2d, ContinuousPositionBias, LengthScaledAttention2d, relative_position_table,
)


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (the zero-initialised learnable_bias and the tiny local bias too),
    so each term of the math shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


# --- the authors' formulation (token layout), for comparison only -------------------------------

def _authors_cpb_tables(query_size, key_size, pretrain_size):
    axis_qh = torch.arange(query_size[0], dtype=torch.float32)
    axis_kh = F.adaptive_avg_pool1d(axis_qh.unsqueeze(0), key_size[0]).squeeze(0)
    axis_qw = torch.arange(query_size[1], dtype=torch.float32)
    axis_kw = F.adaptive_avg_pool1d(axis_qw.unsqueeze(0), key_size[1]).squeeze(0)
    axis_kh, axis_kw = (t.reshape(-1) for t in torch.meshgrid(axis_kh, axis_kw, indexing="ij"))
    axis_qh, axis_qw = (t.reshape(-1) for t in torch.meshgrid(axis_qh, axis_qw, indexing="ij"))
    rel_h = (axis_qh[:, None] - axis_kh[None, :]) / (pretrain_size[0] - 1) * 8
    rel_w = (axis_qw[:, None] - axis_kw[None, :]) / (pretrain_size[1] - 1) * 8
    table, index = torch.unique(torch.stack([rel_h, rel_w], dim=-1).view(-1, 2), return_inverse=True, dim=0)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / torch.log2(torch.tensor(8.0))
    return index, table


def _authors_cpb(m, query_size, key_size, pretrain_size):
    index, table = _authors_cpb_tables(query_size, key_size, pretrain_size)
    n_q, n_k = query_size[0] * query_size[1], key_size[0] * key_size[1]
    return m.cpb.fc2(torch.relu(m.cpb.fc1(table))).transpose(0, 1)[:, index.view(-1)].view(-1, n_q, n_k)


def _authors_aggregated(m: AggregatedAttention2d, x: torch.Tensor, pretrain_size) -> torch.Tensor:
    b, h, w, c = x.shape
    heads, d, ws = m.num_heads, m.head_dim, m.window_size
    n, L = h * w, ws * ws
    x = x.reshape(b, n, c)
    pool_h, pool_w = h // m.sr_ratio, w // m.sr_ratio
    P = pool_h * pool_w
    ones = F.unfold(torch.ones(1, 1, h, w), ws, padding=ws // 2)
    seq_scale = torch.log(ones.sum(-2).squeeze(0).unsqueeze(-1) + P)
    padding_mask = ones.squeeze(0).permute(1, 0) == 0
    q_norm = F.normalize(m.q(x).reshape(b, n, heads, d).permute(0, 2, 1, 3), dim=-1)
    q_scaled = (q_norm + m.query_embedding) * F.softplus(m.temperature) * seq_scale
    k_loc, v_loc = m.kv(x).chunk(2, dim=-1)
    k_loc = F.normalize(k_loc.reshape(b, n, heads, d), dim=-1).reshape(b, n, -1)
    kv_loc = torch.cat([k_loc, v_loc], dim=-1).permute(0, 2, 1).reshape(b, -1, h, w)
    k_loc, v_loc = F.unfold(kv_loc, ws, padding=ws // 2).reshape(b, 2 * heads, d, L, n).permute(0, 1, 4, 2, 3).chunk(2, dim=1)
    attn_local = ((q_scaled.unsqueeze(-2) @ k_loc).squeeze(-2) + m.relative_pos_bias_local.unsqueeze(1)).masked_fill(padding_mask, float("-inf"))
    x_ = x.permute(0, 2, 1).reshape(b, -1, h, w)
    x_ = F.adaptive_avg_pool2d(m.act(m.sr(x_)), (pool_h, pool_w)).reshape(b, -1, P).permute(0, 2, 1)
    kv_pool = m.kv(m.norm(x_)).reshape(b, P, 2 * heads, d).permute(0, 2, 1, 3)
    k_pool, v_pool = kv_pool.chunk(2, dim=1)
    pool_bias = _authors_cpb(m, (h, w), (pool_h, pool_w), pretrain_size)
    attn_pool = q_scaled @ F.normalize(k_pool, dim=-1).transpose(-2, -1) + pool_bias
    attn = torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1)
    a_loc, a_pool = attn.split([L, P], dim=-1)
    x_local = ((q_norm @ m.learnable_tokens + m.learnable_bias + a_loc).unsqueeze(-2) @ v_loc.transpose(-2, -1)).squeeze(-2)
    out = (x_local + a_pool @ v_pool).transpose(1, 2).reshape(b, n, c)
    return m.proj(out).reshape(b, h, w, c)


def _authors_full(m: LengthScaledAttention2d, x: torch.Tensor, pretrain_size) -> torch.Tensor:
    b, h, w, c = x.shape
    n = h * w
    qkv = m.qkv(x.reshape(b, n, c)).reshape(b, -1, 3 * m.num_heads, m.head_dim).permute(0, 2, 1, 3)
    q, k, v = qkv.chunk(3, dim=1)
    bias = _authors_cpb(m, (h, w), (h, w), pretrain_size)
    attn = ((F.normalize(q, dim=-1) + m.query_embedding) * F.softplus(m.temperature) * torch.log(torch.tensor(float(n)))) \
        @ F.normalize(k, dim=-1).transpose(-2, -1) + bias
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
    return m.proj(out).reshape(b, h, w, c)


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("query,key,pretrain", [
    ((56, 56), (7, 7), (56, 56)),  # stage 1 at 224
    ((64, 64), (8, 8), (56, 56)),  # stage 1 at 256 with 224 weights
    ((50, 75), (6, 9), (56, 56)),  # stage 1 at 200x300
    ((13, 9), (1, 1), (14, 14)),  # one pooled token
    ((7, 7), (7, 7), (7, 7)),  # stage 4 (full attention)
])
def test_relative_position_table_equals_the_authors(query, key, pretrain):
    index, table = relative_position_table(query, key, pretrain, torch.device("cpu"))
    a_index, a_table = _authors_cpb_tables(query, key, pretrain)
    assert table.shape == a_table.shape  # as many distinct offsets: the MLP does the same work
    assert torch.equal(table[index], a_table[a_index.view(-1)])  # bit-exact MLP inputs per (query, key)


def test_relative_position_table_cache_is_keyed_on_every_input():
    cpu = torch.device("cpu")
    a = relative_position_table((8, 8), (2, 2), (8, 8), cpu)
    assert relative_position_table((8, 8), (2, 2), (8, 8), cpu)[1] is a[1]  # cached
    for other in [((8, 9), (2, 2), (8, 8)), ((8, 8), (2, 3), (8, 8)), ((8, 8), (2, 2), (9, 8))]:
        b = relative_position_table(*other, cpu)
        assert b is not a
        assert not (b[0].shape == a[0].shape and torch.equal(b[1][b[0]], a[1][a[0]]))


@pytest.mark.parametrize("size", [(56, 56), (13, 9), (17, 24), (9, 6)])
def test_aggregated_attention_equals_the_authors_formulation(size):
    torch.manual_seed(0)
    m = _randomise(AggregatedAttention2d(16, 2, sr_ratio=4, pretrain_size=56), seed=1)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _authors_aggregated(m, x, (56, 56)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(7, 7), (4, 9), (1, 1)])
def test_length_scaled_attention_equals_the_authors_formulation(size):
    m = _randomise(LengthScaledAttention2d(16, 4, pretrain_size=7), seed=2)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _authors_full(m, x, (7, 7)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,pooled", [((56, 56), (7, 7)), ((13, 9), (1, 1)), ((2, 3), (1, 1)), ((20, 35), (2, 4))])
def test_pooled_size_follows_the_input_and_is_at_least_one(size, pooled):
    m = AggregatedAttention2d(8, 1, sr_ratio=8)
    assert m.pooled_size(*size) == pooled
    with torch.no_grad():
        out = m(torch.randn(1, *size, 8))
    assert out.shape == (1, *size, 8) and torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient():
    for m in (_randomise(AggregatedAttention2d(16, 2, sr_ratio=2, pretrain_size=14), 3),
              _randomise(LengthScaledAttention2d(16, 2, pretrain_size=7), 4)):
        m(torch.randn(2, 6, 5, 16)).square().mean().backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


def test_tables_built_under_inference_mode_serve_training():
    """The cached tables must not be inference tensors: a later training step reuses them."""
    m = AggregatedAttention2d(8, 2, sr_ratio=2, pretrain_size=11)
    with torch.inference_mode():
        m(torch.randn(1, 11, 10, 8))
    m(torch.randn(1, 11, 10, 8)).sum().backward()
    assert m.cpb.fc1.weight.grad is not None


def test_initial_values_follow_upstream():
    torch.manual_seed(0)
    m = AggregatedAttention2d(32, 4, sr_ratio=2)
    torch.testing.assert_close(F.softplus(m.temperature), torch.full((4, 1, 1), 1 / 0.24))
    assert m.relative_pos_bias_local.shape == (4, 9) and 0 < m.relative_pos_bias_local.std() < 0.001
    assert m.learnable_tokens.shape == (4, 8, 9) and m.learnable_bias.shape == (4, 1, 9)
    assert torch.equal(m.learnable_bias, torch.zeros(4, 1, 9))
    assert m.query_embedding.shape == (4, 1, 8)
    assert m.norm.eps == 1e-5


def test_cpb_module_shape_and_dtype():
    cpb = ContinuousPositionBias(3, hidden=16).to(torch.float64)
    bias = cpb((5, 4), (2, 2), (8, 8))
    assert bias.shape == (3, 20, 4) and bias.dtype == torch.float64


def test_backend_and_repr():
    m = AggregatedAttention2d(16, 2, sr_ratio=4, window_size=5, backend="reference", pretrain_size=(28, 30))
    assert m.backend == "reference"
    assert "window_size=5" in repr(m) and "sr_ratio=4" in repr(m) and "backend=reference" in repr(m)
    assert "pretrain_size=(28, 30)" in repr(m)
    assert "backend=reference" in repr(LengthScaledAttention2d(16, 2, backend="reference"))


@pytest.mark.parametrize("make,match", [
    (lambda: AggregatedAttention2d(16, 3, sr_ratio=2), "multiple of num_heads"),
    (lambda: AggregatedAttention2d(16, 0, sr_ratio=2), "num_heads"),
    (lambda: AggregatedAttention2d(16, 2, sr_ratio=0), "sr_ratio"),
    (lambda: AggregatedAttention2d(16, 2, sr_ratio=2, window_size=4), "window_size"),
    (lambda: AggregatedAttention2d(16, 2, sr_ratio=2, pretrain_size=1), "pretrain_size"),
    (lambda: LengthScaledAttention2d(16, 2, pretrain_size=(7, 7, 7)), "pretrain_size"),
    (lambda: AggregatedAttention2d(16, 2, sr_ratio=2)(torch.randn(1, 4, 4, 8)), r"\[B, H, W, C=16\]"),
    (lambda: LengthScaledAttention2d(16, 2)(torch.randn(1, 16, 4)), r"\[B, H, W, C=16\]"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- ConvolutionalGLU --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(7, 7), (5, 11), (1, 1)])
def test_convglu_equals_the_authors_token_layout(size):
    """Upstream: x, v = fc1(x).chunk(2); x = act(dwconv(x)) * v; fc2(x) on [B, N, C] tokens."""
    torch.manual_seed(0)
    m = _randomise(ConvolutionalGLU(12, 10, out_features=6), seed=5)
    x = torch.randn(2, *size, 12)
    b, (h, w) = 2, size
    a, gate = m.fc1(x.reshape(b, h * w, 12)).chunk(2, dim=-1)
    a = m.dwconv(a.transpose(1, 2).reshape(b, 10, h, w)).flatten(2).transpose(1, 2)
    want = m.fc2(F.gelu(a) * gate).reshape(b, h, w, 6)
    torch.testing.assert_close(m(x), want)


def test_convglu_shapes_and_gradients():
    m = ConvolutionalGLU(8, 5)
    assert m.fc1.out_features == 10 and m.dwconv.groups == 5 and m.fc2.out_features == 8
    x = torch.randn(1, 3, 4, 8, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("make,match", [
    (lambda: ConvolutionalGLU(8, 0), "hidden_features"),
    (lambda: ConvolutionalGLU(8, 4, kernel_size=2), "kernel_size"),
    (lambda: ConvolutionalGLU(8, 4)(torch.randn(1, 8, 3, 3)), r"\[B, H, W, C=8\]"),
])
def test_convglu_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
