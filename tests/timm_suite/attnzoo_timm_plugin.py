"""pytest plugin that runs timm's own ``tests/test_models.py`` against attnzoo models.

Loaded with ``-p attnzoo_timm_plugin`` (tests/timm_suite/test_timm_models.py does it in a
subprocess, on the file from the pinned timm's source distribution that ``make setup``
unpacks into ``.venv/timm-src``); it plays the part of a conftest that imports attnzoo:

* ``import attnzoo`` registers the models before timm's test module is imported;
* ``timm.list_models`` is wrapped so that the module's ``@parametrize(list_models(...))``
  lists keep only the models named in ``ATTNZOO_TIMM_MODELS`` (comma-separated; a pretrained
  tag ``name.tag`` counts as ``name``). timm's own filters still apply first; only the
  collection shrinks (from ~1,300 models), the test bodies run unchanged;
* tests that take no attnzoo model (timm's own fixed model lists) are deselected;
* ``EXCLUDED`` tests are skipped with the reason next to them; ``PENDING`` ones run as strict
  xfails (a pass fails the run, so the entry must go when the gap is closed);
* ``ATTNZOO_TIMM_SLOW`` (comma-separated ``test`` or ``test@model``) skips the named cases as
  too slow for the CI tier; the extended tier runs them;
* every run test's outcome is written as JSON to ``ATTNZOO_TIMM_REPORT``.
"""
from __future__ import annotations

import json
import os

import pytest
import timm

import attnzoo  # noqa: F401  (registers the models into timm)

SELECTED = frozenset(n for n in os.environ.get("ATTNZOO_TIMM_MODELS", "").split(",") if n)

_TORCHSCRIPT = ("TorchScript is deprecated upstream (torch.jit is in maintenance; PyTorch points to torch.export); "
                "attnzoo's export paths are torch.export and ONNX, and its models use Python control flow and "
                "typing TorchScript cannot compile")
_NO_NETWORK = ("downloads pretrained weights from the real Hugging Face Hub; tests run offline (no network in CI). "
               "Weight loading and conversion are tested offline in tests/zoo against local files")

# timm test function -> why it does not run against attnzoo models.
EXCLUDED = {
    "test_model_forward_torchscript": _TORCHSCRIPT,
    "test_model_forward_fx_torchscript": _TORCHSCRIPT,
    "test_model_load_pretrained": _NO_NETWORK,
    "test_model_features_pretrained": _NO_NETWORK,
}

# timm test function -> the attnzoo gap it shows (strict xfail until closed).
PENDING: dict = {}

SLOW = frozenset(n for n in os.environ.get("ATTNZOO_TIMM_SLOW", "").split(",") if n)

_timm_list_models = timm.list_models


def _list_models(*args, **kwargs):
    return [n for n in _timm_list_models(*args, **kwargs) if n.split(".")[0] in SELECTED]

_RESULTS: dict = {}


def _model_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("model_name") if callspec is not None else None
    return name.split(".")[0] if isinstance(name, str) else None


def pytest_configure(config: pytest.Config) -> None:
    # timm's suite marks tests with pytest-timeout's marker; the plugin is not needed to run them.
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's per-test limit (inert here)")
    if not SELECTED:
        raise pytest.UsageError("attnzoo_timm_plugin: set ATTNZOO_TIMM_MODELS to a comma-separated list of models")
    unknown = sorted(SELECTED - set(attnzoo.list_models()))
    if unknown:
        raise pytest.UsageError(f"attnzoo_timm_plugin: not attnzoo models: {', '.join(unknown)}")
    # Only when loaded as the plugin (never on import: tests/timm_suite imports EXCLUDED from here),
    # and before timm's test module does `from timm import list_models` at collection.
    timm.list_models = _list_models


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    keep, drop = [], []
    for item in items:
        (keep if _model_of(item) in SELECTED else drop).append(item)
    for item in keep:
        reason = EXCLUDED.get(item.originalname)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"excluded for attnzoo: {reason}"))
        elif item.originalname in SLOW or f"{item.originalname}@{_model_of(item)}" in SLOW:
            item.add_marker(pytest.mark.skip(reason="slow: not in the CI tier; the extended tier runs it"))
        elif item.originalname in PENDING:
            item.add_marker(pytest.mark.xfail(reason=f"pending: {PENDING[item.originalname]}", strict=True))
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    entry = _RESULTS.setdefault(item.nodeid, dict(test=item.originalname, model=_model_of(item), outcome="passed",
                                                  message=""))
    if hasattr(report, "wasxfail"):
        entry["outcome"] = "xfailed" if report.skipped else "xpassed-strict"
        entry["message"] = report.wasxfail
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["message"] = str(report.longrepr)[-2000:]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["message"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return report


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get("ATTNZOO_TIMM_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(list(_RESULTS.values()), f, indent=1)
