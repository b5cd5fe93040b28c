"""gna's cases for ``attnzoo bench-ops`` (tools/bench_ops.py drives every op's case module alike).

For each case (NA2D, DiNAT, MaxViT block / grid, NA1D, NA3D, a blocked pattern) the backends are

* ``triton``: ``gna(..., backend='triton')``, the fused kernels;
* ``reference``: ``gna(..., backend='reference')``, the pure PyTorch specification;
* ``flex``: ``torch.nn.attention.flex_attention`` (compiled on CUDA, eager on the CPU where
  compiling it would take minutes) with the block mask of the same pattern: its ``mask_mod`` is
  built from ``window_bounds``, the formulas of the reference, and the relative position bias is a
  ``score_mod``;
* ``sdpa``: dense ``scaled_dot_product_attention`` over all tokens, no mask: what ignoring the
  sparsity would cost (a different result; a speed reference only).

Each backend gets its native layout (gna heads-last ``[B, *spatial, H, D]``, the others
``[B, H, N, D]``), prepared outside the timed region.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from attnzoo.kernels import gna
from attnzoo.kernels.gna import GNAParams, attended_pairs, gna_op, window_bounds
from attnzoo.tools.bench_ops import make_step

__all__ = ["OP", "BACKENDS", "NOTES", "CASES", "SMALL_CASES", "BenchCase", "flex_mods", "min_bytes",
           "attention_flops", "runner"]

OP = "gna"
BACKENDS = ("triton", "reference", "flex", "sdpa")
NOTES = ("flex: FlexAttention with the gna block mask; sdpa: dense attention over all tokens, no mask "
         "(a speed reference with a different result)",)


@dataclass(frozen=True)
class BenchCase:
    name: str
    spatial: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    is_causal: Tuple[bool, ...]
    batch: int
    heads: int
    head_dim: int
    rpb: bool = True

    @property
    def params(self) -> GNAParams:
        return GNAParams(self.spatial, self.kernel_size, self.stride, self.dilation, self.is_causal)

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    def describe(self) -> str:
        def axes(t):
            return "x".join(str(int(x)) for x in t)

        causal = f", causal {axes(self.is_causal)}" if any(self.is_causal) else ""
        return (f"{axes(self.spatial)}, kernel {axes(self.kernel_size)}, stride {axes(self.stride)}, "
                f"dilation {axes(self.dilation)}{causal}, B {self.batch} x H {self.heads}, d {self.head_dim}, "
                f"{'rpb' if self.rpb else 'no rpb'}")


def _case(name, spatial, kernel, stride=1, dilation=1, causal=False, batch=1, heads=1, head_dim=32, rpb=True):
    r = len(spatial)

    def per_axis(x):
        return tuple(x) if isinstance(x, tuple) else (x,) * r

    return BenchCase(name, tuple(spatial), per_axis(kernel), per_axis(stride), per_axis(dilation), per_axis(causal),
                     batch, heads, head_dim, rpb)


CASES = {c.name: c for c in [
    _case("na2d-56-k7", (56, 56), 7, batch=32, heads=8),  # NAT stage 1: B * H = 256
    _case("dinat-56-k7-d8", (56, 56), 7, dilation=8, batch=32, heads=8),  # DiNAT stage 1, widest dilation
    _case("dinat-28-k7-d4", (28, 28), 7, dilation=4, batch=32, heads=16),  # DiNAT stage 2
    _case("maxvit-block-56-p7", (56, 56), 7, stride=7, batch=32, heads=8),  # 7x7 windows of the 56x56 map
    _case("maxvit-grid-56-g7", (56, 56), 7, stride=7, dilation=8, batch=32, heads=8),  # 7x7 grid, dilation 56/7
    _case("na1d-4096-k63", (4096,), 63, batch=8, heads=8, head_dim=64, rpb=False),
    _case("na3d-16x32x32-k3x7x7", (16, 32, 32), (3, 7, 7), batch=2, heads=8, rpb=False),
    _case("blocked-64-k8", (64, 64), 8, stride=8, batch=32, heads=8, rpb=False),  # power-of-two window: no padded lanes
]}

# Tiny versions of the same patterns: CPU runs (and tests) finish in seconds with the reference,
# and in minutes under Triton's interpreter.
SMALL_CASES = {c.name: c for c in [
    _case("small-na2d-14-k7", (14, 14), 7, heads=2, head_dim=16),
    _case("small-dinat-16-k3-d4", (16, 16), 3, dilation=4, heads=2, head_dim=16),
    _case("small-maxvit-block-14-p7", (14, 14), 7, stride=7, heads=2, head_dim=16),
    _case("small-na1d-64-k7-causal", (64,), 7, causal=True, heads=2, head_dim=16, rpb=False),
    _case("small-na3d-4x8x8-k3", (4, 8, 8), 3, heads=1, head_dim=16, rpb=False),
    _case("small-blocked-8-k4", (8, 8), 4, stride=4, heads=2, head_dim=16, rpb=False),
]}



# --- FlexAttention's view of a gna pattern -------------------------------------------------------

def _coords(index: torch.Tensor, spatial: Sequence[int]) -> List[torch.Tensor]:
    """Row-major flat token index -> one coordinate per spatial axis."""
    out = []
    for n in reversed(spatial):
        out.append(index % n)
        index = index // n
    return out[::-1]


def flex_mods(case_params: GNAParams, rpb: Optional[torch.Tensor]) -> Tuple[Callable, Optional[Callable]]:
    """``(mask_mod, score_mod)`` for ``flex_attention`` over row-major flattened tokens.

    The mask is the gna neighborhood: per axis, same dilation group and the key's group
    coordinate inside ``window_bounds`` of the query's. ``score_mod`` (None without ``rpb``) adds
    ``rpb[h, key - query + kernel - 1 per axis]`` in group coordinates, as the reference does.
    """
    p = case_params

    def axis_terms(q_idx, kv_idx):
        qc, kc = _coords(q_idx, p.spatial), _coords(kv_idx, p.spatial)
        terms = []
        for a in range(p.rank):
            n, ks, st, dl, causal = p.spatial[a], p.kernel_size[a], p.stride[a], p.dilation[a], p.is_causal[a]
            g = qc[a] % dl
            glen = (n - g + dl - 1) // dl
            j, i = qc[a] // dl, kc[a] // dl
            start, end = window_bounds(j, glen, ks, st, causal)
            terms.append(((kc[a] % dl == g) & (i >= start) & (i < end), (i - j + ks - 1).clamp(0, 2 * ks - 2)))
        return terms

    def mask_mod(b, h, q_idx, kv_idx):
        terms = axis_terms(q_idx, kv_idx)
        inside = terms[0][0]
        for m, _ in terms[1:]:
            inside = inside & m
        return inside

    if rpb is None:
        return mask_mod, None

    def score_mod(score, b, h, q_idx, kv_idx):
        rel = [r for _, r in axis_terms(q_idx, kv_idx)]
        return score + rpb[(h, *rel)].to(score.dtype)

    return mask_mod, score_mod


# --- roofline ------------------------------------------------------------------------------------

def min_bytes(case: BenchCase, elem: int, backward: bool) -> int:
    """Bytes any implementation must move: read q, k, v (and rpb), write out; with the backward
    also write the float32 logsumexp, then read q, k, v, out, dout, logsumexp and write dq, dk, dv
    (and d_rpb)."""
    act = case.batch * case.tokens * case.heads * case.head_dim * elem  # one [B, N, H, D] tensor
    table = case.heads * math.prod(2 * k - 1 for k in case.kernel_size) * elem if case.rpb else 0
    lse = case.batch * case.tokens * case.heads * 4
    fwd = 4 * act + table
    if not backward:
        return fwd
    return fwd + lse + (5 * act + lse + table) + (3 * act + table)


def attention_flops(case: BenchCase, backward: bool) -> int:
    """FLOPs of the attention math (2 per multiply-add over the attended pairs): the forward's
    QK^T and PV; the backward adds FlashAttention-2's five products (QK^T recomputed, dP = dO V^T,
    dV = P^T dO, dQ = dS K, dK = dS^T Q)."""
    pairs = case.batch * case.heads * attended_pairs(case.params)
    d = case.head_dim
    return 2 * pairs * (2 * d + (5 * d if backward else 0))


# --- one case ------------------------------------------------------------------------------------

def _inputs(case: BenchCase, device: torch.device, dtype: torch.dtype, backward: bool):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q, k, v = (rand(case.batch, *case.spatial, case.heads, case.head_dim) for _ in range(3))
    rpb = rand(case.heads, *(2 * x - 1 for x in case.kernel_size)) if case.rpb else None
    grad = rand(case.batch, *case.spatial, case.heads, case.head_dim)
    leaves = [q, k, v] + ([rpb] if rpb is not None else [])
    for t in leaves:
        t.requires_grad_(backward)
    return q, k, v, rpb, grad


def _flat(t: torch.Tensor, case: BenchCase) -> torch.Tensor:
    """[B, *spatial, H, D] -> contiguous [B, H, N, D] leaf (same values, new storage)."""
    out = t.detach().reshape(case.batch, case.tokens, case.heads, -1).transpose(1, 2).contiguous()
    return out.requires_grad_(t.requires_grad)


def runner(backend: str, case: BenchCase, device: torch.device, dtype: torch.dtype, backward: bool,
            flex_cache: Dict[Tuple, Callable]) -> Tuple[Optional[Callable[[], object]], Optional[str]]:
    """(a closure running one forward [+ backward], None) or (None, why the backend cannot run)."""
    q, k, v, rpb, grad = _inputs(case, device, dtype, backward)
    pattern = (case.kernel_size, case.stride, case.dilation, case.is_causal)
    if backend in ("triton", "reference"):
        reason = gna_op.why_not(backend, q, k, v, case.params, rpb, case.head_dim ** -0.5)
        if reason is not None:
            return None, reason
        leaves = [t for t in (q, k, v, rpb) if t is not None]

        def call():
            return gna(q, k, v, *pattern, rpb=rpb, backend=backend)
    else:
        qf, kf, vf = (_flat(t, case) for t in (q, k, v))
        gradf = _flat(grad, case)
        grad = gradf
        if backend == "sdpa":
            leaves = [qf, kf, vf]

            def call():
                return F.scaled_dot_product_attention(qf, kf, vf)
        else:
            try:
                from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            except ImportError as e:
                return None, f"torch {torch.__version__} has no flex_attention ({e})"
            mask_mod, score_mod = flex_mods(case.params, rpb)
            block_mask = create_block_mask(mask_mod, None, None, case.tokens, case.tokens, device=str(device))
            if device.type == "cuda":
                key = ("flex",)
                if key not in flex_cache:
                    flex_cache[key] = torch.compile(flex_attention, dynamic=False)
                attend = flex_cache[key]
            else:
                def attend(*a, **kw):
                    with warnings.catch_warnings():  # "use torch.compile": deliberately not on the CPU
                        warnings.simplefilter("ignore", UserWarning)
                        return flex_attention(*a, **kw)
            leaves = [qf, kf, vf] + ([rpb] if rpb is not None else [])

            def call():
                return attend(qf, kf, vf, score_mod=score_mod, block_mask=block_mask)

    return make_step(call, leaves, grad, backward), None
