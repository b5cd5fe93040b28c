"""routed_attention's cases for ``attnzoo bench-ops`` (tools/bench_ops.py drives every op's case
module alike).

Cases: the three routed stages of biformer_small (head_dim 32: 2, 4, 8 heads; topk 1, 4, 16;
stage 4 is dense attention) at the three input sizes its recipes and configs use, with their
per-GPU batch:

* 224 px classification, 7x7 regions, batch 128 per GPU (train/recipes/biformer.yaml: 8 GPUs x 128);
* 512x512 segmentation (UperNet, ADE20K), 8x8 regions, batch 2 per GPU (configs/biformer/upernet_*:
  8 GPUs x 2);
* 800x1216 detection (Mask R-CNN / RetinaNet, COCO), 16x16 regions, batch 2 per GPU (configs/biformer/
  mask-rcnn_*: 8 GPUs x 2); the stage maps (200x304, 100x152, 50x76) are padded to multiples of 16
  as BiLevelRoutingAttention2d pads them, so the cases take the padded sizes.

Backends, each computing the same function from q, k, v (routing included in every step, since
in a model the index depends on the input):

* ``triton``: ``routed_attention(..., backend='triton')``, the fused kernels (routing in PyTorch);
* ``reference``: ``routed_attention(..., backend='reference')``, the specification;
* ``gather``: the authors' formulation (``legacy_routed_core`` of tools/bench_routed.py: routing,
  ``torch.gather`` of topk k/v copies, explicit scores);
* ``flex``: ``torch.nn.attention.flex_attention`` over region-major tokens, routing on the
  region-major tensors, then a BlockMask whose ``mask_mod`` looks up ``routed[b, query region,
  key region]`` (built from the index inside the step); compiled on CUDA, eager on the CPU.

Each backend gets its native layout (heads-last ``[B, H, W, heads, d]`` for the first three,
region-major ``[B, heads, H*W, d]`` for flex), prepared outside the timed region.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from attnzoo.kernels.routed_attention import RoutedParams, routed_attention, routed_attention_op
from attnzoo.tools.bench_routed import legacy_routed_core
from attnzoo.tools.bench_ops import make_step

__all__ = ["OP", "BACKENDS", "NOTES", "CASES", "SMALL_CASES", "RoutedCase", "min_bytes", "attention_flops",
           "runner", "region_major", "from_region_major"]

OP = "routed_attention"
BACKENDS = ("triton", "reference", "gather", "flex")
NOTES = (
    "every step starts from q, k, v and includes its routing (region means, affinity, top-k); "
    "scale (heads * head_dim) ** -0.5 as BiFormer",
    "gather: the authors' formulation (tools/bench_routed.py legacy_routed_core: topk gathered k/v copies, "
    "explicit scores); flex: FlexAttention with a BlockMask built from the routing index inside the step",
)


@dataclass(frozen=True)
class RoutedCase:
    name: str
    batch: int
    h: int  # map height after the mixer's padding (a multiple of num_regions)
    w: int
    heads: int
    head_dim: int
    num_regions: int
    topk: int

    @property
    def params(self) -> RoutedParams:
        return RoutedParams((self.h, self.w), self.num_regions, self.topk)

    @property
    def tokens(self) -> int:
        return self.h * self.w

    def describe(self) -> str:
        rh, rw = self.params.region_size
        return (f"{self.h}x{self.w}, {self.num_regions}x{self.num_regions} regions of {rh}x{rw} tokens, "
                f"topk {self.topk}, B {self.batch} x H {self.heads}, d {self.head_dim}")


def _stages(prefix: str, sizes, num_regions: int, batch: int):
    # biformer_small's routed stages: (heads, topk) with head_dim 32
    return [RoutedCase(f"{prefix}-s{i + 1}", batch, h, w, heads, 32, num_regions, topk)
            for i, ((h, w), (heads, topk)) in enumerate(zip(sizes, [(2, 1), (4, 4), (8, 16)]))]


CASES = {c.name: c for c in [
    *_stages("cls224", [(56, 56), (28, 28), (14, 14)], 7, 128),
    *_stages("seg512", [(128, 128), (64, 64), (32, 32)], 8, 2),
    *_stages("det800x1216", [(208, 304), (112, 160), (64, 80)], 16, 2),  # 200x304, 100x152, 50x76 padded
]}

# Tiny versions of the same regimes: seconds on the CPU with reference / gather / flex, a minute
# or so under Triton's interpreter.
SMALL_CASES = {c.name: c for c in [
    RoutedCase("small-s1-16x16-r4", 1, 16, 16, 2, 16, 4, 1),  # 4x4-token regions, one routed
    RoutedCase("small-s3-8x8-r4", 1, 8, 8, 4, 16, 4, 4),  # 2x2-token regions, packed
    RoutedCase("small-det-12x20-r4", 1, 12, 20, 2, 16, 4, 4),  # 3x5-token regions, H != W
]}


# --- roofline ------------------------------------------------------------------------------------

def min_bytes(case: RoutedCase, elem: int, backward: bool) -> int:
    """Bytes any implementation must move: read q, k, v, write out (and the int64 index); with the
    backward also write the float32 logsumexp, then read q, k, v, out, dout, logsumexp and the
    index, and write dq, dk, dv."""
    act = case.batch * case.tokens * case.heads * case.head_dim * elem  # one [B, H, W, heads, d] tensor
    index = case.batch * case.params.regions * case.topk * 8
    lse = case.batch * case.tokens * case.heads * 4
    fwd = 4 * act + index
    if not backward:
        return fwd
    return fwd + lse + (5 * act + lse + index) + 3 * act


def attention_flops(case: RoutedCase, backward: bool) -> int:
    """FLOPs of the token attention (2 per multiply-add over the attended pairs, every query
    against ``topk * region`` keys): QK^T and PV; the backward adds FlashAttention-2's five
    products. Routing (a ``(S*S)^2`` affinity) is left out: it is the same in every backend."""
    rh, rw = case.params.region_size
    pairs = case.batch * case.heads * case.tokens * case.topk * rh * rw
    d = case.head_dim
    return 2 * pairs * (2 * d + (5 * d if backward else 0))


# --- flex's layout -------------------------------------------------------------------------------

def region_major(t: torch.Tensor, num_regions: int) -> torch.Tensor:
    """``[B, H, W, heads, c]`` -> contiguous ``[B, heads, H*W, c]`` with the tokens of each region
    contiguous (region-major, row-major inside a region)."""
    b, h, w, heads, c = t.shape
    s = num_regions
    t = t.reshape(b, s, h // s, s, w // s, heads, c).permute(0, 5, 1, 3, 2, 4, 6)
    return t.reshape(b, heads, h * w, c).contiguous()


def from_region_major(t: torch.Tensor, h: int, w: int, num_regions: int) -> torch.Tensor:
    """The inverse of ``region_major``: ``[B, heads, H*W, c]`` -> ``[B, H, W, heads, c]``."""
    b, heads, _, c = t.shape
    s = num_regions
    t = t.reshape(b, heads, s, s, h // s, w // s, c).permute(0, 2, 4, 3, 5, 1, 6)
    return t.reshape(b, h, w, heads, c)


def _flex_route(q: torch.Tensor, k: torch.Tensor, regions: int, topk: int) -> torch.Tensor:
    """The routing of ``route_regions`` on region-major ``[B, heads, N, d]`` tensors: region means
    over all heads' channels, affinity, top-k. ``[B, S*S, topk]``."""
    b, heads, n, d = q.shape
    with torch.no_grad():
        def pooled(t):
            return t.float().view(b, heads, regions, n // regions, d).mean(3).permute(0, 2, 1, 3).reshape(b, regions, -1)

        return (pooled(q) @ pooled(k).transpose(-1, -2)).topk(topk, dim=-1).indices


# --- one case ------------------------------------------------------------------------------------

def _inputs(case: RoutedCase, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (case.batch, case.h, case.w, case.heads, case.head_dim)
    q, k, v, grad = (torch.randn(*shape, generator=g).to(device=device, dtype=dtype) for _ in range(4))
    return q, k, v, grad


def runner(backend: str, case: RoutedCase, device: torch.device, dtype: torch.dtype, backward: bool,
           cache: Dict[Tuple, Callable]) -> Tuple[Optional[Callable[[], object]], Optional[str]]:
    """(a closure running one forward [+ backward], None) or (None, why the backend cannot run).
    The forward-only step returns the output in the backend's layout (``from_region_major`` turns
    flex's into the others')."""
    q, k, v, grad = _inputs(case, device, dtype)
    s, topk = case.num_regions, case.topk
    scale = (case.heads * case.head_dim) ** -0.5
    if backend in ("triton", "reference"):
        reason = routed_attention_op.why_not(backend, q, k, v, case.params, scale, None)
        if reason is not None:
            return None, reason

        def call():
            return routed_attention(q, k, v, s, topk, scale=scale, backend=backend)
    elif backend == "gather":
        def call():
            return legacy_routed_core(q, k, v, s, topk, scale)
    elif backend == "flex":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as e:
            return None, f"torch {torch.__version__} has no flex_attention ({e})"
        if backward and device.type != "cuda":
            return None, f"FlexAttention has no backward on {device.type} (torch {torch.__version__})"
        q, k, v, grad = (region_major(t, s) for t in (q, k, v, grad))
        regions = s * s
        rh, rw = case.params.region_size
        tokens = rh * rw
        n = case.tokens
        if device.type == "cuda":
            key = ("flex",)
            if key not in cache:
                cache[key] = torch.compile(flex_attention, dynamic=False)
            attend = cache[key]

            def block_mask_of(mask_mod):
                return create_block_mask(mask_mod, case.batch, None, n, n, device=str(device), _compile=True)
        else:
            def attend(*a, **kw):
                with warnings.catch_warnings():  # "use torch.compile": deliberately not on the CPU
                    warnings.simplefilter("ignore", UserWarning)
                    return flex_attention(*a, **kw)

            def block_mask_of(mask_mod):
                return create_block_mask(mask_mod, case.batch, None, n, n, device=str(device))

        def call():
            index = _flex_route(q, k, regions, topk)
            routed = torch.zeros(case.batch, regions, regions, dtype=torch.bool, device=q.device)
            routed.scatter_(2, index, True)

            def mask_mod(b, h, q_idx, kv_idx):
                return routed[b, q_idx // tokens, kv_idx // tokens]

            return attend(q, k, v, block_mask=block_mask_of(mask_mod), scale=scale)
    else:
        return None, f"unknown backend {backend!r} (this op has: {', '.join(BACKENDS)})"

    leaves = [q, k, v]
    return make_step(call, leaves, grad, backward), None
