"""DaViT's mixers: window attention is exactly a window partition (with DaViT's zero padding
before qkv) around attnzoo.kernels.gna; channel attention is projections around
attnzoo.kernels.channel_attention; ConvPosEnc is a residual depthwise convolution."""
import pytest
import torch
import torch.nn.functional as F

from attnzoo.kernels.channel_attention import channel_attention
from attnzoo.layers.davit_attn import ChannelAttention, ConvPosEnc, WindowAttention, WindowAttention2d


def _windows_by_hand(mixer, x):
    """Pad the (normed) input with zeros to window multiples, cut windows, dense softmax
    attention inside each window, merge, crop: timm's SpatialBlock / WindowAttention."""
    b, h, w, c = x.shape
    wh, ww = mixer.window_size
    xp = F.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))
    hp, wp = xp.shape[1:3]
    win = xp.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)
    q, k, v = mixer.qkv(win).view(win.shape[0], wh * ww, 3, mixer.num_heads, mixer.head_dim).permute(2, 0, 3, 1, 4)
    attn = (q * mixer.head_dim ** -0.5 @ k.transpose(-1, -2)).softmax(-1)
    out = mixer.proj((attn @ v).transpose(1, 2).reshape(win.shape))
    out = out.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return out[:, :h, :w]


@pytest.mark.parametrize("spatial,window", [((14, 21), 7), ((9, 13), 7), ((3, 5), 7), ((1, 1), 7), ((10, 6), (4, 3))])
def test_window_attention_is_a_padded_window_partition(spatial, window):
    torch.manual_seed(0)
    mixer = WindowAttention2d(24, 3, window)
    with torch.no_grad():
        mixer.qkv.bias.normal_()  # padded positions carry the qkv bias into the last windows
    x = torch.randn(2, *spatial, 24)
    out = mixer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _windows_by_hand(mixer, x), rtol=1e-5, atol=1e-5)


def test_window_attention_other_ranks():
    torch.manual_seed(0)
    for rank, shape in ((1, (2, 11, 16)), (3, (1, 3, 5, 4, 16))):
        mixer = WindowAttention(16, 2, 3, spatial_dims=rank)
        x = torch.randn(shape)
        assert mixer(x).shape == x.shape


def test_channel_attention_is_projections_around_the_op():
    torch.manual_seed(0)
    mixer = ChannelAttention(32, 4)
    x = torch.randn(2, 5, 7, 32)
    q, k, v = mixer.qkv(x).view(2, 5, 7, 3, 4, 8).unbind(-3)
    want = mixer.proj(channel_attention(q, k, v, backend="reference").reshape(x.shape))
    torch.testing.assert_close(mixer(x), want)
    assert mixer(x.view(2, 35, 32)).shape == (2, 35, 32)
    torch.testing.assert_close(mixer(x.view(2, 35, 32)), want.view(2, 35, 32))


def test_conv_pos_enc_is_a_residual_depthwise_conv():
    torch.manual_seed(0)
    cpe = ConvPosEnc(8)
    x = torch.randn(2, 5, 6, 8)
    want = x + F.conv2d(x.permute(0, 3, 1, 2), cpe.proj.weight, cpe.proj.bias, padding=1, groups=8).permute(0, 2, 3, 1)
    torch.testing.assert_close(cpe(x), want)
    assert isinstance(ConvPosEnc(8, act=True).act, torch.nn.GELU)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for mixer in (WindowAttention2d(16, 2, 7), ChannelAttention(16, 2), ConvPosEnc(16)):
        mixer(torch.randn(1, 9, 8, 16)).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())


def test_repr_explains_the_pattern():
    text = repr(WindowAttention2d(64, 2, 7, backend="reference"))
    assert "window_size=(7, 7)" in text and "backend=reference" in text
    text = repr(ChannelAttention(64, 2, backend="reference"))
    assert "groups=2" in text and "head_dim=32" in text and "backend=reference" in text


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="num_heads"):
        WindowAttention2d(30, 4)
    with pytest.raises(ValueError, match="num_heads"):
        ChannelAttention(30, 4)
    with pytest.raises(ValueError, match="window_size"):
        WindowAttention2d(32, 4, (7, 7, 7))
    with pytest.raises(ValueError, match="window_size"):
        WindowAttention2d(32, 4, 0)
    with pytest.raises(ValueError, match="spatial_dims"):
        WindowAttention(32, 4, spatial_dims=4)
    with pytest.raises(ValueError, match="kernel_size"):
        ConvPosEnc(8, kernel_size=2)
    with pytest.raises(ValueError, match="channels-last"):
        WindowAttention2d(32, 4)(torch.randn(1, 32, 8, 8, 1))
    with pytest.raises(ValueError, match="channels-last"):
        ChannelAttention(32, 4)(torch.randn(1, 8, 16))
    with pytest.raises(ValueError, match="channels-last"):
        ConvPosEnc(8)(torch.randn(1, 8, 5, 5))
