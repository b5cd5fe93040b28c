"""Small pieces every family file shares (timm conventions)."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

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


def _to_fmt(x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """``x`` (``[B, C, H, W]`` or ``[B, H, W, C]``, named by ``src``) in the ``dst`` layout (a view)."""
    if src == dst:
        return x
    return x.permute(0, 3, 1, 2) if dst == "NCHW" else x.permute(0, 2, 3, 1)


def _check_images(model: nn.Module, args: tuple) -> None:
    """``model(x)`` takes a batch of float images ``[B, C, H, W]`` (B may be 0): one clear error for
    anything else instead of a failure deep inside a stem or a mixer. Shapes and dtype only (static
    metadata), so the check costs nothing under torch.compile / torch.export."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{type(model).__name__} expects a tensor of images [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (one image: add the batch axis, x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"{type(model).__name__} expects images [B, C, H, W] (4 dims), got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{type(model).__name__} expects float images [B, C, H, W], got dtype {x.dtype}: images must be "
                        "floating point, normalised as the model's pretrained cfg says (timm.data.create_transform gives "
                        "that; from uint8: x.float() / 255, then subtract mean and divide by std)")


class StagedModel(nn.Module):
    """Base of every family's model: a ``stem`` and ``stages`` (each with ``grad_checkpointing``),
    parameters named ``stem.*`` / ``stages.<i>.*``, a ``head``. Gives timm's ``forward``,
    ``forward_features``, ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``,
    ``get_classifier``, ``reset_classifier`` (the head on the model's device and dtype; the family
    builds it in ``_reset_head``), ``set_grad_checkpointing`` and ``group_matcher`` (coarse: one
    group per stage; fine: the family's ``fine_groups``, timm's ``(regex, suffix)`` pairs).
    ``attnzoo.mm`` freezes stages through the coarse groups.

    What differs between families is data:

    - ``_stage_fmt``: the layout the stages emit, ``'NCHW'`` or ``'NHWC'``. ``forward_features``
      gives the model's ``output_fmt`` (timm's attribute; NCHW where the family sets none).
    - ``_norm_fmt``: the layout ``self.norm`` (the final norm between the last stage and the head,
      which ``norm=True`` applies to the last intermediate and ``prune_norm`` removes) takes; None
      where there is no such norm.
    - ``_stem_feature``: the stem's output is feature 0 (``_forward_stem`` gives it), the stages
      are features 1..n, as timm's MaxxVit and ByobNet.
    - ``_head_pools``: ``head`` is a module that pools and takes ``pre_logits`` (its ``fc`` is the
      classifier); otherwise the model pools, applies ``head_drop`` and the ``head`` classifier.
    """

    fine_groups: Tuple[Tuple[str, Optional[Tuple[int, ...]]], ...] = ()
    _stage_fmt: str = "NCHW"
    _norm_fmt: Optional[str] = None
    _stem_feature: bool = False
    _head_pools: bool = False

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.register_forward_pre_hook(_check_images)

    # --- per-family hooks (defaults cover most families) -------------------------------------

    def _forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(feature 0 where ``_stem_feature``, the stem's output for the stages)."""
        x = self.stem(x)
        return x, x

    def _after_last_stage(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the last stage inside the features (a final conv), in the stage layout."""
        return x

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm on features in the ``output_fmt`` layout."""
        if self._norm_fmt is None:
            return x
        fmt = self._features_fmt
        return _to_fmt(self.norm(_to_fmt(x, fmt, self._norm_fmt)), self._norm_fmt, fmt)

    def _prune_norm(self) -> None:
        """What ``prune_norm`` removes: the final norm."""
        if self._norm_fmt is not None:
            self.norm = nn.Identity()

    def _prune_last(self) -> None:
        """What pruning the last stage removes besides the head: what is sized for its output."""
        self._prune_norm()

    def _prune_head(self) -> None:
        self.reset_classifier(0, "")

    def _reset_head(self, num_classes: int, global_pool: Optional[str]) -> None:
        """The family's part of ``reset_classifier``: set ``num_classes`` / the pooling and build
        ``head`` (here: a linear classifier over ``num_features``)."""
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def _features_fmt(self) -> str:
        return getattr(self, "output_fmt", "NCHW")

    # --- timm's conventions -------------------------------------------------------------------

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc if self._head_pools else self.head

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

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Feature maps for ``indices`` (timm semantics; the model's ``feature_info`` lists them),
        NCHW or NHWC. ``norm`` applies the final norm to the last stage's output (nothing where the
        family has none between the stages and the head). Returns the intermediates, or
        ``(final features as forward_features gives them, intermediates)``."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        _check_images(self, (x,))  # features_only=True models (timm's FeatureGetterNet) enter here, not through forward
        first = int(self._stem_feature)
        take_indices, max_index = feature_take_indices(len(self.stages) + first, indices)
        intermediates = []

        def keep(y: torch.Tensor, fmt: str) -> None:
            y = _to_fmt(y, fmt, output_fmt)
            # NCHW maps of channels-last stages are copied to contiguous memory, as timm's
            intermediates.append(y.contiguous() if output_fmt == "NCHW" and self._stage_fmt == "NHWC" else y)

        feature, x = self._forward_stem(x)
        if first and 0 in take_indices:
            keep(feature, self._stage_fmt)
        last = len(self.stages) - 1
        stages = self.stages if not stop_early else self.stages[: max_index + 1 - first]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i == last:
                x = self._after_last_stage(x)
            if i + first in take_indices:
                if norm and i == last:
                    keep(self._final_norm(_to_fmt(x, self._stage_fmt, self._features_fmt)), self._features_fmt)
                else:
                    keep(x, self._stage_fmt)
        if intermediates_only:
            return intermediates
        x = _to_fmt(x, self._stage_fmt, self._features_fmt)
        if len(stages) == len(self.stages):
            x = self._final_norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True) -> List[int]:
        """timm's: drops the stages after the last of ``indices``; ``prune_norm`` removes the final
        norm, ``prune_head`` the classifier (both go when the last stage does: they are sized for
        it, and ``num_features`` becomes the new last feature's width)."""
        first = int(self._stem_feature)
        take_indices, max_index = feature_take_indices(len(self.stages) + first, indices)
        prune_end = max_index + 1 - first < len(self.stages)
        self.stages = self.stages[: max_index + 1 - first]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self._prune_last()
        if prune_norm:
            self._prune_norm()
        if prune_head or prune_end:
            self._prune_head()
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> features of the last stage (after the final norm), ``output_fmt`` layout."""
        x = self._after_last_stage(self.stages(self.stem(x)))
        return self._final_norm(_to_fmt(x, self._stage_fmt, self._features_fmt))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> logits (pooled); with ``global_pool=''`` the classifier acts on every position
        of the map, which keeps its layout."""
        if self._head_pools:
            return self.head(x, pre_logits=pre_logits)
        nhwc = self._features_fmt == "NHWC"
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2) if nhwc else (2, 3))
        x = self.head_drop(x)
        if pre_logits:
            return x
        if self.global_pool != "avg" and not nhwc:  # the NCHW map (static: FX and compile see no shape-dependent branch)
            return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
