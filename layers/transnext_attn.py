"""TransNeXt's mixers: aggregated (pixel-focused) attention for stages 1-3 and length-scaled
full attention for stage 4, both over ``attnzoo.kernels.aggregated_attention``, and the
continuous position bias (CPB) MLP that feeds their pooled / global logits. Channels-last
``[B, H, W, C]`` in and out.

Any input size: upstream fixes the padding mask, the length scale, the pooled size and the CPB
coordinate tables at construction from ``img_size``. Here the mask and the length scale are
computed by the op from the actual ``(H, W)``; the pooled grid is ``(max(1, H // sr), max(1, W // sr))``
of the actual mixer input (upstream's ``(H // sr, W // sr)``, its detection code's run-time rule,
clamped so that tiny inputs still have one pooled token); and the CPB coordinate tables come from
``relative_position_table``, cached per (query grid, key grid, pretraining grid, device): every
input the tables depend on is in the key, so a cached table can never belong to another size.
The CPB coordinates are normalised by the grid at the *pretraining* resolution
(``pretrain_size``), as upstream's extrapolation mode does, so one set of weights serves 224,
256, 384 or 200x300 inputs.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import register_notrace_module

from attnzoo.kernels._checks import check_int
from attnzoo.kernels._trace_cache import size_key, trace_cached
from attnzoo.kernels.aggregated_attention import aggregated_attention, length_scaled_attention

__all__ = ["AggregatedAttention2d", "LengthScaledAttention2d", "ContinuousPositionBias", "relative_position_table"]

Size = Tuple[int, int]


def _pair(name: str, value: Union[int, Sequence[int], None], minimum: int) -> Optional[Size]:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of such ints, got {value!r}")
    return pair


def _axis_offsets(size: int, pooled: int) -> Tuple[List[int], List[int]]:
    """Twice the offset ``y - c_i`` of query ``y`` from the centre ``c_i`` of adaptive-pooling bin
    ``i`` (what ``adaptive_avg_pool1d(arange(size), pooled)`` gives; bin ``i`` covers
    ``[floor(i size / pooled), ceil((i + 1) size / pooled))``). Doubled, offsets are integers, so
    equal offsets are found exactly. Returns the sorted distinct values and, for each
    ``(y, i)`` row-major, the position of its value among them."""
    centres2 = [(i * size) // pooled + -(-(i + 1) * size // pooled) - 1 for i in range(pooled)]
    offsets = [2 * y - c for y in range(size) for c in centres2]
    values = sorted(set(offsets))
    where = {v: n for n, v in enumerate(values)}
    return values, [where[o] for o in offsets]


def _build_table(query_size: Size, key_size: Size, pretrain_size: Size, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # pure Python up to small tensors, so torch.compile traces it as constants (no data-dependent ops)
    (vy, iy), (vx, ix) = (_axis_offsets(q, k) for q, k in zip(query_size, key_size))
    axes = []
    for values, pretrain in ((vy, pretrain_size[0]), (vx, pretrain_size[1])):
        # upstream's float32 arithmetic in upstream's order: (q - k) / (pretrain - 1) * 8
        axes.append(torch.tensor(values, dtype=torch.float32, device=device) / 2 / (pretrain - 1) * 8)
    table = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="ij"), dim=-1).reshape(-1, 2)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    # offsets are separable: the pair (dy, dx) of query (y, x) and key (i, j) is row
    # iy[y, i] * len(vx) + ix[x, j] of the product table; the row stride is folded in here
    row_y = torch.tensor([i * len(vx) for i in iy], device=device).view(query_size[0], key_size[0])
    row_x = torch.tensor(ix, device=device).view(query_size[1], key_size[1])
    return row_y, row_x, table


@functools.lru_cache(maxsize=64)
def _cached_table(query_size: Size, key_size: Size, pretrain_size: Size, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # built outside inference mode and without autograd: a table first made under
    # torch.inference_mode() must still serve a later training step
    with torch.inference_mode(False), torch.no_grad():
        return _build_table(query_size, key_size, pretrain_size, device)


def relative_position_table(query_size: Size, key_size: Size, pretrain_size: Size, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The CPB inputs for a ``query_size`` grid of queries against a ``key_size`` grid of pooled keys.

    Query ``(y, x)`` sits at integer coordinates, pooled key ``(i, j)`` at the centre of its
    adaptive-pooling bin. Their offset per axis, scaled to ``8 * offset / (pretrain - 1)``, is
    mapped to ``sign(t) log2(1 + |t|) / log2(8)`` (log-spaced as in Swin v2 / TransNeXt).
    Offsets repeat, so the MLP runs once per distinct offset pair:

    Returns:
        ``index``: ``[Nq * Nk]`` long, row of ``table`` for (query n, key p) at ``n * Nk + p``.
        ``table``: ``[U, 2]`` float32 distinct log-spaced (dy, dx) pairs.

    The per-axis parts are cached on every argument (an LRU of 64 entries, each ``O(q k)`` per
    axis; the tensors are never modified), so no size can see another's table; the full
    ``Nq * Nk`` index is formed per call and not kept. Under torch.compile the tables are traced
    as graph constants instead.
    """
    key = (tuple(query_size), tuple(key_size), tuple(pretrain_size), torch.device(device))
    row_y, row_x, table = _build_table(*key) if torch.compiler.is_compiling() else _cached_table(*key)
    index = row_y[:, None, :, None] + row_x[None, :, None, :]  # [qh, qw, kh, kw]
    return index.reshape(-1), table


