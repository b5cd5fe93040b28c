"""Input checks every op's ``_params.py`` (and the mixers in layers/) share: each raises
ValueError naming the argument."""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["check_int", "check_tensors", "check_like", "check_small_params", "cast_small_params", "softmax_scale"]


def check_int(name: str, value, minimum: int = 1, odd: bool = False) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum`` (and odd when ``odd``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be an {'odd ' if odd else ''}int >= {minimum}, got {value!r}")
    return value


def check_tensors(**tensors) -> None:
    """Every argument is a torch.Tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_like(ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """Every tensor has the dtype and the device of ``ref``."""
    for name, t in tensors.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def check_small_params(ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """Every tensor (a small learned one: bias, embedding, temperature) is floating point and on the
    device of ``ref``. Its dtype may differ (fp32 parameters under autocast meet bf16 / fp16
    activations): the op casts it to the compute dtype (``cast_small_params``) instead of refusing it."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def cast_small_params(dtype: torch.dtype, *tensors: Optional[torch.Tensor]):
    """``tensors`` cast to ``dtype`` (None stays None): ops compute in the dtype of q, and the small
    learned tensors follow it (autocast leaves parameters in fp32; it casts only its own ops' inputs)."""
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def softmax_scale(scale: Optional[float], head_dim: int) -> float:
    """``scale`` as a float, ``head_dim ** -0.5`` when None."""
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be None or a finite float, got {scale!r}")
    return float(scale)
