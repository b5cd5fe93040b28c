"""SHViT's single-head attention mixer: that it is exactly norm / conv-BN projections around
attnzoo.kernels.dense_attention, equals timm's SHSA given the same weights, and works at any size."""
import pytest
import torch
from timm.models.shvit import SHSA

from attnzoo.kernels import BackendUnavailableError
from attnzoo.kernels.dense import dense_attention
from attnzoo.layers.shvit_attn import ConvNorm2d, SingleHeadAttention2d


def _randomise(module, seed):
    """Random weights, BatchNorm statistics and GroupNorm affine, so that every part matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if t.dim() > 1 else 0.2) + (1.0 if name.endswith(("bn.weight", "norm.weight")) else 0.0))
    return module


def _by_hand(mixer, x):
    """The definition, written out in NCHW with explicit matmuls and softmax."""
    b, c, h, w = x.shape
    p, d = mixer.partial_dim, mixer.qk_dim
    x1, x2 = x[:, :p], x[:, p:]
    qkv = mixer.qkv(mixer.pre_norm(x1)).flatten(2)  # [B, 2d + p, N]
    q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
    attn = torch.softmax(q.transpose(1, 2) @ k * d ** -0.5, dim=-1)  # [B, N_q, N_k]
    out = (v @ attn.transpose(1, 2)).view(b, p, h, w)
    return mixer.proj[1](torch.relu(torch.cat([out, x2], dim=1)))  # proj = Sequential(ReLU, conv-BN)


@pytest.mark.parametrize("dim,partial_dim,qk_dim,size", [
    (48, 16, 16, (7, 7)),
    (40, 40, 8, (5, 9)),  # attention on every channel
    (36, 7, 4, (1, 1)),  # a single token
    (32, 12, 16, (3, 11)),
])
def test_mixer_is_the_definition(dim, partial_dim, qk_dim, size):
    torch.manual_seed(0)
    mixer = _randomise(SingleHeadAttention2d(dim, partial_dim, qk_dim), seed=1).eval().double()
    x = torch.randn(2, dim, *size, dtype=torch.float64)
    with torch.no_grad():
        out = mixer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _by_hand(mixer, x), rtol=1e-10, atol=1e-10)


def test_mixer_calls_the_dense_op(monkeypatch):
    import attnzoo.layers.shvit_attn as module

    calls = []

    def spy(q, k, v, scale=None, backend=None):
        calls.append((q.shape, k.shape, v.shape, scale, backend))
        return dense_attention(q, k, v, scale=scale, backend=backend)

    monkeypatch.setattr(module, "dense_attention", spy)
    mixer = SingleHeadAttention2d(64, 20, 16, backend="reference").eval()
    mixer(torch.randn(2, 64, 5, 6))
    assert calls == [((2, 5, 6, 1, 16), (2, 5, 6, 1, 16), (2, 5, 6, 1, 20), 0.25, "reference")]


@pytest.mark.parametrize("train", [False, True])
def test_matches_timm_shsa_with_the_same_weights(train):
    torch.manual_seed(0)
    theirs = _randomise(SHSA(64, 16, 24), seed=2)
    ours = SingleHeadAttention2d(64, 24, 16)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # timm's names and layouts, both ways
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.train(train)
    ours.train(train)
    x = torch.randn(2, 64, 6, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    mixer = SingleHeadAttention2d(32, 16, 8).eval()  # eval: train-mode BN cancels the norm bias exactly
    mixer(torch.randn(2, 32, 4, 5)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())


def test_conv_norm_keys_and_padding():
    m = ConvNorm2d(8, 16, 3, stride=2, groups=8, bn_weight_init=0.0)
    assert set(m.state_dict()) == {"c.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert m.c.bias is None and m.c.padding == (1, 1) and not m.bn.weight.detach().any()
    assert m(torch.randn(1, 8, 7, 9)).shape == (1, 16, 4, 5)


def test_repr_and_backend():
    mixer = SingleHeadAttention2d(64, 16, backend="reference")
    text = repr(mixer)
    for part in ("dim=64", "partial_dim=16", "qk_dim=16", "heads=1", "backend=reference"):
        assert part in text
    with pytest.raises(BackendUnavailableError):
        SingleHeadAttention2d(64, 16, backend="triton")(torch.randn(1, 64, 3, 3))


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="partial_dim"):
        SingleHeadAttention2d(32, 33)
    with pytest.raises(ValueError, match="partial_dim"):
        SingleHeadAttention2d(32, 0)
    with pytest.raises(ValueError, match="qk_dim"):
        SingleHeadAttention2d(32, 16, 0)
    mixer = SingleHeadAttention2d(32, 16)
    with pytest.raises(ValueError, match="NCHW"):
        mixer(torch.randn(1, 8, 8, 32))  # channels-last
    with pytest.raises(ValueError, match="NCHW"):
        mixer(torch.randn(1, 32, 8))
