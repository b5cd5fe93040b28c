# NAT-Tiny + Mask R-CNN + FPN, COCO 3x (published: 47.7 box / 42.6 mask AP).
# Source: SHI-Labs/Neighborhood-Attention-Transformer detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py
# (+ detection/configs/_base_/schedules/schedule_3x.py). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999),
# wd 0.05 with none on rpb / norms, linear warm-up 500 iterations, 36 epochs with steps at 27 and 33,
# DETR-style multi-scale + crop training, batch 16 (8 GPUs x 2), drop path 0.2, ImageNet-1k weights,
# fp16 with mmcv's static loss scale 512.
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_nat_tiny_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_nat_tiny_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
