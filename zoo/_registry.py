"""Registration of attnzoo models into timm, and the table of published figures.

Each family file declares its variants as data and calls ``register_family`` once; this module
creates one timm entrypoint per name (timm's ``register_model``), refusing any name that timm
already has, so importing attnzoo never changes what an existing ``timm.create_model`` name
builds.

The entrypoint is where the arguments every family shares are handled once: timm's factory
arguments ``device=`` / ``dtype=`` (``create_model(name, device='meta')`` builds without
allocating) and ``backend=`` (checked here, so a bad name fails at ``create_model``, not at the
first forward).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import timm.models._registry as timm_registry
import torch
from timm.models._features_fx import FeatureGraphNet
from torch import nn

from .kernels import BACKENDS

__all__ = ["Published", "ModelEntry", "build", "families", "register_family", "list_models", "get_entry", "timm_builtin_names"]


@dataclass(frozen=True)
class Published:
    """A model's figures as its authors published them (ImageNet-1k validation)."""

    params_m: Optional[float]  # millions of parameters (None when not published)
    gflops: Optional[float]  # GFLOPs as the papers count them (multiply-adds) at ``img_size``
    top1: Optional[float]  # top-1 accuracy, % (None when not published)
    img_size: int  # the resolution the figures (and the released weights) are for
    source: str  # where the figures come from


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    published: Published
    entrypoint: Callable = field(repr=False)


_ENTRIES: Dict[str, ModelEntry] = {}
_TIMM_BUILTIN = frozenset(timm_registry._model_entrypoints)  # names timm had before attnzoo registered


def timm_builtin_names() -> frozenset:
    """Every model name timm registered before attnzoo's own registrations."""
    return _TIMM_BUILTIN


def register_family(family: str, module_name: str, create: Callable, variants: Dict[str, Published]) -> None:
    """Registers ``create(name, pretrained=..., **kwargs)`` into timm under each variant name.

    ``module_name`` is the family module (``attnzoo.nat``); its ``default_cfgs`` must hold a
    pretrained cfg for every name. timm keys its module index on the last dotted component.
    """
    module = sys.modules[module_name]
    for name, published in variants.items():
        if name in _TIMM_BUILTIN:
            raise ValueError(f"model name {name!r} is already a timm model; attnzoo names must not shadow timm's")
        if name in _ENTRIES:
            raise ValueError(f"model name {name!r} is registered twice")

        def entrypoint(pretrained: bool = False, _name: str = name, **kwargs):
            return build(create, _name, pretrained=pretrained, **kwargs)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        entrypoint.__doc__ = f"{family} '{name}' at {published.img_size}px; published figures: {published}."
        setattr(module, name, entrypoint)
        timm_registry.register_model(entrypoint)
        _ENTRIES[name] = ModelEntry(name, family, published, entrypoint)


def _check_factory_args(name: str, device, dtype, backend) -> None:
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"{name}: backend must be None or one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"{name}: dtype must be a floating-point torch.dtype (torch.float32, torch.bfloat16, ...), "
                         f"got {dtype!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{name}: device must be a torch.device or a device string ('cpu', 'cuda:0', 'meta'), "
                             f"got {device!r}") from e


def build(create: Callable, name: str, pretrained: bool = False, *, device=None, dtype=None, **kwargs) -> nn.Module:
    """``create(name, pretrained=..., **kwargs)`` with timm's factory arguments applied.

    ``device``: every parameter and buffer is created there (construction runs under
    ``torch.device(device)``, so ``'meta'`` allocates nothing); a final ``.to(device)`` moves any
    tensor a constructor pinned elsewhere. ``dtype``: floating-point parameters and buffers are
    converted to it after construction (integer index buffers stay integer), so tables computed
    at construction keep fp32 accuracy. ``backend`` is validated here and passed on.
    """
    _check_factory_args(name, device, dtype, kwargs.get("backend"))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = create(name, pretrained=pretrained, **kwargs)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    if isinstance(model, FeatureGraphNet) and _ENTRIES[name].family in CHANNELS_LAST_FAMILIES:
        fx_features_nchw(model)
    return model


# Families whose stages run channels-last ([B, H, W, C]; their forward_intermediates permutes).
# tests/zoo/test_fx.py checks every family's FX features against the default wrapper's.
CHANNELS_LAST_FAMILIES = frozenset({"NAT", "DiNAT", "DaViT", "BiFormer", "TransNeXt"})


def fx_features_nchw(net: FeatureGraphNet) -> None:
    """Makes ``features_only=True, feature_cls='fx'`` of a channels-last family return NCHW maps,
    as the default wrapper does: timm's FX extractor returns each ``feature_info`` module's output
    as it is, so a permute node goes before each output, in the train and the eval graph."""
    gm = net.graph_module
    for graph in dict.fromkeys((getattr(gm, "train_graph", gm.graph), getattr(gm, "eval_graph", gm.graph), gm.graph)):
        output = next(n for n in graph.nodes if n.op == "output")
        values = dict(output.args[0])
        with graph.inserting_before(output):
            for key, node in list(values.items()):
                values[key] = graph.call_method("permute", (node, 0, 3, 1, 2))
        output.args = (values,)
        graph.lint()
    gm.recompile()


def families() -> List[str]:
    """The registered family names, in registration order."""
    return list(dict.fromkeys(e.family for e in _ENTRIES.values()))


def list_models(family: Optional[str] = None) -> List[str]:
    """Registered attnzoo model names (optionally of one family, matched case-insensitively), in
    registration order. An unknown family raises ValueError naming the registered ones."""
    if family is None:
        return list(_ENTRIES)
    wanted = family.casefold() if isinstance(family, str) else None
    names = [n for n, e in _ENTRIES.items() if e.family.casefold() == wanted]
    if not names:
        raise ValueError(f"unknown attnzoo family {family!r}; registered families: {', '.join(families())}")
    return names


def get_entry(name: str) -> ModelEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown attnzoo model {name!r}; registered: {', '.join(_ENTRIES)}") from None
