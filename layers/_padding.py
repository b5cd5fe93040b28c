"""Zero padding at the end of the spatial axes of channels-last tensors, and the crop back:
how mixers make any input size fit the window / block / kernel their op needs.

Sizes may be ints (eager) or symbolic sizes (``torch.export`` with dynamic height and width):
the helpers decide only what is known for every size (``statically_known_true``), so an exported
graph pads and crops by whatever amount its input needs instead of guarding on the example's."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models import register_notrace_function
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["pad_spatial_end", "crop_spatial", "round_up", "ceil_div", "padded_blocks"]


def ceil_div(n, d: int):
    """``ceil(n / d)`` for an int or symbolic size ``n`` (integer arithmetic: no float, no guard)."""
    return (n + d - 1) // d


def round_up(n, multiple: int):
    """The smallest multiple of ``multiple`` that is >= ``n`` (an int or symbolic size); written
    as ``multiple * ceil_div(n, multiple)`` so a symbolic result is provably a multiple."""
    return ceil_div(n, multiple) * multiple


def padded_blocks(n, block: int):
    """The size a blocked mixer pads an axis of size ``n`` to: ``round_up(n, block)``.

    A symbolic size (``torch.export``) is padded to at least two blocks: the extra block holds
    only padding, attends only to itself and is cropped, so real positions get what they get at
    one block, and a block count provably >= 2 spares the exported graph torch's decisions "is
    this axis of size 1?" (each a guard on the example size)."""
    if isinstance(n, torch.SymInt):
        return block * torch.sym_max(ceil_div(n, block), 2)
    return round_up(n, block)


def _known_equal(a, b) -> bool:
    return statically_known_true(a == b)


@register_notrace_function  # the padding depends on the input size: one FX node
def pad_spatial_end(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Zero-pads ``x: [B, *spatial, C]`` with ``pad[a]`` positions at the end of spatial axis ``a``."""
    if all(_known_equal(p, 0) for p in pad):
        return x
    widths = [0, 0]  # F.pad pairs run from the last axis; channels are not padded
    for p in reversed(pad):
        widths += [0, p]
    return F.pad(x, widths)


@register_notrace_function  # the crop depends on the input size: one FX node
def crop_spatial(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``x: [B, *padded, C]`` cut back to ``[B, *spatial, C]``."""
    if all(_known_equal(n, s) for n, s in zip(x.shape[1:-1], spatial)):
        return x
    if not any(isinstance(s, torch.SymInt) for s in spatial):
        return x[(slice(None),) + tuple(slice(0, s) for s in spatial)]
    # A symbolic size (torch.export): a slice that may or may not cut anything makes torch decide
    # whether the result is contiguous (a guard on the example size); a gather of the kept
    # positions is a new contiguous tensor at every size.
    for axis, (n, s) in enumerate(zip(x.shape[1:-1], spatial)):
        if not _known_equal(n, s):
            x = x.index_select(1 + axis, torch.arange(s, device=x.device))
    return x
