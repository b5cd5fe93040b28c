"""No shipped config needs surgery to run without a GPU: every one trains in fp32 with mmengine's
plain OptimWrapper, and the authors' fp16 (AmpOptimWrapper, static loss scale 512; CUDA only) is
one documented ``--cfg-options`` switch (README "Detection and segmentation")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.mm._require import require_mm

require_mm()

from mmengine.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in ROOT.glob("*/*.py") if p.parent.name != "_base_")
AMP_SWITCH = {"optim_wrapper.type": "AmpOptimWrapper", "optim_wrapper.loss_scale": 512.0}
SWITCH_TEXT = "--cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512."


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_trains_in_fp32_with_the_plain_optim_wrapper(path):
    cfg = Config.fromfile(str(path))
    assert cfg.optim_wrapper.type == "OptimWrapper"
    assert "loss_scale" not in cfg.optim_wrapper
    assert "fp16" not in cfg


@pytest.mark.parametrize("family", ["nat", "biformer"])
def test_the_documented_amp_switch_restores_the_authors_fp16(family):
    paths = [p for p in ALL if p.parent.name == family and "_3x_" not in p.name]
    assert paths
    for path in paths:  # the families that trained in fp16 say how to switch it on
        assert SWITCH_TEXT in path.read_text(), path
        cfg = Config.fromfile(str(path))
        cfg.merge_from_dict(AMP_SWITCH)
        assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == 512.0
        assert cfg.optim_wrapper.optimizer.type == "AdamW"  # the rest of the wrapper is kept
    readme = (ROOT.parent / "README.md").read_text()
    assert SWITCH_TEXT in readme
