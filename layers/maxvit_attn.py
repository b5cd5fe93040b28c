"""MaxViT's multi-axis attention mixers (block and grid attention) and their relative position
biases, on top of ``attnzoo.kernels.gna``.

Both mixers are gna with ``kernel_size == stride``, so every query attends to exactly the other
members of its partition (blocked attention; gna's tile is the window, nothing is wasted):

* block attention: non-overlapping ``P x P`` windows: ``gna(kernel=P, stride=P, dilation=1)``.
* grid attention: a ``G x G`` grid whose members are ``H / G`` (and ``W / G``) apart:
  ``gna(kernel=G, stride=G, dilation=(H / G, W / G))``. Inside one dilation group the positions
  ``r, r + H/G, r + 2 H/G, ...`` are consecutive, so the group is one window of ``G`` members and
  the bias offsets are counted in grid steps, as in timm's ``grid_partition``.

Off CUDA (or with ``backend='reference'``) the mixer partitions x into blocks / grid groups before
the qkv projection, as timm does, and gives gna one partition per image: the reference then copies
x once instead of q, k and v. On CUDA the full map goes to gna, whose Triton kernel reads q, k, v
in place. Both orders compute the same function.

Inputs whose height / width is not a multiple of the partition are zero-padded at the bottom /
right (after the norm, before qkv, as Swin does for windows) and cropped back; padded keys take
part in the softmax like any other key (gna has no key mask). At sizes that are multiples, this is
exactly timm's partition / reverse.

Relative position bias, in gna's convention: ``rpb[h, dy + Ph - 1, dx + Pw - 1]`` is added to the
logit of a key ``(dy, dx)`` steps below / right of the query, ``rpb: [heads, 2Ph - 1, 2Pw - 1]``.
Two sources, held in ``rel_pos`` with timm's parameter names and layouts (so an az_ MaxViT's state
dict is its timm twin's):

* a learned table (``rel_pos='table'``): ``rel_pos.relative_position_bias_table`` in timm's TF
  layout (``table_layout='tf'``, already gna's) or Swin layout (``'swin'``, the ``_rw_`` models);
  gna's table is derived from it at every call (``rpb_from_timm``: a transpose and flip of a few
  hundred numbers, so autograd and compile see one graph and nothing goes stale);
* a continuous bias (``rel_pos='mlp'``): a 2-layer MLP (``rel_pos.mlp``, ReLU, dropout 0.125 on the
  hidden layer) over log-spaced offsets ``sign(d) * log(1 + |d|)`` per axis, evaluated on the
  ``(2Ph - 1) x (2Pw - 1)`` offsets: still a function of the offset alone, so it yields a table.

The qkv projection's output channels are (q|k|v, heads, head_dim), or with ``head_first=True``
(timm's ``_rw_`` / ``rmlp`` models) (heads, q|k|v, head_dim); the forward reads either layout.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import register_notrace_module
from timm.layers import Mlp

from attnzoo.kernels import gna

from ._padding import crop_spatial, pad_spatial_end, padded_blocks, round_up

__all__ = [
    "PartitionAttention2d", "BlockAttention2d", "GridAttention2d", "RelPosBiasTable", "RelPosBiasMlp",
    "relative_log_offsets", "rpb_from_timm", "rpb_to_timm", "qkv_from_head_first",
]

IntOrPair = Union[int, Sequence[int]]


def _pair(value: IntOrPair, name: str) -> Tuple[int, int]:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be an int >= 1 or a pair of them, got {value!r}")
    return values


def relative_log_offsets(partition_size: Tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """``[2Ph - 1, 2Pw - 1, 2]``: per axis ``sign(d) * log(1 + |d|)`` of the offset ``d`` at each
    gna bias index (index ``i`` is the key-minus-query offset ``i - (P - 1)``).

    timm's RelPosMlp (mode 'cr') evaluates its MLP on query-minus-key offsets; the negated
    offsets here make the same MLP weights give gna's key-minus-query table directly.
    """
    axes = [torch.arange(p - 1, -p, -1, device=device, dtype=torch.float32) for p in partition_size]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    # timm's mode 'cr' coordinates are query - key = -(key - query)
    return (torch.sign(offsets) * torch.log1p(offsets.abs())).to(dtype or torch.float32)


def rpb_from_timm(table: torch.Tensor, partition_size: Tuple[int, int]) -> torch.Tensor:
    """A timm relative position bias table -> gna's ``[heads, 2Ph - 1, 2Pw - 1]``.

    * ``RelPosBiasTf`` (the TF port, maxvit_*_tf_*): ``[heads, 2Ph - 1, 2Pw - 1]`` indexed by
      ``key - query + P - 1`` per axis (its one-hot lookup is ``v = m - n + P - 1``): already
      gna's layout, returned unchanged.
    * ``RelPosBias`` (Swin layout, maxvit_*_rw_*): ``[(2Ph - 1) * (2Pw - 1), heads]`` indexed by
      ``(qy - ky + Ph - 1) * (2Pw - 1) + (qx - kx + Pw - 1)``: query minus key, so both axes are
      flipped and heads move first.
    """
    ph, pw = partition_size
    vocab = (2 * ph - 1, 2 * pw - 1)
    if table.dim() == 3 and tuple(table.shape[1:]) == vocab:
        return table
    if table.dim() == 2 and table.shape[0] == vocab[0] * vocab[1]:
        return table.t().reshape(table.shape[1], *vocab).flip(1, 2).contiguous()
    raise ValueError(
        f"table must be [heads, {vocab[0]}, {vocab[1]}] (TF layout) or [{vocab[0] * vocab[1]}, heads] "
        f"(Swin layout) for partition {partition_size}, got {tuple(table.shape)}"
    )


def rpb_to_timm(rpb: torch.Tensor, layout: str) -> torch.Tensor:
    """gna's ``[heads, 2Ph - 1, 2Pw - 1]`` -> timm's table in ``layout`` ('tf' or 'swin'); the
    inverse of ``rpb_from_timm``."""
    if layout == "tf":
        return rpb
    if layout == "swin":
        return rpb.flip(1, 2).reshape(rpb.shape[0], -1).t().contiguous()
    raise ValueError(f"layout must be 'tf' or 'swin', got {layout!r}")


class RelPosBiasTable(nn.Module):
    """A learned bias table ``relative_position_bias_table`` in timm's ``layout``: 'tf'
    ``[heads, 2Ph - 1, 2Pw - 1]`` or 'swin' ``[(2Ph - 1) * (2Pw - 1), heads]``. Calling it gives
    gna's ``[heads, 2Ph - 1, 2Pw - 1]``."""

    def __init__(self, num_heads: int, partition_size: Tuple[int, int], layout: str = "tf", device=None, dtype=None):
        super().__init__()
        if layout not in ("tf", "swin"):
            raise ValueError(f"table_layout must be 'tf' or 'swin', got {layout!r}")
        self.partition_size = partition_size
        self.layout = layout
        vocab = tuple(2 * p - 1 for p in partition_size)
        shape = (num_heads, *vocab) if layout == "tf" else (vocab[0] * vocab[1], num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        nn.init.normal_(self.relative_position_bias_table, std=0.02)

    def forward(self) -> torch.Tensor:
        return rpb_from_timm(self.relative_position_bias_table, self.partition_size)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}"


