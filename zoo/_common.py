"""Small pieces every family file shares (timm conventions)."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from timm.models import checkpoint_seq

__all__ = ["StagedModel", "check_global_pool", "drop_path_rates", "run_blocks"]

GLOBAL_POOLS = ("avg", "")


def check_global_pool(global_pool: str) -> str:
    """``global_pool`` if attnzoo's heads support it ('avg', or '' to keep the feature map)."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> List[List[float]]:
    """Stochastic depth per block, rising linearly from 0 to ``drop_path_rate`` over all blocks
    (timm's ``torch.linspace`` schedule, computed without a tensor so meta-device builds work),
    split per stage."""
    total = sum(depths)
    flat = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    return [flat[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]


def run_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``stage.blocks(x)``, under timm's gradient checkpointing when ``stage.grad_checkpointing``
    is set (every family's stage has both attributes)."""
    if stage.grad_checkpointing and not torch.jit.is_scripting():
        return checkpoint_seq(stage.blocks, x)
    return stage.blocks(x)


def _check_images(model: nn.Module, args: tuple) -> None:
    """``model(x)`` takes a batch of images ``[B, C, H, W]`` (B may be 0): one clear error for
    anything else instead of a failure deep inside a stem or a mixer. Shapes only, so the check
    costs nothing under torch.compile / torch.export."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{type(model).__name__} expects a tensor of images [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (one image: add the batch axis, x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"{type(model).__name__} expects images [B, C, H, W] (4 dims), got shape {tuple(x.shape)}{hint}")


class StagedModel(nn.Module):
    """Base of every family's model: a ``stem`` and ``stages`` (each with ``grad_checkpointing``),
    parameters named ``stem.*`` / ``stages.<i>.*``. Gives timm's ``set_grad_checkpointing`` and
    ``group_matcher`` (coarse: one group per stage; fine: the family's ``fine_groups``, timm's
    ``(regex, suffix)`` pairs) and ``reset_classifier`` (the head on the model's device and dtype;
    the family builds it in ``_reset_head``). ``attnzoo.mm`` freezes stages through the coarse groups."""

    fine_groups: Tuple[Tuple[str, Optional[Tuple[int, ...]]], ...] = ()

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.register_forward_pre_hook(_check_images)

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        """The family's part of ``reset_classifier``: set ``num_classes`` / the pooling and build ``head``."""
        raise NotImplementedError

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """timm's: a new classifier for ``num_classes`` (0: none, the pooled features come out), the
        pooling kept unless ``global_pool`` is given ('avg', or '' for the feature map). The new head
        is built on the model's device and in its dtype, as timm's models do (a model on 'meta'
        stays there, a float64 model gets a float64 head) and in the model's train / eval mode."""
        ref = next(self.parameters(), None)
        with torch.device(ref.device) if ref is not None else contextlib.nullcontext():
            self._reset_head(num_classes, global_pool)
        if ref is not None:
            self.head.to(dtype=ref.dtype)
        self.head.train(self.training)  # a fresh module would be in train mode

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else list(self.fine_groups))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable
