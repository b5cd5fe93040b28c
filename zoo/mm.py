"""MMDetection 3 / MMSegmentation 1 backbone adapter: every attnzoo model as an OpenMMLab backbone.

Use from a config (see configs/)::

    custom_imports = dict(imports=["attnzoo.mm"], allow_failed_imports=False)
    model = dict(backbone=dict(type="AttnZooBackbone", model_name="nat_tiny", out_indices=(0, 1, 2, 3)))

Importing this module registers ``AttnZooBackbone`` into ``mmdet.registry.MODELS`` and
``mmseg.registry.MODELS`` (whichever is installed). ``import attnzoo`` never imports this module,
so attnzoo itself does not need OpenMMLab.

The backbone contract is MMDetection's:

* ``out_indices``: indices into the model's *stage* outputs (``feature_info`` without timm's
  stride-2 stem feature that MaxViT / HaloNet report), so ``(0, 1, 2, 3)`` means strides 4-32 for
  every four-stage family (SHViT has three stages, strides 16 / 32 / 64). Outputs are NCHW.
* ``frozen_stages``: ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages ``0..k-1``
  (as MMDetection's Swin). Frozen parameters get ``requires_grad=False`` and their modules stay in
  eval mode across ``.train()``.
* ``norm_eval``: BatchNorm layers stay in eval mode during training (frozen running stats).
* ``with_cp``: gradient checkpointing of the stages (timm's ``set_grad_checkpointing``).
* ``out_norm``: a LayerNorm over channels on each output, as the detection variants of the
  transformer families (Swin, NAT, BiFormer, TransNeXt, DaViT) add; ``None`` for none.
* ``init_cfg=dict(type="Pretrained", checkpoint=...)``: a local file (safetensors or a torch
  pickle, read with ``weights_only=True``), ``hf-hub:<org>/<repo>[/<filename>]`` or an http(s) URL
  (downloaded once into attnzoo's cache under a name derived from the whole URL), verified by
  ``attnzoo.hub`` (sha256 against the Hub's, finite floating tensors, dtypes, shapes). The family's
  ``checkpoint_filter_fn`` runs first, so timm's, attnzoo's and the authors' checkpoint formats all
  load; a key the model lacks (other than the classifier and the parts pruned away) is an error.
"""
from __future__ import annotations

import importlib
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import timm

from ._registry import get_entry
from .hub import check_state_dict, fetch_checkpoint, read_state_dict

_EXTRA = "pip install -e '.[mm]' in the attnzoo checkout"
_MMCV = "attnzoo install-mmcv (builds mmcv 2.1.0 with its ops for this torch once, 7-15 min on 2 cores, then caches it)"


def _missing_openmmlab() -> Optional[str]:
    """None when what attnzoo.mm needs imports (mmengine, mmcv with its compiled ops, mmdet or
    mmseg); else a sentence naming the missing piece and the command that installs it."""
    try:
        importlib.import_module("mmengine.model")
    except ImportError as e:
        return f"attnzoo.mm needs OpenMMLab and mmengine does not import ({e}); run {_EXTRA}, then {_MMCV}"
    try:
        mmcv = importlib.import_module("mmcv")
    except ImportError as e:
        return (f"attnzoo.mm: mmdet and mmseg need mmcv, which does not import ({e}); the package index has no mmcv "
                f"wheel with compiled ops for current torch: run {_MMCV}")
    try:
        importlib.import_module("mmcv.ops")
    except Exception as e:  # mmcv-lite, or ops built for another torch
        return (f"attnzoo.mm: mmcv {getattr(mmcv, '__version__', '?')} is installed but its compiled ops do not load "
                f"({type(e).__name__}: {e}); run {_MMCV}")
    errors = []
    for scope in ("mmdet", "mmseg"):
        try:
            importlib.import_module(f"{scope}.registry")
        except ImportError as e:
            errors.append(f"{scope}: {e}")
    if len(errors) == 2:
        return f"attnzoo.mm needs mmdet or mmseg and neither imports ({'; '.join(errors)}); run {_EXTRA}"
    return None


_MISSING = _missing_openmmlab()
if _MISSING is not None:
    raise ImportError(_MISSING)

from mmengine.model import BaseModule  # noqa: E402

__all__ = ["AttnZooBackbone", "registered_scopes"]


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _stage_of(name: str, stem: str, blocks) -> Optional[int]:
    """-1 for a stem parameter, the stage index for a stage parameter, None otherwise (norm, head).

    ``stem`` / ``blocks`` are the model's ``group_matcher(coarse=True)``: a regex, or timm's list of
    ``(regex, suffix)`` whose regexes capture the stage index (others, like a final conv, are not stages).
    """
    if re.match(stem, name):
        return -1
    for pattern in ([blocks] if isinstance(blocks, str) else [p for p, _ in blocks]):
        m = re.match(pattern, name)
        if m and m.groups():
            return int(m.group(1))
    return None


def _read_checkpoint(checkpoint: str, model_name: str) -> Dict[str, torch.Tensor]:
    """The state dict of ``init_cfg``'s checkpoint, fetched and verified by ``attnzoo.hub``: a Hub
    file checked against its sha256 (no filename: picked from the repo's listing, never by trying a
    second name after an error), a URL cached under a name derived from the whole URL, a local file
    as it is. Errors are ``attnzoo.hub.PretrainedLoadError`` naming the model, source and file."""
    hint = ("download the file yourself and give its path: init_cfg=dict(type='Pretrained', "
            "checkpoint='/path/to/file')")
    return read_state_dict(fetch_checkpoint(checkpoint, model=model_name, hint=hint), model=model_name)


