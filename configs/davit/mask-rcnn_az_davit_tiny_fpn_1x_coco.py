# DaViT-T + Mask R-CNN + FPN, COCO 1x (published: 45.0 box / 41.1 mask AP).
# Source: dingmyu/davit mmdet/configs/davit_maskrcnn_1x_coco.py (+ _base_/models/mask_rcnn_davit.py,
# _base_/schedules/schedule_1x.py). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05 on every
# parameter (no paramwise exclusions), linear warm-up 500 iterations, 12 epochs with steps at 8 and 11,
# DETR-style multi-scale + crop training (below), batch 16 (8 GPUs x 2), drop path 0.1, a LayerNorm on each
# output, fp32, ImageNet-1k weights.
# Set here: the backbone, drop path, the pipeline, no weight-decay exclusions. Optimizer and schedule:
# ../_base_/mask_rcnn_fpn_1x.py.
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='az_davit_tiny',
        drop_path_rate=0.1,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/davit_tiny.msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    {{_base_.ms_crop}},
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
