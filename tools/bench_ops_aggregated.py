"""aggregated_attention's cases for ``attnzoo bench-ops`` (TransNeXt's pixel-focused attention;
tools/bench_ops.py drives every op's case module alike).

Cases: the four stage shapes of transnext_tiny (heads 3 / 6 / 12 / 24, head_dim 24, pooled grid
``(H // sr, W // sr)`` with sr 8 / 4 / 2, stage 4 length-scaled full attention) at

* 224 px, batch 128: the per-GPU batch of the classification recipe (train/recipes/transnext.yaml);
* 512 x 512, batch 2: the per-GPU batch of configs/transnext/upernet_transnext_tiny_512x512_160k_ade20k.py
  (16 = 8 GPUs x 2);
* 800 x 1216, batch 2: the per-GPU batch of configs/transnext/mask-rcnn_transnext_tiny_fpn_1x_coco.py.

Backends:

* ``triton``: ``aggregated_attention(..., backend='triton')`` (``length_scaled_attention`` at
  stage 4), the fused kernels;
* ``reference``: the same call with ``backend='reference'``, the pure PyTorch specification;
* ``flex``: ``torch.nn.attention.flex_attention`` over the keys ``[local keys at full resolution |
  pooled keys]``: a block mask keeps each query's window (border slots fall outside the map and are
  simply not keys) and every pooled key, ``score_mod`` adds ``local_bias`` / ``pool_bias``, and the
  query-dependent scale is folded into the queries (flex's scale is one number). The normalisations
  and that folding run as torch ops around it. The learnable-token term (``q^ . learnable_tokens
  + learnable_bias`` times the window's values, outside the softmax) is not an attention pattern
  flex can express; it runs as torch ops (the reference's unfold of v) and is added to flex's
  output, so the result is the op's, and the column measures flex plus that term. Compiled on
  CUDA, eager on the CPU (compiling would take minutes).

Each backend gets its native layout, prepared outside the timed region.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from attnzoo.kernels.aggregated_attention import (
    AggregatedParams, aggregated_attention, aggregated_attention_flops, aggregated_attention_op, length_scale,
    length_scaled_attention,
)
from attnzoo.kernels.aggregated_attention._params import check_aggregated_inputs
from attnzoo.tools.bench_ops import make_step

__all__ = ["OP", "BACKENDS", "NOTES", "CASES", "SMALL_CASES", "BenchCase", "min_bytes", "attention_flops", "runner"]

OP = "aggregated_attention"
BACKENDS = ("triton", "reference", "flex")
NOTES = ("flex: FlexAttention over [window keys | pooled keys] with a block mask and the biases as score_mod; "
         "the learnable-token term (outside the softmax) added by torch ops",)


@dataclass(frozen=True)
class BenchCase:
    name: str
    height: int
    width: int
    heads: int
    pool: int  # P (H * W for the length-scaled stage 4)
    window: Optional[int]  # None: length-scaled full attention (stage 4)
    batch: int
    head_dim: int = 24

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def params(self) -> AggregatedParams:
        return AggregatedParams((self.height, self.width), self.window, self.pool)

    def describe(self) -> str:
        branch = f"window {self.window}, P {self.pool}" if self.window else f"full, P = N = {self.pool}"
        return f"{self.height}x{self.width}, {branch}, B {self.batch} x H {self.heads}, d {self.head_dim}"


def _stages(prefix: str, height: int, width: int, batch: int, heads=(3, 6, 12, 24), srs=(8, 4, 2, 1)):
    """transnext_tiny's four mixer inputs for an ``height x width`` image (stride 4, 8, 16, 32)."""
    out = []
    for i, (nh, sr) in enumerate(zip(heads, srs)):
        h, w = height // 2 ** (i + 2), width // 2 ** (i + 2)
        pool = h * w if sr == 1 else max(1, h // sr) * max(1, w // sr)
        out.append(BenchCase(f"{prefix}-s{i + 1}-{h}x{w}", h, w, nh, pool, None if sr == 1 else 3, batch))
    return out


CASES = {c.name: c for c in [*_stages("cls224", 224, 224, 128), *_stages("seg512", 512, 512, 2),
                             *_stages("det800x1216", 800, 1216, 2)]}

# Tiny versions: CPU runs (and tests, the Triton backend through its interpreter) take seconds.
SMALL_CASES = {c.name: c for c in [
    BenchCase("small-s1-8x6", 8, 6, 2, 4, 3, 1, head_dim=16),
    BenchCase("small-s4-3x4-full", 3, 4, 2, 12, None, 1, head_dim=16),
]}


# --- roofline ------------------------------------------------------------------------------------

def min_bytes(case: BenchCase, elem: int, backward: bool) -> int:
    """Bytes any implementation must move: read q, k, v (local branch), k_pool, v_pool, pool_bias,
    write out; with the backward also write a float32 logsumexp, then read all of those plus out,
    dout and the logsumexp and write their gradients. The small parameters are ignored (< 1 KiB)."""
    act = case.batch * case.tokens * case.heads * case.head_dim * elem  # one [B, N, heads, d] tensor
    pooled = case.batch * case.pool * case.heads * case.head_dim * elem
    bias = case.heads * case.tokens * case.pool * elem
    lse = case.batch * case.tokens * case.heads * 4
    inputs = (3 * act if case.window else act) + 2 * pooled + bias  # length-scaled: k, v are the pooled ones
    fwd = inputs + act
    if not backward:
        return fwd
    return fwd + lse + (inputs + 2 * act + lse) + inputs


def attention_flops(case: BenchCase, backward: bool) -> int:
    """FLOPs of the attention math (2 per multiply-add). Forward: ``aggregated_attention_flops``
    (per query and head, L slots x (logit d + learnable-token d + value dv) and P x (d + dv)).
    The backward adds, per (query, key) pair, FlashAttention-2's five products (logit recomputed,
    dP, dV, dQ, dK: 3 d + 2 dv) and, per local slot, the learnable-token term's two (dq, d tokens)."""
    d = case.head_dim
    fwd = aggregated_attention_flops(case.params, case.batch, case.heads, d, d)
    if not backward:
        return fwd
    local = case.params.local_len
    per_query = (local + case.pool) * (3 * d + 2 * d) + local * 2 * d
    return fwd + 2 * case.batch * case.heads * case.tokens * per_query


# --- inputs --------------------------------------------------------------------------------------

def _inputs(case: BenchCase, device: torch.device, dtype: torch.dtype, backward: bool) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    b, h, w, nh, d, P = case.batch, case.height, case.width, case.heads, case.head_dim, case.pool

    def r(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype).requires_grad_(backward)

    i = dict(q=r(b, h, w, nh, d), k=r(b, h, w, nh, d), v=r(b, h, w, nh, d), query_embedding=r(nh, d, std=0.02),
             temperature=r(nh, std=0.5), pool_bias=r(nh, h * w, P, std=0.5))
    if case.window:
        L = case.window ** 2
        i.update(k_pool=r(b, P, nh, d), v_pool=r(b, P, nh, d), local_bias=r(nh, L, std=0.02),
                 learnable_tokens=r(nh, d, L, std=0.02), learnable_bias=r(nh, L, std=0.02))
    i["grad"] = torch.randn(b, h, w, nh, d, generator=g).to(device=device, dtype=dtype)
    return i


def _call(i: dict, case: BenchCase, backend: str) -> torch.Tensor:
    if not case.window:
        return length_scaled_attention(i["q"], i["k"], i["v"], query_embedding=i["query_embedding"],
                                       temperature=i["temperature"], bias=i["pool_bias"], backend=backend)
    return aggregated_attention(i["q"], i["k"], i["v"], i["k_pool"], i["v_pool"], query_embedding=i["query_embedding"],
                                temperature=i["temperature"], pool_bias=i["pool_bias"], local_bias=i["local_bias"],
                                learnable_tokens=i["learnable_tokens"], learnable_bias=i["learnable_bias"],
                                window_size=case.window, backend=backend)


def _op_args(i: dict, case: BenchCase) -> tuple:
    """The dispatcher's arguments for ``why_not``."""
    if case.window:
        k, v, kp, vp = i["k"], i["v"], i["k_pool"], i["v_pool"]
    else:
        k, v, kp, vp = None, None, i["k"].flatten(1, 2), i["v"].flatten(1, 2)
    small = [i.get(n) for n in ("pool_bias", "local_bias", "query_embedding", "temperature", "learnable_tokens",
                                "learnable_bias")]
    params = check_aggregated_inputs(i["q"], k, v, kp, vp, *small, case.window)
    return (i["q"], k, v, kp, vp, *small, params)


# --- FlexAttention's view of the op --------------------------------------------------------------

def flex_mods(case: BenchCase, local_bias: Optional[torch.Tensor], pool_bias: torch.Tensor):
    """``(mask_mod, score_mod)`` over keys ``[N local keys (row-major) | P pooled keys]`` (length-
    scaled: the N keys only, no mask)."""
    n, width, ws = case.tokens, case.width, case.window or 1
    r = ws // 2

    def slot(q_idx, kv_idx):
        dy = kv_idx // width - q_idx // width
        dx = kv_idx % width - q_idx % width
        return dy, dx

    def mask_mod(b, h, q_idx, kv_idx):
        dy, dx = slot(q_idx, kv_idx)
        return (kv_idx >= n) | ((dy.abs() <= r) & (dx.abs() <= r))

    def score_mod(score, b, h, q_idx, kv_idx):
        if not case.window:
            return score + pool_bias[h, q_idx, kv_idx].to(score.dtype)
        dy, dx = slot(q_idx, kv_idx)
        l = ((dy + r).clamp(0, ws - 1) * ws + (dx + r).clamp(0, ws - 1))
        pooled = pool_bias[h, q_idx, (kv_idx - n).clamp(min=0)]
        return score + torch.where(kv_idx >= n, pooled, local_bias[h, l]).to(score.dtype)

    return (mask_mod if case.window else None), score_mod


def _flex_step(i: dict, case: BenchCase, device: torch.device, cache: dict):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, h, w, nh, d = i["q"].shape
    n = case.tokens
    mask_mod, score_mod = flex_mods(case, i.get("local_bias"), i["pool_bias"])
    kv_len = n + case.pool if case.window else n
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, n, kv_len, device=str(device))
    if device.type == "cuda":
        if "flex" not in cache:
            cache["flex"] = torch.compile(flex_attention, dynamic=False)
        attend = cache["flex"]
    else:
        def attend(*a, **kw):
            with warnings.catch_warnings():  # "use torch.compile": deliberately not on the CPU
                warnings.simplefilter("ignore", UserWarning)
                return flex_attention(*a, **kw)
    scale = F.softplus(i["temperature"].float())[:, None] * length_scale(case.params, device).reshape(1, n)  # [nh, N]

    def heads_first(t):  # [B, H, W, nh, c] -> [B, nh, N, c]
        return t.reshape(b, n, nh, -1).transpose(1, 2)

    def call():
        q_hat = F.normalize(heads_first(i["q"]).float(), dim=-1)
        s = ((q_hat + i["query_embedding"].float()[None, :, None]) * scale[None, :, :, None]).to(i["q"].dtype)
        k_hat = F.normalize(heads_first(i["k"]).float(), dim=-1).to(i["q"].dtype)
        v = heads_first(i["v"])
        if case.window:
            kp = F.normalize(i["k_pool"].transpose(1, 2).float(), dim=-1).to(i["q"].dtype)
            keys, values = torch.cat([k_hat, kp], dim=2), torch.cat([v, i["v_pool"].transpose(1, 2)], dim=2)
        else:
            keys, values = k_hat, v
        out = attend(s, keys, values, score_mod=score_mod, block_mask=block_mask, scale=1.0)
        out = out.transpose(1, 2).reshape(b, h, w, nh, -1)
        if case.window:  # the learnable-token term, outside the softmax (the reference's unfold)
            ws = case.window
            t = torch.einsum("bnhd,hdl->bnhl", q_hat.transpose(1, 2), i["learnable_tokens"].float()) \
                + i["learnable_bias"].float()
            v_win = F.pad(i["v"], (0, 0, 0, 0, ws // 2, ws // 2, ws // 2, ws // 2))
            v_win = v_win.unfold(1, ws, 1).unfold(2, ws, 1).flatten(-2)  # [B, H, W, nh, d, L]
            out = out + torch.einsum("byxhl,byxhvl->byxhv", t.reshape(b, h, w, nh, -1), v_win.float()).to(out.dtype)
        return out

    return call


# --- one case ------------------------------------------------------------------------------------

def runner(backend: str, case: BenchCase, device: torch.device, dtype: torch.dtype, backward: bool,
           cache: Dict[Tuple, Callable]) -> Tuple[Optional[Callable[[], object]], Optional[str]]:
    """(a closure running one forward [+ backward], None) or (None, why the backend cannot run)."""
    i = _inputs(case, device, dtype, backward)
    grad = i.pop("grad")
    leaves = list(i.values())
    if backend in ("triton", "reference"):
        reason = aggregated_attention_op.why_not(backend, *_op_args(i, case))
        if reason is not None:
            return None, reason

        def call():
            return _call(i, case, backend)
    elif backend == "flex":
        if backward and device.type != "cuda":
            return None, f"FlexAttention has no backward on {device.type} (torch {torch.__version__})"
        try:
            call = _flex_step(i, case, device, cache)
        except ImportError as e:
            return None, f"torch {torch.__version__} has no flex_attention ({e})"
    else:
        return None, f"unknown backend {backend!r} (this op has {', '.join(BACKENDS)})"

    return make_step(call, leaves, grad, backward), None