def _computed_size(n):
    """A symbolic size ``n`` (``torch.export``) turned into a size the exported graph computes
    from a tensor (an unbacked size): torch then assumes nothing about its value.

    The pooled grid ``max(1, H // sr)`` is 1 at small inputs and larger at others. Kept as an
    expression of the input size, every op on the pooled tokens (norm, linears, einsums) would
    make torch decide whether it is 1 (contiguity, matmul folding), each decision a guard on the
    example size; as a computed size the program is the same for every value (>= 1)."""
    u = torch.scalar_tensor(n, dtype=torch.int64).item()
    torch._check(u >= 1)
    return u


def _is_symbolic(*sizes) -> bool:
    return any(isinstance(n, torch.SymInt) for n in sizes)


def _doubled_offsets(size, pooled, device) -> torch.Tensor:
    """``[size, pooled]`` long: ``2 (y - c_i)`` of query ``y`` and adaptive-pooling bin ``i`` (the
    doubled offsets of ``_axis_offsets``, before deduplication), by tensor arithmetic on sizes
    that may be symbolic."""
    i = torch.arange(pooled, device=device)
    centres2 = (i * size) // pooled + ((i + 1) * size + pooled - 1) // pooled - 1
    return 2 * torch.arange(size, device=device)[:, None] - centres2[None, :]


