"""No shipped config needs surgery to run without a GPU: every one trains in fp32 with mmengine's
plain OptimWrapper, and the authors' fp16 (AmpOptimWrapper, static loss scale 512; CUDA only) is
one documented ``--cfg-options`` switch (README "Detection and segmentation")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.mm._require import require_mm

require_mm()

from mmengine.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(ROOT.glob("*/*.py"))  # the family configs and configs/_base_
AMP_SWITCH = {"optim_wrapper.type": "AmpOptimWrapper", "optim_wrapper.loss_scale": 512.0}
SWITCH_TEXT = "--cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512."


def _gpu_only_settings(path: Path) -> list:
    """GPU-only optimizer settings written in a config file (its code, not its comments)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value == "AmpOptimWrapper":
            found.append("AmpOptimWrapper")
        if isinstance(node, ast.keyword) and node.arg in ("loss_scale", "fp16"):
            found.append(node.arg)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "fp16" for t in node.targets):
            found.append("fp16")
    return found


def test_no_config_file_sets_a_gpu_only_optimizer():
    assert len(FILES) > 30
    offending = {p.relative_to(ROOT).as_posix(): f for p in FILES if (f := _gpu_only_settings(p))}
    assert not offending, offending


@pytest.mark.parametrize("name", ["nat/mask-rcnn_nat_tiny_fpn_1x_coco.py", "biformer/retinanet_biformer_small_fpn_1x_coco.py"])
def test_configs_load_with_the_plain_wrapper_and_the_documented_switch_restores_fp16(name):
    path = ROOT / name
    assert SWITCH_TEXT in path.read_text()
    cfg = Config.fromfile(str(path))
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    cfg.merge_from_dict(AMP_SWITCH)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == 512.0
    assert cfg.optim_wrapper.optimizer.type == "AdamW"  # the rest of the wrapper is kept


def test_every_family_that_trained_in_fp16_documents_the_switch():
    for path in sorted((ROOT / "nat").glob("*_1x_*.py")) + sorted((ROOT / "biformer").glob("*_1x_*.py")) + \
            sorted(ROOT.glob("*/upernet_*dinat*.py")) + sorted(ROOT.glob("*/upernet_*nat_tiny*.py")):
        assert SWITCH_TEXT in path.read_text(), path
    assert SWITCH_TEXT in (ROOT.parent / "README.md").read_text()
