"""Build (once) and install mmcv 2.1.0 with its compiled ops for the installed torch.

MMDetection 3.3 and MMSegmentation 1.2 need ``mmcv >= 2.0.0rc4, < 2.2.0`` *with* compiled ops
(``mmcv-lite`` lacks them and ``mmdet.models`` fails to import). The package registry holds no
mmcv wheel for current torch, only the 2.1.0 source, whose setup.py asks for ``-std=c++17`` while
current torch headers need C++20, and whose build needs ``setuptools < 70``. This command:

1. installs nothing if an mmcv 2.1.0 whose ops load is already installed;
2. else installs the wheel cached for this (mmcv, torch, python, CUDA) combination, if any;
3. else downloads the sdist from the package index (hash-checked), raises its C++ standard to
   C++20 and compiles without debug information (``-g0`` after Python's ``-g``: the same ``-O3``
   code, 35-40% less compile time per file, measured on roi_align.cpp and pybind.cpp), builds a
   wheel against the installed torch without build isolation, with ``setuptools < 70`` and ninja
   in a private build directory and ``MMCV_WITH_OPS=1`` (7 minutes on a 2-core EPYC, longer on slower cores), stores it
   in the cache and installs it.

Cache: ``$ATTNZOO_WHEEL_CACHE`` or ``~/.cache/attnzoo/wheels``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

MMCV_VERSION = "2.1.0"
SDIST = f"mmcv-{MMCV_VERSION}.tar.gz"
SDIST_SHA256 = "d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f"
CXX_STD = "c++20"
# Appended to mmcv's own C++ flags, so they come after Python's ``-g -O3``: no debug information
# (it roughly doubles the time g++ spends on torch's headers), optimisation untouched.
EXTRA_CXX_FLAGS = ["-g0"]
BUILD_REQUIREMENTS = ["setuptools<70", "ninja"]
# Bump when the build recipe changes so that wheels built by an older recipe are not reused.
RECIPE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, help="wheel cache (default $ATTNZOO_WHEEL_CACHE or ~/.cache/attnzoo/wheels)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: CPU count)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached wheel exists")


def _cache_dir(arg: Optional[Path]) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("ATTNZOO_WHEEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnzoo" / "wheels"


def build_key() -> str:
    """What the compiled ops depend on: mmcv, torch (incl. its CUDA build), python, the recipe."""
    import torch

    cuda = f"cu{torch.version.cuda.replace('.', '')}" if (torch.cuda.is_available() and torch.version.cuda) else "cpu"
    return f"mmcv-{MMCV_VERSION}_torch-{torch.__version__.split('+')[0]}-{cuda}_cp{sys.version_info[0]}{sys.version_info[1]}_{CXX_STD}_r{RECIPE}"


def mmcv_ops_ok() -> Optional[str]:
    """None when mmcv MMCV_VERSION with loadable ops is installed, else why not (in a subprocess:
    a broken extension must not poison this process)."""
    code = ("import mmcv, mmcv.ops, sys; from mmcv.utils import ext_loader; ext_loader.load_ext('_ext', ['nms']); "
            "sys.stdout.write(mmcv.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"mmcv with ops does not import: {tail}"
    if proc.stdout.strip() != MMCV_VERSION:
        return f"mmcv {proc.stdout.strip()} is installed, want {MMCV_VERSION}"
    return None


def _pip(*args: str, env: Optional[dict] = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True, env=env)


def _download_sdist(dest: Path) -> Path:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    req = urllib.request.Request(f"{index}/mmcv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        files = json.load(resp)["files"]
    entry = next((f for f in files if f["filename"] == SDIST), None)
    if entry is None:
        raise RuntimeError(f"{SDIST} is not on the index {index}")
    path = dest / SDIST
    with urllib.request.urlopen(entry["url"], timeout=600) as resp, open(path, "wb") as out:
        shutil.copyfileobj(resp, out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{SDIST}: sha256 {digest} != pinned {SDIST_SHA256}")
    return path


def _raise_cxx_standard(setup_py: Path) -> None:
    text = setup_py.read_text()
    pattern = "extra_compile_args['cxx'] = ['-std=c++17']"
    if text.count(pattern) != 1:
        raise RuntimeError(f"{setup_py}: expected exactly one {pattern!r} to raise to {CXX_STD}; the sdist changed")
    flags = ", ".join(repr(f) for f in [f"-std={CXX_STD}", *EXTRA_CXX_FLAGS])
    setup_py.write_text(text.replace(pattern, f"extra_compile_args['cxx'] = [{flags}]"))


def build_wheel(out_dir: Path, jobs: Optional[int]) -> Path:
    """Builds the mmcv wheel against the installed torch; returns its path in ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="attnzoo-mmcv-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(_download_sdist(tmp)) as tar:
            tar.extractall(tmp, filter="data") if sys.version_info >= (3, 12) else tar.extractall(tmp)
        src = tmp / f"mmcv-{MMCV_VERSION}"
        _raise_cxx_standard(src / "setup.py")
        tools = tmp / "build-env"
        _pip("install", "-q", "--target", str(tools), *BUILD_REQUIREMENTS)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(tools), env.get("PYTHONPATH")])),
            PATH=os.pathsep.join([str(tools / "bin"), env.get("PATH", "")]),
            MMCV_WITH_OPS="1",
            MAX_JOBS=str(jobs or os.cpu_count() or 2),
        )
        _pip("wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp / "dist"), str(src), env=env)
        wheel = next((tmp / "dist").glob("mmcv-*.whl"))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheel.name
        shutil.copy2(wheel, target.with_suffix(".part"))
        os.replace(target.with_suffix(".part"), target)  # a killed build leaves no half wheel in the cache
        return target


def ensure_mmcv(cache_dir: Optional[Path] = None, jobs: Optional[int] = None, force: bool = False) -> str:
    """Makes mmcv MMCV_VERSION with ops importable; returns what it did."""
    if not force and mmcv_ops_ok() is None:
        return f"mmcv {MMCV_VERSION} with ops already installed"
    slot = _cache_dir(cache_dir) / build_key()
    cached: List[Path] = sorted(slot.glob("mmcv-*.whl")) if slot.is_dir() else []
    did = f"installed the cached wheel {cached[0]}" if cached and not force else None
    if did is None:
        start = time.time()
        cached = [build_wheel(slot, jobs)]
        did = f"built {cached[0]} in {(time.time() - start) / 60:.1f} min and installed it"
    _pip("install", "-q", "--force-reinstall", "--no-deps", str(cached[0]))
    why = mmcv_ops_ok()
    if why is not None:
        raise RuntimeError(f"after installing {cached[0]}: {why}")
    return did


def run(args: argparse.Namespace, argv: List[str]) -> int:
    print(ensure_mmcv(args.cache_dir, args.jobs, args.force))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args(), sys.argv[1:]))
