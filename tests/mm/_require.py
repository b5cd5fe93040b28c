"""The tests of attnzoo.mm need MMDetection, MMSegmentation and mmcv with compiled ops.

`make test` installs them (the [mm] extra + `attnzoo install-mmcv`) and sets ATTNZOO_REQUIRE_MM=1,
so in CI a broken install fails these tests instead of skipping them. Run by hand without the
extra, they skip with the reason.
"""
from __future__ import annotations

import os

import pytest


def require_mm() -> None:
    try:
        import mmcv.ops  # noqa: F401  (compiled ops: mmcv-lite is not enough)
        import mmdet.models  # noqa: F401
        import mmseg.models  # noqa: F401
    except Exception as exc:
        if os.environ.get("ATTNZOO_REQUIRE_MM") == "1":
            raise
        pytest.skip(f"OpenMMLab not installed ({type(exc).__name__}: {exc}); `make setup-mm` installs it", allow_module_level=True)