def symbolic_position_table(query_size: Size, key_size: Size, pretrain_size: Size, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``relative_position_table`` for symbolic sizes (``torch.export`` with a dynamic height
    and width), computed in the graph from the sizes.

    The distinct offsets of a size cannot become a tensor size without a guard, so ``table``
    holds every doubled offset that any size could give on an axis, ``-(2q - 2) .. 2q - 2``
    (``4q - 3`` per axis: about four times the rows of the deduplicated table; the position bias
    of a given offset pair is the same, up to the MLP's summation order). ``index`` is
    ``[Nq, Nk]`` (made by broadcasting over ``arange(Nq)`` and ``arange(Nk)``, not by a reshape)."""
    (qh, qw), (kh, kw) = query_size, key_size
    axes = []
    for q, pretrain in ((qh, pretrain_size[0]), (qw, pretrain_size[1])):
        values = torch.arange(4 * q - 3, device=device) - (2 * q - 2)
        # upstream's float32 arithmetic in upstream's order: (q - k) / (pretrain - 1) * 8
        axes.append(values.to(torch.float32) / 2 / (pretrain - 1) * 8)
    table = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="ij"), dim=-1).flatten(0, 1)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    n = torch.arange(qh * qw, device=device)[:, None]  # query n = (y, x), row-major
    p = torch.arange(kh * kw, device=device)[None, :]  # pooled key p = (i, j), row-major
    off_y = _doubled_offsets(qh, kh, device)[n // qw, p // kw] + (2 * qh - 2)
    # n - (n // qw) * qw, not n % qw: ONNX's exporter (onnxscript 0.7) fails on a remainder by a symbolic scalar
    off_x = _doubled_offsets(qw, kw, device)[n - (n // qw) * qw, p - (p // kw) * kw] + (2 * qw - 2)
    return off_y * (4 * qw - 3) + off_x, table


class ContinuousPositionBias(nn.Module):
    """Continuous position bias: an MLP ``2 -> hidden -> heads`` (ReLU) over log-spaced relative
    coordinates, evaluated once per distinct offset and gathered to ``[heads, Nq, Nk]``."""

    def __init__(self, num_heads: int, hidden: int = 512, *, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.fc1 = nn.Linear(2, hidden, **dd)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_heads, **dd)

    def forward(self, query_size: Size, key_size: Size, pretrain_size: Size) -> torch.Tensor:
        """``[heads, Nq, Nk]`` bias in the dtype of the MLP's weights."""
        if _is_symbolic(*query_size, *key_size):
            key = ("transnext-cpb", *map(size_key, (*query_size, *key_size, *pretrain_size)), self.fc1.weight.device)
            index, table = trace_cached(key, lambda: symbolic_position_table(query_size, key_size, pretrain_size, self.fc1.weight.device))
            bias = self.fc2(self.act(self.fc1(table.to(self.fc1.weight.dtype))))  # [U, heads]
            return bias.t()[:, index]  # the index is [Nq, Nk] already: no view of a symbolic size
        index, table = relative_position_table(query_size, key_size, pretrain_size, self.fc1.weight.device)
        bias = self.fc2(self.act(self.fc1(table.to(self.fc1.weight.dtype))))  # [U, heads]
        n_q, n_k = query_size[0] * query_size[1], key_size[0] * key_size[1]
        return bias.t()[:, index].view(self.num_heads, n_q, n_k)


def _pooling_matrix(size, pooled, dtype, device) -> torch.Tensor:
    """``[pooled, size]``: row ``i`` averages adaptive-pooling bin ``i``,
    ``[floor(i size / pooled), ceil((i + 1) size / pooled))``."""
    i = torch.arange(pooled, device=device)[:, None]
    y = torch.arange(size, device=device)[None, :]
    start = (i * size) // pooled
    end = ((i + 1) * size + pooled - 1) // pooled
    inside = ((y >= start) & (y < end)).to(dtype)
    return inside / (end - start).to(dtype)


def _adaptive_pool_symbolic(x: torch.Tensor, pooled: Size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, pooled)`` for symbolic sizes (``torch.export``): two
    averaging matrices built from ``arange``, so an exported graph (and ONNX, which has no
    adaptive pooling to a size) pools any input to the grid computed from its size. Equal to
    adaptive pooling up to the summation order."""
    _, _, h, w = x.shape
    rows, cols = trace_cached(
        ("transnext-pool", *map(size_key, (h, w, *pooled)), x.dtype, x.device),
        lambda: (_pooling_matrix(h, pooled[0], x.dtype, x.device), _pooling_matrix(w, pooled[1], x.dtype, x.device)),
    )
    return torch.einsum("iy,bcyx,jx->bcij", rows, x, cols)


def _check_heads(dim: int, num_heads: int) -> None:
    check_int("num_heads", num_heads)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1 or dim % num_heads:
        raise ValueError(f"dim ({dim!r}) must be a positive multiple of num_heads ({num_heads})")


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


@register_notrace_module  # shape checks and padding depend on the input size: an FX leaf
class _CosineAttentionBase(nn.Module):
    """Shared parameters: query embedding, softplus temperature (initialised to 1 / 0.24), CPB."""

    def __init__(self, dim, num_heads, pretrain_size, cpb_hidden, proj_drop, backend, dd):
        super().__init__()
        _check_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pretrain_size = _pair("pretrain_size", pretrain_size, 2)
        self.backend = backend
        # upstream's shapes, so checkpoints load unchanged: [heads, 1, 1] and [heads, 1, head_dim]
        self.temperature = nn.Parameter(torch.empty(num_heads, 1, 1, **dd))
        self.query_embedding = nn.Parameter(torch.empty(num_heads, 1, self.head_dim, **dd))
        self.cpb = ContinuousPositionBias(num_heads, cpb_hidden, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _reset_common(self) -> None:
        with torch.no_grad():
            self.temperature.fill_(_softplus_inverse(1 / 0.24))
        nn.init.trunc_normal_(self.query_embedding, std=0.02)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects [B, H, W, C={self.dim}] channels-last input, got shape {tuple(x.shape)}")

    def _pretrain(self, size: Size) -> Size:
        # without a pretraining grid the coordinates are normalised by the current one (upstream's default)
        if self.pretrain_size is not None:
            return self.pretrain_size
        return (torch.sym_max(size[0], 2), torch.sym_max(size[1], 2))  # sym_max: no guard on a symbolic size

    def _small_params(self):
        return dict(query_embedding=self.query_embedding.view(self.num_heads, self.head_dim),
                    temperature=self.temperature.view(self.num_heads))


class AggregatedAttention2d(_CosineAttentionBase):
    """TransNeXt aggregated attention over ``[B, H, W, C]`` (stages 1-3).

    Each query attends, with one softmax, to its ``window_size^2`` neighbours (keys and values
    from ``kv(x)``, border positions masked) and to ``P`` pooled tokens: ``kv(norm(pool(GELU(sr(x)))))``
    with ``sr`` a 1x1 convolution and ``pool`` adaptive average pooling to
    ``(max(1, H // sr_ratio), max(1, W // sr_ratio))``. The pooled logits get a continuous
    position bias (``cpb``). See ``attnzoo.kernels.aggregated_attention`` for the math.

    Args:
        dim: channels C (a multiple of ``num_heads``).
        num_heads: attention heads.
        sr_ratio: spatial reduction of the pooled branch (>= 1).
        window_size: odd side of the local window (default 3).
        qkv_bias: bias in the q and kv projections.
        pretrain_size: the mixer's input grid at the pretraining resolution (e.g. 56 for stage 1
            of a 224-px model); it normalises the CPB coordinates. None: the current grid.
        cpb_hidden: hidden width of the CPB MLP (512 upstream).
        backend: aggregated_attention backend for this module (None: dispatch rule).

    Upstream's attention-weight dropout (``attn_drop``, 0 in every released configuration) is
    not offered: the op keeps the softmax weights inside it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        window_size: int = 3,
        *,
        qkv_bias: bool = True,
        pretrain_size: Union[int, Sequence[int], None] = None,
        cpb_hidden: int = 512,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__(dim, num_heads, pretrain_size, cpb_hidden, proj_drop, backend, dd)
        check_int("sr_ratio", sr_ratio)
        check_int("window_size", window_size, odd=True)
        self.sr_ratio = sr_ratio
        self.window_size = window_size
        local = window_size * window_size
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.sr = nn.Conv2d(dim, dim, 1, **dd)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, **dd)  # upstream's default eps (1e-5)
        self.relative_pos_bias_local = nn.Parameter(torch.empty(num_heads, local, **dd))
        self.learnable_tokens = nn.Parameter(torch.empty(num_heads, self.head_dim, local, **dd))
        self.learnable_bias = nn.Parameter(torch.empty(num_heads, 1, local, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's initial values for the attention-specific tensors (the model re-initialises the linears)."""
        self._reset_common()
        nn.init.trunc_normal_(self.relative_pos_bias_local, std=0.0004)
        nn.init.trunc_normal_(self.learnable_tokens, std=0.02)
        nn.init.zeros_(self.learnable_bias)

    def pooled_size(self, height: int, width: int) -> Size:
        """Grid of pooled tokens for an ``H x W`` input: ``(max(1, H // sr), max(1, W // sr))``."""
        return torch.sym_max(height // self.sr_ratio, 1), torch.sym_max(width // self.sr_ratio, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, h, w, c = x.shape
        heads, d = self.num_heads, self.head_dim
        pooled = self.pooled_size(h, w)
        if _is_symbolic(h, w):
            # one computed size per stage (the blocks share it, and with it the tables below)
            pooled = tuple(trace_cached(("transnext-pooled", size_key(n)), lambda n=n: _computed_size(n)) for n in pooled)
        q = self.q(x).view(b, h, w, heads, d)
        k, v = self.kv(x).view(b, h, w, 2, heads, d).unbind(3)

        x_pool = self.act(self.sr(x.permute(0, 3, 1, 2)))
        x_pool = _adaptive_pool_symbolic(x_pool, pooled) if _is_symbolic(h, w) else F.adaptive_avg_pool2d(x_pool, pooled)
        x_pool = self.norm(x_pool.flatten(2).transpose(1, 2))  # [B, P, C]
        k_pool, v_pool = self.kv(x_pool).view(b, x_pool.shape[1], 2, heads, d).unbind(2)

        pool_bias = self.cpb((h, w), pooled, self._pretrain((h, w)))
        out = aggregated_attention(
            q, k, v, k_pool, v_pool, pool_bias=pool_bias, local_bias=self.relative_pos_bias_local,
            learnable_tokens=self.learnable_tokens, learnable_bias=self.learnable_bias.view(heads, -1),
            window_size=self.window_size, backend=self.backend, **self._small_params(),
        )
        return self.proj_drop(self.proj(out.reshape(b, h, w, c)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"sr_ratio={self.sr_ratio}, pretrain_size={self.pretrain_size}, backend={self.backend}")


class LengthScaledAttention2d(_CosineAttentionBase):
    """TransNeXt's full attention over ``[B, H, W, C]`` (stage 4): every position attends to all
    positions with the length-scaled cosine logits ``(q^ + query_embedding) softplus(temperature)
    log(H W) . k^`` plus a continuous position bias; no local branch, no pooling.

    Args: as ``AggregatedAttention2d`` without ``sr_ratio`` and ``window_size``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        pretrain_size: Union[int, Sequence[int], None] = None,
        cpb_hidden: int = 512,
        proj_drop: float = 0.0,
        backend: Optional[str] = None,
        device=None,
        dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__(dim, num_heads, pretrain_size, cpb_hidden, proj_drop, backend, dd)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_common()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h, w, 3, self.num_heads, self.head_dim).unbind(3)
        bias = self.cpb((h, w), (h, w), self._pretrain((h, w)))
        out = length_scaled_attention(q, k, v, bias=bias, backend=self.backend, **self._small_params())
        return self.proj_drop(self.proj(out.reshape(b, h, w, c)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, pretrain_size={self.pretrain_size}, backend={self.backend}"
