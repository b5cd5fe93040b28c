# DaViT-T + Mask R-CNN + FPN, COCO 3x (published: 47.4 box / 42.9 mask AP).
# Source: dingmyu/davit mmdet/configs/davit_maskrcnn_3x_coco.py. Upstream recipe: AdamW lr 1e-4, betas
# (0.9, 0.999), wd 0.05 on every parameter (no paramwise exclusions), linear warm-up 500 iterations, 36 epochs
# with steps at 27 and 33, DETR-style multi-scale + crop training, batch 16 (8 GPUs x 2), drop path 0.2,
# a LayerNorm on each output, fp32, ImageNet-1k weights.
# Set here: the backbone, drop path, no weight-decay exclusions. Optimizer, schedule and pipeline:
# ../_base_/mask_rcnn_fpn_3x.py.
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
model = dict(
    backbone=dict(
        model_name='az_davit_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/davit_tiny.msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
