"""The folders install as one package, ``attnzoo``: pyproject lists every package, and a built
wheel installed into a fresh virtualenv imports, builds a model and has the console script."""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ("zoo", "layers", "kernels", "train", "tools")


def _setuptools_config() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = _setuptools_config()
    package_dir, packages = cfg["package-dir"], cfg["packages"]
    folder_of = {name: Path(folder) for name, folder in package_dir.items()}
    root_package = {folder.as_posix(): name for name, folder in folder_of.items() if len(folder.parts) == 1}
    assert set(SOURCE_ROOTS) <= set(root_package), f"package-dir must map each of {SOURCE_ROOTS}"

    missing = []
    for root in SOURCE_ROOTS:
        for init in sorted((REPO / root).rglob("__init__.py")):
            folder = init.parent.relative_to(REPO)
            if "__pycache__" in folder.parts:
                continue
            name = ".".join([root_package[root], *folder.parts[1:]])
            if name not in packages or folder_of.get(name) != folder:
                missing.append(f"{name} = {folder.as_posix()!r}")
    assert not missing, (
        "pyproject.toml [tool.setuptools] must list these in `packages` and `package-dir`: " + ", ".join(missing)
    )
    for name in packages:
        assert (REPO / folder_of[name] / "__init__.py").is_file(), f"{name} is listed but {folder_of[name]}/__init__.py is missing"


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


_SMOKE = """
import sys, pathlib, torch, timm, attnzoo
here = pathlib.Path(attnzoo.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in here.parents, f"imported {here}, not the wheel in {sys.prefix}"
names = attnzoo.list_models()
name = "nat_mini" if "nat_mini" in names else names[0]
model = timm.create_model(name).eval()
with torch.no_grad():
    out = model(torch.randn(1, 3, 64, 64))
assert out.shape == (1, model.num_classes), out.shape
print("ok", name, here)
"""


def test_wheel_installs_and_runs_in_fresh_venv(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache", ".hypothesis"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("attnzoo-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
        (metadata,) = [f for f in files if f.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(metadata).decode())
        entry_points = zf.read(metadata.replace("METADATA", "entry_points.txt")).decode()
    for f in ("attnzoo/__init__.py", "attnzoo/layers/__init__.py", "attnzoo/kernels/gna/reference.py", "attnzoo/tools/cli.py"):
        assert f in files, f"{f} missing from the wheel"
    top_level = {f.split("/")[0] for f in files}
    # attnzoo_cli.py: the console script's entry, which does not import the attnzoo package (fast --help).
    assert top_level == {"attnzoo", "attnzoo_cli.py", metadata.split("/")[0]}, (
        f"the wheel must install only attnzoo and its console-script entry, got {sorted(top_level)}")
    requires = {re.match(r"[A-Za-z0-9._-]+", r).group().lower() for r in meta.get_all("Requires-Dist")}
    assert {"torch", "timm"} <= requires, requires
    assert "attnzoo = attnzoo_cli:main" in entry_points

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    # Install before the outer site-packages become visible, so pip sees no other attnzoo.
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", str(wheel)])
    # torch, timm, ... come from this environment: its site-packages go after the venv's own.
    # Only the directory is added; its .pth files (the editable attnzoo finder) are not run.
    venv_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    outer_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (venv_site / "zz_outer_site_packages.pth").write_text("\n".join(sorted(outer_site)) + "\n")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    proc = _run([py, "-c", _SMOKE], cwd=cwd, env=env)
    assert proc.stdout.startswith("ok "), proc.stdout

    script = venv / "bin" / "attnzoo"
    assert script.is_file(), "console script `attnzoo` not installed"
    proc = _run([script, "--help"], cwd=cwd, env=env)
    assert "bench" in proc.stdout
