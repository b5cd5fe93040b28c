"""Registration of attnzoo models into timm, and the table of published figures.

Each family file declares its variants as data and calls ``register_family`` once; this module
creates one timm entrypoint per name (timm's ``register_model``), refusing any name that timm
already has, so importing attnzoo never changes what an existing ``timm.create_model`` name
builds.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import timm.models._registry as timm_registry

__all__ = ["Published", "ModelEntry", "register_family", "list_models", "get_entry", "timm_builtin_names"]


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
            return create(_name, pretrained=pretrained, **kwargs)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = module_name
        entrypoint.__doc__ = f"{family} '{name}' at {published.img_size}px; published figures: {published}."
        setattr(module, name, entrypoint)
        timm_registry.register_model(entrypoint)
        _ENTRIES[name] = ModelEntry(name, family, published, entrypoint)


def list_models(family: Optional[str] = None) -> List[str]:
    """Registered attnzoo model names (optionally of one family), in registration order."""
    return [n for n, e in _ENTRIES.items() if family is None or e.family == family]


def get_entry(name: str) -> ModelEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown attnzoo model {name!r}; registered: {', '.join(_ENTRIES)}") from None
