"""The halo attention mixer: identical to timm's HaloAttn at the sizes timm accepts (same weights),
padding of other sizes, shapes, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn

from attnzoo.layers.halo_attn import HaloAttention2d

CONFIGS = [
    dict(dim=32, num_heads=4, block_size=4, halo_size=1),
    dict(dim=32, num_heads=4, block_size=4, halo_size=2, stride=2),  # strided queries
    dict(dim=48, num_heads=8, block_size=7, halo_size=2, stride=2, qk_ratio=0.33),  # avg-pool path (haloregnetz_b)
    dict(dim=32, num_heads=2, block_size=4, halo_size=1, dim_head=8, qkv_bias=True),
    dict(dim=32, num_heads=2, dim_out=16, block_size=4, halo_size=1, stride=2, avg_down=True),
]


def _twins(cfg, seed=0):
    torch.manual_seed(seed)
    ours = HaloAttention2d(**cfg).double()
    timm_cfg = dict(cfg)
    theirs = HaloAttn(timm_cfg.pop("dim"), **timm_cfg).double()
    with torch.no_grad():
        if cfg.get("qkv_bias"):
            ours.q.bias.normal_()
            ours.kv.bias.normal_()
    # timm's parameter names and layouts: the state dict moves as it is
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _run_timm(theirs, x_nhwc):
    return theirs(x_nhwc.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_timm_at_divisible_sizes(cfg):
    ours, theirs = _twins(cfg)
    b = cfg["block_size"]
    x = torch.randn(2, 2 * b, 3 * b, cfg["dim"], dtype=torch.float64)
    out = ours(x)
    torch.testing.assert_close(out, _run_timm(theirs, x), rtol=1e-12, atol=1e-12)
    assert out.shape[-1] == ours.dim_out


def test_odd_divisible_size_keeps_timm_floor_on_the_avg_pool_path():
    ours, theirs = _twins(CONFIGS[2])
    x = torch.randn(1, 7, 21, 48, dtype=torch.float64)
    out = ours(x)
    assert out.shape == (1, 3, 10, 48)
    torch.testing.assert_close(out, _run_timm(theirs, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if not c.get("qkv_bias")], ids=str)
@pytest.mark.parametrize("size", [(5, 9), (1, 1), (13, 6)])
def test_other_sizes_are_zero_padded_and_cropped(cfg, size):
    """Without projection biases, zero-padding the input gives zero keys and values, so timm on the
    input padded to the block multiple must agree with ours on the kept positions."""
    ours, theirs = _twins(cfg)
    b, stride = cfg["block_size"], cfg.get("stride", 1)
    h, w = size
    x = torch.randn(2, h, w, cfg["dim"], dtype=torch.float64)
    out = ours(x)
    assert out.shape == (2, math.ceil(h / stride), math.ceil(w / stride), ours.dim_out)
    padded = F.pad(x, (0, 0, 0, -w % b, 0, -h % b))
    want = _run_timm(theirs, padded)[:, : out.shape[1], : out.shape[2]]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_backward_and_backend_plumbing():
    mixer = HaloAttention2d(16, 2, block_size=4, halo_size=1, backend="reference")
    x = torch.randn(1, 6, 10, 16, requires_grad=True)
    mixer(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in mixer.parameters())
    assert "backend=reference" in repr(mixer) and "halo_size=1" in repr(mixer)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=30, num_heads=4), "multiple of num_heads"),
    (dict(dim=32, num_heads=4, stride=3), "stride must be 1 or 2"),
    (dict(dim=32, num_heads=4, block_size=0), "block_size must be >= 1"),
])
def test_bad_construction_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HaloAttention2d(**kwargs)


@pytest.mark.parametrize("shape", [(1, 8, 8, 12), (1, 16, 8, 8), (8, 8, 16)])
def test_bad_input_raises_value_error(shape):
    mixer = HaloAttention2d(16, 2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match=r"\[B, H, W, C=16\]"):
        mixer(torch.randn(shape))