class AttnZooBackbone(BaseModule):
    """An attnzoo (or any timm-registered attnzoo) model as a multi-scale NCHW backbone.

    Args:
        model_name: a registered attnzoo model (``attnzoo.list_models()``).
        out_indices: stage outputs to return (see the module docstring); None for every stage.
        frozen_stages: -1 none, 0 the stem, k the stem and the first k stages.
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: gradient checkpointing of the stages.
        out_norm: 'ln' for a LayerNorm on each output, None for none.
        drop_path_rate: stochastic depth of the model.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` (see the module docstring) or None.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``kernel_size`` where a family has it).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Optional[Sequence[int]] = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        out_norm: Optional[str] = "ln",
        drop_path_rate: float = 0.0,
        init_cfg: Optional[dict] = None,
        **model_kwargs,
    ):
        super().__init__(init_cfg=None)
        self.model_name = model_name
        get_entry(model_name)  # a clear error for names attnzoo does not have
        model = timm.create_model(model_name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **model_kwargs)
        info = list(model.feature_info)
        self._stem_offset = 1 if info and info[0]["module"].startswith("stem") else 0
        stages = info[self._stem_offset:]
        out_indices = tuple(range(len(stages))) if out_indices is None else tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i >= len(stages) for i in out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(f"out_indices must be distinct stage indices in [0, {len(stages) - 1}] for {model_name}, got {out_indices}")
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= len(stages):
            raise ValueError(f"frozen_stages must be an int in [-1, {len(stages)}] for {model_name}, got {frozen_stages!r}")
        if out_norm not in (None, "ln"):
            raise ValueError(f"out_norm must be 'ln' or None, got {out_norm!r}")
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = bool(norm_eval)
        self.channels = [stages[i]["num_chs"] for i in out_indices]
        self.strides = [stages[i]["reduction"] for i in out_indices]
        self._take = [i + self._stem_offset for i in out_indices]
        matcher = model.group_matcher(coarse=True)
        self._stem_re, self._blocks_re = matcher["stem"], matcher["blocks"]
        # Only what the outputs need is kept (no head, no final norm, no later stages), so
        # distributed training finds no unused parameters.
        model.prune_intermediate_layers(self._take, prune_norm=True, prune_head=True)
        if with_cp:
            model.set_grad_checkpointing(True)
        self.model = model
        self.out_norms = nn.ModuleList(_ChannelLayerNorm(c) if out_norm else nn.Identity() for c in self.channels)
        self._pretrained = None
        if init_cfg is not None:
            if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained" or not init_cfg.get("checkpoint"):
                raise ValueError(f"init_cfg must be dict(type='Pretrained', checkpoint=<file, URL or 'hf-hub:org/repo'>), got {init_cfg!r}")
            self._pretrained = str(init_cfg["checkpoint"])
        self._freeze()

    # --- weights -------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Loads ``init_cfg``'s checkpoint into the model (after the family's checkpoint filter)."""
        if self._pretrained is None:
            return
        state = _read_checkpoint(self._pretrained, self.model_name)
        family_module = sys.modules[get_entry(self.model_name).entrypoint.__module__]
        filter_fn = getattr(family_module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, self.model)
        check_state_dict(state, self.model, model_name=self.model_name, source=repr(self._pretrained))
        own = self.model.state_dict()
        with torch.device("meta"):
            full_keys = set(timm.create_model(self.model_name, num_classes=0).state_dict())
        stray = sorted(k for k in state if k not in own and k not in full_keys and not k.startswith(("head", "classifier", "fc.")))
        if stray:
            raise KeyError(f"checkpoint {self._pretrained!r} has keys {self.model_name} does not: {stray[:8]}{' ...' if len(stray) > 8 else ''}")
        missing = sorted(k for k in own if k not in state)
        if missing:
            raise KeyError(f"checkpoint {self._pretrained!r} lacks keys of {self.model_name}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        self.model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self._freeze()

    # --- frozen stages and norm_eval -----------------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = []
        for name, module in self.model.named_children():
            whole = (not isinstance(module, (nn.Sequential, nn.ModuleList))
                     or _stage_of(name + ".", self._stem_re, self._blocks_re) == -1)  # a Sequential stem
            for child_name, child in ([(name, module)] if whole else [(f"{name}.{i}", c) for i, c in enumerate(module)]):
                stage = _stage_of(child_name + ".", self._stem_re, self._blocks_re)
                if stage is not None and stage < self.frozen_stages:
                    modules.append(child)
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "AttnZooBackbone":
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``[B, 3, H, W]`` (any H, W) -> one NCHW map per ``out_indices``."""
        feats = self.model.forward_intermediates(x, indices=self._take, intermediates_only=True, output_fmt="NCHW")
        return tuple(norm(f) for norm, f in zip(self.out_norms, feats))


def _register() -> List[str]:
    scopes = []
    for scope in ("mmdet", "mmseg"):
        try:
            registry = importlib.import_module(f"{scope}.registry").MODELS
        except ImportError:
            continue
        registry.register_module(name="AttnZooBackbone", module=AttnZooBackbone, force=True)
        scopes.append(scope)
    if not scopes:
        raise ImportError("attnzoo.mm found neither mmdet nor mmseg: pip install 'attnzoo[mm]' (see README)")
    return scopes


registered_scopes = _register()
"""The OpenMMLab scopes ``AttnZooBackbone`` was registered into."""
