"""`attnzoo install-mmcv`: the source patch, the cache and the decision to build (no network, no
compiler here: the real build runs in `make test`'s set-up, once per machine)."""
from __future__ import annotations

import pytest

from attnzoo.tools import install_mmcv as im


def test_cxx_standard_is_raised_exactly_once_and_debug_info_dropped(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text("if x:\n    extra_compile_args['cxx'] = ['-std=c++14']\nelse:\n    extra_compile_args['cxx'] = ['-std=c++17']\n")
    im._raise_cxx_standard(setup)
    text = setup.read_text()
    assert "['-std=c++20', '-g0']" in text and "c++17" not in text and "['-std=c++14']" in text


@pytest.mark.parametrize("body", ["nothing to patch\n", "extra_compile_args['cxx'] = ['-std=c++17']\n" * 2])
def test_an_unexpected_setup_py_is_refused(tmp_path, body):
    setup = tmp_path / "setup.py"
    setup.write_text(body)
    with pytest.raises(RuntimeError, match="exactly one"):
        im._raise_cxx_standard(setup)


def test_build_key_names_what_the_ops_depend_on():
    import sys

    import torch

    key = im.build_key()
    assert key.startswith(f"mmcv-{im.MMCV_VERSION}_torch-{torch.__version__.split('+')[0]}-")
    assert f"cp{sys.version_info[0]}{sys.version_info[1]}" in key and im.CXX_STD in key and f"r{im.RECIPE}" in key


def test_a_cached_wheel_is_installed_without_building(tmp_path, monkeypatch):
    slot = tmp_path / im.build_key()
    slot.mkdir()
    wheel = slot / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    states = iter(["mmcv is not installed", None])
    monkeypatch.setattr(im, "mmcv_ops_ok", lambda: next(states))
    calls = []
    monkeypatch.setattr(im, "_pip", lambda *args, env=None: calls.append(args))
    monkeypatch.setattr(im, "build_wheel", lambda *a, **k: pytest.fail("built although a wheel was cached"))
    did = im.ensure_mmcv(cache_dir=tmp_path)
    assert "cached wheel" in did
    assert calls == [("install", "-q", "--force-reinstall", "--no-deps", str(wheel))]


def test_without_a_cached_wheel_it_builds_into_the_cache(tmp_path, monkeypatch):
    states = iter(["mmcv is not installed", None])
    monkeypatch.setattr(im, "mmcv_ops_ok", lambda: next(states))
    monkeypatch.setattr(im, "_pip", lambda *args, env=None: None)
    built = []

    def fake_build(out_dir, jobs):
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
        path.write_bytes(b"x")
        built.append(out_dir)
        return path

    monkeypatch.setattr(im, "build_wheel", fake_build)
    assert "built" in im.ensure_mmcv(cache_dir=tmp_path)
    assert built == [tmp_path / im.build_key()]


def test_an_installed_mmcv_is_left_alone(monkeypatch):
    monkeypatch.setattr(im, "mmcv_ops_ok", lambda: None)
    monkeypatch.setattr(im, "_pip", lambda *a, **k: pytest.fail("pip ran although mmcv was installed"))
    assert "already installed" in im.ensure_mmcv()


def test_a_wheel_whose_ops_do_not_load_is_an_error(tmp_path, monkeypatch):
    slot = tmp_path / im.build_key()
    slot.mkdir()
    (slot / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"x")
    monkeypatch.setattr(im, "mmcv_ops_ok", lambda: "mmcv with ops does not import: ImportError")
    monkeypatch.setattr(im, "_pip", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="does not import"):
        im.ensure_mmcv(cache_dir=tmp_path)
