# DaViT-T + Mask R-CNN + FPN, COCO 3x (published: 47.4 box / 42.9 mask AP).
# Source: dingmyu/davit mmdet/configs/davit_maskrcnn_3x_coco.py. Upstream recipe: AdamW lr 1e-4, betas
# (0.9, 0.999), wd 0.05 on every parameter (no paramwise exclusions), linear warm-up 500 iterations, 36 epochs
# with steps at 27 and 33, DETR-style multi-scale + crop training, batch 16 (8 GPUs x 2), drop path 0.2,
# a LayerNorm on each output, fp32, ImageNet-1k weights.
# ../_base_/attnzoo_backbone.py (3x switch).
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_az_davit_tiny_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_az_davit_tiny_fpn_1x_coco.py']
model = dict(backbone=dict(drop_path_rate=0.2))  # 0.1 in the 1x config
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
