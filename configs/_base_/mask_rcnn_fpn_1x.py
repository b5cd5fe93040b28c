# Mask R-CNN + FPN on COCO, 1x, with an attnzoo backbone (mmdet 3.3's own model / data / runtime bases).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
    './adamw_1x.py',
]
model = dict(backbone={{_base_.backbone}})
