"""Zero padding at the end of the spatial axes of channels-last tensors, and the crop back:
how mixers make any input size fit the window / block / kernel their op needs."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models import register_notrace_function

__all__ = ["pad_spatial_end", "crop_spatial"]


@register_notrace_function  # the padding depends on the input size: one FX node
def pad_spatial_end(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Zero-pads ``x: [B, *spatial, C]`` with ``pad[a]`` positions at the end of spatial axis ``a``."""
    if not any(pad):
        return x
    widths = [0, 0]  # F.pad pairs run from the last axis; channels are not padded
    for p in reversed(pad):
        widths += [0, p]
    return F.pad(x, widths)


@register_notrace_function  # the crop depends on the input size: one FX node
def crop_spatial(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``x: [B, *padded, C]`` cut back to ``[B, *spatial, C]``."""
    if tuple(x.shape[1:-1]) == tuple(spatial):
        return x
    return x[(slice(None),) + tuple(slice(0, s) for s in spatial)]
