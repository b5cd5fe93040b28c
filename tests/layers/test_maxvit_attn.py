"""MaxViT's block / grid attention mixers and MBConv: against timm's own partition attention
(window_partition / grid_partition + AttentionCl with each of its three bias modules) at sizes
timm accepts, padding semantics at sizes it rejects, bias-layout conversion, bad inputs."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from timm.layers import RelPosBias, RelPosBiasTf, RelPosMlp
from timm.models.maxxvit import AttentionCl, MaxxVitConvCfg, MbConvBlock, grid_partition, grid_reverse, window_partition, window_reverse

from attnzoo.layers.maxvit_attn import (
    BlockAttention2d, GridAttention2d, PartitionAttention2d, qkv_from_head_first, rpb_from_timm, rpb_to_timm,
)
from attnzoo.layers.mbconv import MBConv


def _timm_mixer(kind, dim, heads, size, head_first):
    cls = {"tf": RelPosBiasTf, "swin": RelPosBias, "mlp": partial(RelPosMlp, hidden_dim=64)}[kind]
    attn = AttentionCl(dim, dim, dim_head=dim // heads, head_first=head_first, rel_pos_cls=partial(cls, window_size=size)).eval()
    with torch.no_grad():
        for n, p in attn.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(std=1.0)  # large enough that a wrong index shows
    return attn


def _timm_partition_attn(attn, x, size, partition):
    part, rev = (window_partition, window_reverse) if partition == "block" else (grid_partition, grid_reverse)
    return rev(attn(part(x, size)), size, x.shape[1:3])


def _ours_from(attn, kind, dim, heads, size, partition, head_first):
    # timm's parameter names and layouts: its state dict loads as it is
    ours = PartitionAttention2d(dim, heads, size, partition=partition, rel_pos="mlp" if kind == "mlp" else "table", rel_pos_mlp_dim=64,
                                table_layout="swin" if kind == "swin" else "tf", head_first=head_first).eval()
    ours.load_state_dict(attn.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("partition", ["block", "grid"])
@pytest.mark.parametrize("kind,head_first,size,hw", [
    ("tf", False, (4, 4), (8, 12)),
    ("swin", True, (3, 3), (9, 6)),
    ("mlp", True, (4, 4), (8, 16)),
    ("tf", False, (2, 3), (6, 9)),  # non-square partition
])
def test_matches_timm_partition_attention(partition, kind, head_first, size, hw):
    torch.manual_seed(0)
    dim, heads = 32, 4
    attn = _timm_mixer(kind, dim, heads, size, head_first)
    ours = _ours_from(attn, kind, dim, heads, size, partition, head_first)
    x = torch.randn(2, *hw, dim)
    with torch.no_grad():
        ref = _timm_partition_attn(attn, x, size, partition)
        out = ours(x)
    assert (out - ref).norm() / ref.norm() < 1e-5


def test_grid_dilation_is_taken_from_the_input_at_run_time():
    """The same module serves every resolution: members of a grid cell are H/G, W/G apart."""
    torch.manual_seed(0)
    attn = _timm_mixer("tf", 32, 2, (4, 4), False)
    ours = _ours_from(attn, "tf", 32, 2, (4, 4), "grid", False)
    for hw in [(4, 4), (8, 4), (12, 20)]:
        x = torch.randn(1, *hw, 32)
        with torch.no_grad():
            ref = _timm_partition_attn(attn, x, (4, 4), "grid")
            assert (ours(x) - ref).norm() / ref.norm() < 1e-5


@pytest.mark.parametrize("cls", [BlockAttention2d, GridAttention2d])
@pytest.mark.parametrize("hw", [(5, 7), (1, 1), (9, 13), (4, 17)])
def test_other_sizes_are_zero_padded_to_the_partition_and_cropped(cls, hw):
    torch.manual_seed(0)
    mixer = cls(16, 2, 4).eval()
    x = torch.randn(2, *hw, 16)
    hp, wp = -(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4
    with torch.no_grad():
        out = mixer(x)
        ref = mixer(F.pad(x, (0, 0, 0, wp - hw[1], 0, hp - hw[0])))[:, : hw[0], : hw[1]]
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("cls", [BlockAttention2d, GridAttention2d])
@pytest.mark.parametrize("head_first", [False, True])
@pytest.mark.parametrize("hw", [(8, 12), (5, 7)])
def test_partition_first_equals_the_full_map_path(cls, head_first, hw):
    """Off CUDA the mixer partitions x before the qkv projection; on CUDA it hands the full map to
    gna (the Triton kernel reads q, k, v in place). Both orders compute the same function: the
    full-map path is run here through its own pieces, on fresh random data, outputs and grads."""
    torch.manual_seed(0)
    mixer = cls(16, 2, 4, head_first=head_first, rel_pos="mlp", rel_pos_mlp_dim=8).eval()
    x = torch.randn(2, *hw, 16, requires_grad=True)
    hp, wp = -(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4
    dilation = (1, 1) if cls is BlockAttention2d else (hp // 4, wp // 4)
    out = mixer(x)
    full = mixer.proj(mixer._attend(F.pad(x, (0, 0, 0, wp - hw[1], 0, hp - hw[0])), dilation))[:, : hw[0], : hw[1]]
    grad = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_full,) = torch.autograd.grad(full, x, grad)
    assert (out - full).norm() / full.norm() < 1e-6
    assert (gx - gx_full).norm() / gx_full.norm() < 1e-6


def test_gradients_reach_every_parameter_of_both_bias_kinds():
    torch.manual_seed(0)
    for rel_pos in ("table", "mlp"):
        mixer = GridAttention2d(16, 2, 3, rel_pos=rel_pos, rel_pos_mlp_dim=8)
        mixer(torch.randn(1, 7, 5, 16)).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())


def test_rpb_from_timm_layouts():
    torch.manual_seed(0)
    tf = torch.randn(2, 5, 7)
    assert rpb_from_timm(tf, (3, 4)) is tf
    swin = torch.randn(5 * 7, 2)
    got = rpb_from_timm(swin, (3, 4))
    # Swin index: (qy - ky + 2) * 7 + (qx - kx + 3); gna index: (ky - qy + 2, kx - qx + 3)
    for dy in range(-2, 3):
        for dx in range(-3, 4):
            assert torch.equal(got[:, dy + 2, dx + 3], swin[(-dy + 2) * 7 + (-dx + 3)])
    with pytest.raises(ValueError, match="table must be"):
        rpb_from_timm(torch.randn(2, 7, 7), (3, 4))
    assert torch.equal(rpb_to_timm(got, "swin"), swin) and rpb_to_timm(tf, "tf") is tf  # the inverse


def test_qkv_from_head_first_reorders_rows():
    heads, hd = 2, 3
    w = torch.arange(3 * heads * hd).float()
    got = qkv_from_head_first(w, heads).view(3, heads, hd)
    assert torch.equal(got[1, 1], w.view(heads, 3, hd)[1, 1])


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="partition must be"):
        PartitionAttention2d(16, 2, 4, partition="diagonal")
    with pytest.raises(ValueError, match="partition_size"):
        BlockAttention2d(16, 2, 0)
    with pytest.raises(ValueError, match="rel_pos"):
        BlockAttention2d(16, 2, 4, rel_pos="sinusoid")
    with pytest.raises(ValueError, match="table_layout"):
        BlockAttention2d(16, 2, 4, table_layout="row-major")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BlockAttention2d(15, 2, 4)
    mixer = GridAttention2d(16, 2, 4)
    with pytest.raises(ValueError, match=r"\[B, H, W, C=16\]"):
        mixer(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, H, W, C=16\]"):
        mixer(torch.randn(8, 8, 16))
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        MBConv(8, 8, stride=3)
    with pytest.raises(ValueError, match="padding"):
        MBConv(8, 8, padding="valid")


def test_repr_names_the_pattern_and_backend():
    text = repr(GridAttention2d(16, 2, 4, backend="reference"))
    assert "partition='grid'" in text and "partition_size=(4, 4)" in text and "backend=reference" in text


@pytest.mark.parametrize("tf,stride,hw", [(True, 2, (14, 14)), (True, 2, (13, 9)), (False, 2, (14, 10)), (False, 1, (7, 7))])
def test_mbconv_matches_timm(tf, stride, hw):
    """Same weights as timm's MbConvBlock (TF port: 'same' padding, output-width expansion; timm's
    own: symmetric padding, input-width expansion), including odd sizes with TF padding."""
    torch.manual_seed(0)
    if tf:
        cfg = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")
        ours = MBConv(16, 32, stride, act_layer="gelu_tanh", norm_eps=1e-3, padding="same")
    else:
        cfg = MaxxVitConvCfg(expand_output=False, output_bias=False, attn_ratio=1 / 16, act_layer="silu")
        ours = MBConv(16, 32 if stride == 2 else 16, stride, expand_output=False, se_ratio=1 / 16, act_layer="silu", output_bias=False)
    ref = MbConvBlock(16, 32 if (tf or stride == 2) else 16, stride=stride, cfg=cfg).eval()
    with torch.no_grad():
        for n, b in ref.named_buffers():
            if n.endswith("running_mean"):
                b.normal_(std=0.1)
            elif n.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    ours.eval()
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_mbconv_odd_sizes_halve_with_ceil():
    for padding in ("", "same"):
        out = MBConv(8, 16, 2, padding=padding).eval()(torch.randn(1, 8, 7, 9))
        assert out.shape == (1, 16, 4, 5)
