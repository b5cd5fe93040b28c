"""Entry point of the ``attnzoo`` console script: ``attnzoo.tools.cli.main`` without importing the
``attnzoo`` package first.

``import attnzoo`` imports torch and timm and registers every model (seconds); a console script
``attnzoo.tools.cli:main`` would pay that before parsing ``--help``. This top-level module (installed
beside ``attnzoo``, from tools/) finds ``attnzoo/tools/cli.py`` through the import system's finders
without running the packages' ``__init__`` files and executes it as ``attnzoo.tools.cli``; a
sub-command's own module is then imported normally (``attnzoo`` and all), when it runs.

``find_spec`` and ``load_detached`` are also what ``attnzoo.tools.cli`` uses to read a command's
arguments and docstring without importing its package.
"""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Optional, Sequence

_CLI = "attnzoo.tools.cli"


def find_spec(fullname: str):
    """The module spec of ``fullname``, walking its parents' search paths without importing them
    (None when some part is not found)."""
    spec, path = None, None
    parts = fullname.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path) if find is not None else None
            if spec is not None:
                break
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec


def load_detached(fullname: str) -> Optional[ModuleType]:
    """Executes module ``fullname`` without importing its parent packages and returns it, leaving
    ``sys.modules`` as it was (None when it is not found). Only for modules whose top level imports
    nothing from their own package: the module object is a one-off copy, for reading what it
    defines (a command's argument function), not the module a later ``import`` gives."""
    spec = find_spec(fullname)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(fullname)
    sys.modules[fullname] = module  # dataclasses and typing look a class's module up while it is defined
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            sys.modules.pop(fullname, None)
        else:
            sys.modules[fullname] = previous
    return module


def _load_cli():
    if _CLI in sys.modules:
        return sys.modules[_CLI]
    spec = find_spec(_CLI)
    if spec is None or spec.loader is None:  # an unusual install: take the ordinary (slower) import
        return importlib.import_module(_CLI)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_CLI] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_CLI]
        raise
    return module


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _load_cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
