# RetinaNet + FPN on COCO, 1x, with an attnzoo backbone. As mmdet's Swin RetinaNet: the backbone gives
# stages 1-3 only (strides 8-32; a stage-0 output would feed nothing, and its output norm would be an
# unused parameter under DDP) and the FPN adds two levels from its input: strides 8-128.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/default_runtime.py',
    './adamw_1x.py',
]
model = dict(
    backbone={{_base_.backbone_c3_c5}},
    neck=dict(start_level=0, add_extra_convs='on_input'),
)
