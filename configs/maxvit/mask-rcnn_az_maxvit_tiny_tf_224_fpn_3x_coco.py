# MaxViT-T + Mask R-CNN + FPN, COCO 3x.
# Source: MaxViT has no mmdet recipe (the paper reports Cascade Mask R-CNN trained in TensorFlow,
# google-research/maxvit, no released config). This is the base's Swin-T recipe (mmdet 3's port of
# SwinTransformer/Swin-Transformer-Object-Detection) with MaxViT-T's ImageNet-1k weights (timm maxvit_tiny_tf_224).
# ../_base_/attnzoo_backbone.py (3x switch): AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale training,
# batch 16, drop path 0.2. BatchNorm statistics frozen (norm_eval), as for mmdet's BN backbones.
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_az_maxvit_tiny_tf_224_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_az_maxvit_tiny_tf_224_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