class RelPosBiasMlp(nn.Module):
    """timm's RelPosMlp ('cr' mode) as a table: ``mlp`` over log-spaced offsets (see
    ``relative_log_offsets``). Calling it gives gna's ``[heads, 2Ph - 1, 2Pw - 1]``."""

    def __init__(self, num_heads: int, partition_size: Tuple[int, int], hidden_dim: int = 512, device=None, dtype=None):
        super().__init__()
        self.partition_size = partition_size
        self.mlp = Mlp(2, hidden_dim, num_heads, act_layer=nn.ReLU, drop=(0.125, 0.0), device=device, dtype=dtype)

    def forward(self) -> torch.Tensor:
        w = self.mlp.fc1.weight
        offsets = relative_log_offsets(self.partition_size, device=w.device, dtype=w.dtype)
        return self.mlp(offsets).permute(2, 0, 1)


def qkv_from_head_first(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv weight / bias whose output channels are ordered (heads, q|k|v, head_dim), as timm's
    ``head_first=True`` attention, -> this module's (q|k|v, heads, head_dim) order."""
    rest = t.shape[1:]
    head_dim = t.shape[0] // (3 * num_heads)
    return t.reshape(num_heads, 3, head_dim, *rest).transpose(0, 1).reshape(t.shape)


def _partition(x: torch.Tensor, ph: int, pw: int, grid: bool) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * n, ph, pw, C]``: ``ph x pw`` blocks, or (``grid``) the groups of
    a ``ph x pw`` grid whose members are ``H / ph`` and ``W / pw`` apart (timm's grid_partition)."""
    b, hp, wp, c = x.shape
    if grid:
        x = x.view(b, ph, hp // ph, pw, wp // pw, c).permute(0, 2, 4, 1, 3, 5)
    else:
        x = x.view(b, hp // ph, ph, wp // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ph, pw, c)


def _unpartition(x: torch.Tensor, b: int, hp: int, wp: int, grid: bool) -> torch.Tensor:
    """Inverse of ``_partition``: ``[B * n, ph, pw, C]`` -> ``[B, H, W, C]``."""
    _, ph, pw, c = x.shape
    x = x.view(b, hp // ph, wp // pw, ph, pw, c)
    x = x.permute(0, 3, 1, 4, 2, 5) if grid else x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, c)


def _partition_index(size, part: int, grid: bool):
    """For a symbolic padded axis of ``size`` positions (``torch.export``): ``[n', part]``
    positions of the members of each partition, and for each position its partition and member
    (``[size]`` each), from ``arange``. Blocks: ``n' = size / part`` (``padded_blocks`` makes it
    >= 2); grid groups: ``n' = size / part + 1``, the last a repeat of the one before (never read
    back), so that the partition count is provably >= 2 even where one grid group covers the map."""
    n = size // part
    device = None
    if grid:
        groups = torch.arange(n + 1, device=device).clamp_max(n - 1)[:, None]
        members = torch.arange(part, device=device)[None, :] * n + groups
        y = torch.arange(size, device=device)
        return members, y - (y // n) * n, y // n  # y % n, written for ONNX (no remainder by a symbolic scalar)
    members = torch.arange(n, device=device)[:, None] * part + torch.arange(part, device=device)[None, :]
    y = torch.arange(size, device=device)
    return members, y // part, y - (y // part) * part


def _partition_symbolic(x: torch.Tensor, ph: int, pw: int, grid: bool):
    """``_partition`` for symbolic sizes: ``[B, H, W, C]`` -> ``[B * n * m, ph, pw, C]`` by a
    gather whose index is built from the sizes (a reshape that splits H into ``(ph, H / ph)``
    makes torch decide whether ``H / ph`` is 1: a guard on the example size), and what
    ``_unpartition_symbolic`` needs to put the partitions back."""
    b, hp, wp, c = x.shape
    rows, row_part, row_member = _partition_index(hp, ph, grid)
    cols, col_part, col_member = _partition_index(wp, pw, grid)
    rows, cols = rows.to(x.device), cols.to(x.device)
    parts = x[:, rows[:, None, :, None], cols[None, :, None, :]]  # [B, n, m, ph, pw, C]
    n, m = parts.shape[1], parts.shape[2]
    back = (n, m, row_part.to(x.device), row_member.to(x.device), col_part.to(x.device), col_member.to(x.device))
    return parts.reshape(b * n * m, ph, pw, c), back


def _unpartition_symbolic(x: torch.Tensor, b, back) -> torch.Tensor:
    """Inverse of ``_partition_symbolic``: ``[B * n * m, ph, pw, C]`` -> ``[B, H, W, C]``."""
    n, m, row_part, row_member, col_part, col_member = back
    _, ph, pw, c = x.shape
    x = x.reshape(b, n, m, ph, pw, c)
    return x[:, row_part[:, None], col_part[None, :], row_member[:, None], col_member[None, :]]


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class PartitionAttention2d(nn.Module):
    """Multi-head attention inside the partitions of ``[B, H, W, C]`` (channels-last).

    Args:
        dim: channels C (a multiple of ``num_heads``).
        num_heads: attention heads.
        partition_size: block size P (``'block'``) or grid size G (``'grid'``), int or (h, w).
        partition: ``'block'`` (P x P windows) or ``'grid'`` (G x G dilated grid).
        rel_pos: ``'table'`` (``RelPosBiasTable``), ``'mlp'`` (``RelPosBiasMlp``) or None.
        rel_pos_mlp_dim: hidden width of the bias MLP.
        table_layout: the table's timm layout, ``'tf'`` or ``'swin'``.
        head_first: qkv output channels ordered (heads, q|k|v, head_dim), as timm's ``_rw_`` models.
        qkv_bias: bias in the qkv and output projections.
        backend: gna backend for this module (None: dispatch rule; see attnzoo.kernels).

    Parameters are named and laid out as timm's ``AttentionCl`` (``qkv``, ``rel_pos.*``, ``proj``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        partition_size: IntOrPair = 7,
        *,
        partition: str = "block",
        rel_pos: Optional[str] = "table",
        rel_pos_mlp_dim: int = 512,
        table_layout: str = "tf",
        head_first: bool = False,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if partition not in ("block", "grid"):
            raise ValueError(f"partition must be 'block' or 'grid', got {partition!r}")
        if rel_pos not in ("table", "mlp", None):
            raise ValueError(f"rel_pos must be 'table', 'mlp' or None, got {rel_pos!r}")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads}) >= 1")
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.partition = partition
        self.partition_size = _pair(partition_size, "partition_size")
        self.rel_pos_type = rel_pos
        self.backend = backend
        self.head_first = bool(head_first)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.rel_pos: Optional[nn.Module] = None
        if rel_pos == "table":
            self.rel_pos = RelPosBiasTable(num_heads, self.partition_size, table_layout, **dd)
        elif rel_pos == "mlp":
            self.rel_pos = RelPosBiasMlp(num_heads, self.partition_size, rel_pos_mlp_dim, **dd)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_position_bias(self) -> Optional[torch.Tensor]:
        """``[heads, 2Ph - 1, 2Pw - 1]`` in gna's convention, or None."""
        return self.rel_pos() if self.rel_pos is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects channels-last [B, H, W, C={self.dim}] input, got shape {tuple(x.shape)}"
            )
        b, h, w, _ = x.shape
        ph, pw = self.partition_size
        grid = self.partition == "grid"
        if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):
            # torch.export with a dynamic size: blocks pad to >= 2 (an extra block of padding
            # attends only to itself); a grid's groups depend on the padded size, so it pads
            # exactly as eager and the partition adds a spare group instead (_partition_index)
            hp, wp = (round_up(h, ph), round_up(w, pw)) if grid else (padded_blocks(h, ph), padded_blocks(w, pw))
            x = pad_spatial_end(x, (hp - h, wp - w))
            xs, back = _partition_symbolic(x, ph, pw, grid)
            out = _unpartition_symbolic(self.proj(self._attend(xs, (1, 1))), b, back)
            return self.proj_drop(crop_spatial(out, (h, w)))
        hp, wp = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        x = pad_spatial_end(x, (hp - h, wp - w))
        if x.device.type not in ("cuda", "meta") or self.backend == "reference":
            # The reference gna tiles q, k and v (three channel-sized copies); partitioning x once
            # before the projection, as timm does, copies a third of that and gives gna one
            # partition per image. The Triton kernel reads q, k, v in place, so CUDA keeps the
            # full map; so does a meta run (shapes only), so that it records a GPU's gna calls
            # (the compile gate, attnzoo kernels).
            xs = _partition(x, ph, pw, grid)
            out = self._attend(xs, (1, 1))
            return self.proj_drop(crop_spatial(_unpartition(self.proj(out), b, hp, wp, grid), (h, w)))
        out = self._attend(x, (1, 1) if not grid else (hp // ph, wp // pw))
        return self.proj_drop(self.proj(crop_spatial(out, (h, w))))

    def _attend(self, x: torch.Tensor, dilation: Tuple[int, int]) -> torch.Tensor:
        """qkv projection and gna over ``[B, H, W, C]`` (partitions of ``partition_size``)."""
        b, hp, wp, _ = x.shape
        if self.head_first:  # timm's _rw_ layout: (heads, q|k|v, head_dim)
            q, k, v = self.qkv(x).view(b, hp, wp, self.num_heads, 3, self.head_dim).unbind(4)
        else:
            q, k, v = self.qkv(x).view(b, hp, wp, 3, self.num_heads, self.head_dim).unbind(3)
        out = gna(
            q, k, v, kernel_size=self.partition_size, stride=self.partition_size, dilation=dilation,
            rpb=self.relative_position_bias(), scale=self.scale, backend=self.backend,
        )
        return out.reshape(b, hp, wp, self.dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, partition={self.partition!r}, "
            f"partition_size={self.partition_size}, rel_pos={self.rel_pos_type!r}, head_first={self.head_first}, backend={self.backend}"
        )


class BlockAttention2d(PartitionAttention2d):
    """Attention inside non-overlapping ``P x P`` blocks (MaxViT block attention)."""

    def __init__(self, dim: int, num_heads: int, partition_size: IntOrPair = 7, **kwargs):
        super().__init__(dim, num_heads, partition_size, partition="block", **kwargs)


class GridAttention2d(PartitionAttention2d):
    """Attention inside a ``G x G`` grid dilated over the whole map (MaxViT grid attention)."""

    def __init__(self, dim: int, num_heads: int, partition_size: IntOrPair = 7, **kwargs):
        super().__init__(dim, num_heads, partition_size, partition="grid", **kwargs)
