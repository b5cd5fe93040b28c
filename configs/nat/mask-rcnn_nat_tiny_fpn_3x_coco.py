# NAT-Tiny + Mask R-CNN + FPN, COCO 3x (published: 47.7 box / 42.6 mask AP).
# Source: SHI-Labs/Neighborhood-Attention-Transformer detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py
# (+ detection/configs/_base_/schedules/schedule_3x.py). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999),
# wd 0.05 with none on rpb / norms, linear warm-up 500 iterations, 36 epochs with steps at 27 and 33,
# DETR-style multi-scale + crop training, batch 16 (8 GPUs x 2), drop path 0.2, ImageNet-1k weights,
# fp16 with mmcv's static loss scale 512.
# Set here: the backbone, drop path, fp16. Optimizer, schedule and pipeline: ../_base_/mask_rcnn_fpn_3x.py.
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:shi-labs/nat-tiny-in1k-224')),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
