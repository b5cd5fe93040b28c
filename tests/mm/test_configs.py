"""configs/: every config loads, its necks match its backbone, and each family's Mask R-CNN,
RetinaNet and UperNet build, train one iteration and predict on a tiny dataset the test writes.

Overridden for the test only: the image scale, the prediction score threshold (so that a randomly
initialised detector still returns boxes), no pretrained download (offline) and fp32 instead of
CUDA-only AMP; model, optimizer and pipelines are the configs' own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from tests.mm._require import require_mm

require_mm()

import cv2  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

import attnzoo  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in ROOT.glob("*/*.py") if p.parent.name != "_base_")
DET_1X = [p for p in ALL if p.name.startswith(("mask-rcnn_", "retinanet_")) and "_1x_" in p.name]
SEG = [p for p in ALL if p.name.startswith("upernet_")]
FAMILIES = sorted({p.parent.name for p in ALL})


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def test_every_family_has_the_four_configs():
    assert FAMILIES, "no configs found"
    for family in FAMILIES:
        names = [p.name for p in ALL if p.parent.name == family]
        for kind in ("mask-rcnn_*_fpn_1x_coco", "mask-rcnn_*_fpn_3x_coco", "retinanet_*_fpn_1x_coco", "upernet_*_160k_ade20k"):
            prefix, suffix = kind.split("*")
            assert any(n.startswith(prefix) and n[:-3].endswith(suffix) for n in names), (family, kind, names)


def _backbone_channels(cfg: Config) -> List[int]:
    from attnzoo.mm import AttnZooBackbone

    bb = dict(cfg.model.backbone)
    bb.pop("type")
    bb.pop("init_cfg", None)
    return AttnZooBackbone(**bb).channels


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_config_loads_and_necks_match_the_backbone(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports["imports"] == ["attnzoo.mm"]
    assert cfg.model.backbone.type == "AttnZooBackbone"
    assert cfg.model.backbone.model_name in attnzoo.list_models()
    if "_3x_" in path.name:  # the 3x switch on top of the family's 1x config
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.param_scheduler[-1]["milestones"] == [27, 33]
        assert any(step["type"] == "RandomChoice" for step in cfg.train_dataloader.dataset.pipeline)
    channels = _backbone_channels(cfg)
    if "neck" in cfg.model:
        assert list(cfg.model.neck.in_channels) == channels
    else:
        assert list(cfg.model.decode_head.in_channels) == channels
        aux = cfg.model.auxiliary_head
        assert aux.in_channels == channels[aux.in_index]


# --- tiny datasets ---------------------------------------------------------------------------------
def _write_coco(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    images, anns = [], []
    for i in range(2):
        h, w = 120, 160
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        x0, y0, bw, bh = 20 + 10 * i, 15, 60, 50
        img[y0:y0 + bh, x0:x0 + bw] = (200, 40 + 100 * i, 30)
        cv2.imwrite(str(root / "img" / f"{i}.jpg"), img)
        images.append(dict(id=i + 1, file_name=f"{i}.jpg", height=h, width=w))
        poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
        anns.append(dict(id=i + 1, image_id=i + 1, category_id=1 + i, bbox=[x0, y0, bw, bh], area=bw * bh,
                         segmentation=[poly], iscrowd=0))
    cats = [dict(id=1, name="person"), dict(id=2, name="bicycle")]
    (root / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))


def _write_ade(root: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in ("images/training", "annotations/training"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        img = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
        seg = np.zeros((72, 96), np.uint8)
        seg[:36] = 1 + 3 * i
        seg[36:, 40:] = 12
        cv2.imwrite(str(root / "images/training" / f"{i}.jpg"), img)
        cv2.imwrite(str(root / "annotations/training" / f"{i}.png"), seg)


def _small_scale(pipeline, scale) -> None:
    """Every resize of the pipeline (also inside RandomChoice) to ``scale``, crops to 64 px."""
    for step in pipeline:
        if isinstance(step, list):
            _small_scale(step, scale)
            continue
        if step["type"] == "Resize":
            step["scale"] = scale
        elif step["type"] == "RandomResize":  # a base scale with a ratio range, or a range of scales
            step["scale"] = scale if step.get("ratio_range") else [scale, scale]
        elif step["type"] == "RandomChoiceResize":
            step["scales"] = [scale]
        elif step["type"] == "RandomCrop":
            step["crop_size"] = (64, 64)
        elif step["type"] == "RandomChoice":
            _small_scale(step["transforms"], scale)


def _offline_cpu(cfg: Config) -> None:
    """No Hub download in tests (random init) and no CUDA-only mixed precision on the CPU."""
    cfg.model.backbone.pop("init_cfg", None)
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)


def _train_one_iteration(model, batch, cfg) -> None:
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode="loss")
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()
    grads = [p.grad for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "a backbone parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = next(p for p in model.backbone.parameters() if p.requires_grad).detach().clone()
    optim.step()
    after = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert not torch.equal(before, after), "the optimizer step did not move the backbone"


def _train_and_predict(path: Path, scope: str, data: dict, scale, adjust=lambda cfg: None):
    """Builds the config's model and datasets (data fields replaced by ``data``, resizes by
    ``scale``), trains one iteration on both images and returns the prediction for the first."""
    import importlib

    registry = importlib.import_module(f"{scope}.registry")
    torch.manual_seed(0)
    cfg = Config.fromfile(str(path))
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(scope)
    _offline_cpu(cfg)
    adjust(cfg)
    model = revert_sync_batchnorm(registry.MODELS.build(cfg.model))
    model.init_weights()
    datasets = []
    for ds in (cfg.train_dataloader.dataset, cfg.test_dataloader.dataset):
        ds.update(**data)
        _small_scale(ds.pipeline, scale)
        datasets.append(registry.DATASETS.build(ds))
    assert len(datasets[0]) == 2
    _train_one_iteration(model, pseudo_collate([datasets[0][0], datasets[0][1]]), cfg)
    model.eval()
    with torch.no_grad():
        (result,) = model.test_step(pseudo_collate([datasets[1][0]]))
    return result


def _keep_every_box(cfg: Config) -> None:
    """A randomly initialised detector scores below the 0.05 default threshold."""
    test_cfg = cfg.model.test_cfg
    if "rcnn" in test_cfg:
        test_cfg.rcnn.score_thr = 0.0
    elif "score_thr" in test_cfg:
        test_cfg.score_thr = 0.0


@pytest.mark.parametrize("path", DET_1X, ids=_id)
def test_detector_trains_one_iteration_and_predicts(path, tmp_path):
    _write_coco(tmp_path)
    data = dict(data_root=str(tmp_path), ann_file="ann.json", data_prefix=dict(img="img/"))
    pred = _train_and_predict(path, "mmdet", data, (160, 128), _keep_every_box).pred_instances
    assert pred.bboxes.ndim == 2 and pred.bboxes.shape[1] == 4 and len(pred.bboxes) > 0
    assert torch.isfinite(pred.bboxes).all()
    if path.name.startswith("mask-rcnn_"):
        assert pred.masks.shape == (len(pred.bboxes), 120, 160)  # masks at the original image size


@pytest.mark.parametrize("path", SEG, ids=_id)
def test_upernet_trains_one_iteration_and_predicts(path, tmp_path):
    _write_ade(tmp_path)
    data = dict(data_root=str(tmp_path), data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"))

    def small_crops(cfg):
        cfg.model.data_preprocessor.size = (64, 64)

    seg = _train_and_predict(path, "mmseg", data, (128, 64), small_crops).pred_sem_seg.data
    assert seg.shape == (1, 72, 96)  # at the original image size
    assert int(seg.min()) >= 0 and int(seg.max()) < 150
