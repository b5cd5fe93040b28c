"""Ops take their small learned tensors (biases, embeddings, temperatures) in any floating dtype and
cast them to q's, as autocast needs (it leaves parameters in fp32); activations must still agree."""
from __future__ import annotations

import pytest
import torch

from attnzoo.kernels import aggregated_attention, length_scaled_attention


def _inputs(dtype, small_dtype, heads=2, d=8, h=5, w=6, p=4, ws=3):
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g).to(dt)  # noqa: E731
    act = dict(q=r(1, h, w, heads, d), k=r(1, h, w, heads, d), v=r(1, h, w, heads, d),
               k_pool=r(1, p, heads, d), v_pool=r(1, p, heads, d))
    small = dict(query_embedding=r(heads, d, dt=small_dtype), temperature=r(heads, dt=small_dtype),
                 pool_bias=r(heads, h * w, p, dt=small_dtype), local_bias=r(heads, ws * ws, dt=small_dtype),
                 learnable_tokens=r(heads, d, ws * ws, dt=small_dtype), learnable_bias=r(heads, ws * ws, dt=small_dtype))
    return act, small


def test_fp32_small_params_with_bf16_activations_equal_the_cast_call():
    act, small = _inputs(torch.bfloat16, torch.float32)
    out = aggregated_attention(**act, **small, window_size=3, backend="reference")
    cast = aggregated_attention(**act, **{k: t.bfloat16() for k, t in small.items()}, window_size=3, backend="reference")
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, cast)


def test_small_params_get_gradients_in_their_own_dtype():
    act, small = _inputs(torch.bfloat16, torch.float32)
    for t in small.values():
        t.requires_grad_(True)
    aggregated_attention(**act, **small, window_size=3, backend="reference").float().sum().backward()
    for name, t in small.items():
        assert t.grad is not None and t.grad.dtype == torch.float32, name


def test_length_scaled_attention_accepts_fp32_small_params():
    act, small = _inputs(torch.bfloat16, torch.float32)
    h, w = act["q"].shape[1:3]
    bias = torch.randn(2, h * w, h * w)
    out = length_scaled_attention(act["q"], act["k"], act["v"], query_embedding=small["query_embedding"],
                                  temperature=small["temperature"], bias=bias, backend="reference")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_activations_of_another_dtype_are_still_refused():
    act, small = _inputs(torch.float32, torch.float32)
    act["k_pool"] = act["k_pool"].bfloat16()
    with pytest.raises(ValueError, match=r"k_pool must have the dtype of q \(torch.float32\), got torch.bfloat16"):
        aggregated_attention(**act, **small, window_size=3)


def test_integer_small_params_are_refused():
    act, small = _inputs(torch.float32, torch.float32)
    small["temperature"] = torch.ones(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="temperature must be a floating point tensor, got dtype torch.int64"):
        aggregated_attention(**act, **small, window_size=3)


def test_small_params_on_another_device_are_refused():
    act, small = _inputs(torch.float32, torch.float32)
    small["query_embedding"] = small["query_embedding"].to("meta")
    with pytest.raises(ValueError, match=r"query_embedding must be on the device of q \(cpu\), got meta"):
        aggregated_attention(**act, **small, window_size=3)
