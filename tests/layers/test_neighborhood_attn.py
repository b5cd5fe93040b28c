"""The neighborhood attention mixer: shapes for every rank, padding of small inputs, and that it is
exactly projections around attnzoo.kernels.gna."""
import pytest
import torch
import torch.nn.functional as F

from attnzoo.kernels import gna
from attnzoo.layers import NeighborhoodAttention, NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d


def _by_hand(mixer, x):
    b, *spatial, c = x.shape
    q, k, v = mixer.qkv(x).view(b, *spatial, 3, mixer.num_heads, mixer.head_dim).unbind(-3)
    out = gna(q, k, v, mixer.kernel_size, mixer.stride, mixer.dilation, mixer.is_causal, rpb=mixer.rpb, backend="reference")
    return mixer.proj(out.reshape(b, *spatial, c))


@pytest.mark.parametrize("cls,shape,kwargs", [
    (NeighborhoodAttention1d, (2, 13, 32), dict(kernel_size=5, dilation=2)),
    (NeighborhoodAttention2d, (2, 9, 11, 32), dict(kernel_size=3, dilation=(2, 3))),
    (NeighborhoodAttention2d, (1, 10, 10, 32), dict(kernel_size=5, stride=5)),
    (NeighborhoodAttention3d, (1, 4, 6, 7, 32), dict(kernel_size=(1, 3, 3), is_causal=(True, False, False))),
])
def test_mixer_is_projections_around_gna(cls, shape, kwargs):
    torch.manual_seed(0)
    mixer = cls(32, 4, **kwargs)
    x = torch.randn(shape)
    out = mixer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _by_hand(mixer, x))


@pytest.mark.parametrize("spatial", [(3, 5), (1, 1), (6, 20)])
def test_inputs_smaller_than_the_window_are_zero_padded_and_cropped(spatial):
    """Upstream NAT/DiNAT pad to kernel * dilation at the end of each axis (after the norm, before
    qkv) and crop the output back; the mixer does the same."""
    torch.manual_seed(0)
    mixer = NeighborhoodAttention2d(16, 2, kernel_size=7, dilation=(1, 2))
    x = torch.randn(2, *spatial, 16)
    out = mixer(x)
    assert out.shape == x.shape
    need_h, need_w = max(7, spatial[0]), max(14, spatial[1])
    padded = F.pad(x, (0, 0, 0, need_w - spatial[1], 0, need_h - spatial[0]))
    torch.testing.assert_close(out, _by_hand(mixer, padded)[:, : spatial[0], : spatial[1]])


def test_relative_position_bias_is_learned_and_optional():
    torch.manual_seed(0)
    mixer = NeighborhoodAttention2d(16, 2, kernel_size=(3, 5))
    assert mixer.rpb.shape == (2, 5, 9)
    x = torch.randn(1, 6, 8, 16)
    mixer(x).sum().backward()
    assert mixer.rpb.grad is not None and mixer.rpb.grad.abs().sum() > 0
    no_bias = NeighborhoodAttention2d(16, 2, kernel_size=3, rel_pos_bias=False)
    assert no_bias.rpb is None and no_bias(x).shape == x.shape


def test_repr_explains_the_pattern():
    text = repr(NeighborhoodAttention2d(64, 2, kernel_size=7, dilation=4, backend="reference"))
    for part in ("kernel_size=(7, 7)", "dilation=(4, 4)", "backend=reference", "rel_pos_bias=True"):
        assert part in text


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="num_heads"):
        NeighborhoodAttention2d(30, 4)
    with pytest.raises(ValueError, match="spatial_dims"):
        NeighborhoodAttention(32, 4, spatial_dims=4)
    with pytest.raises(ValueError, match="kernel_size"):
        NeighborhoodAttention2d(32, 4, kernel_size=(3, 3, 3))
    mixer = NeighborhoodAttention2d(32, 4)
    with pytest.raises(ValueError, match="channels-last"):
        mixer(torch.randn(1, 32, 8, 8, 1))
    with pytest.raises(ValueError, match="channels-last"):
        mixer(torch.randn(1, 8, 8, 16))
