# MaxViT-T + Mask R-CNN + FPN, COCO 3x.
# Source: MaxViT has no mmdet recipe (the paper reports Cascade Mask R-CNN trained in TensorFlow,
# google-research/maxvit, no released config). This is the base's Swin-T recipe (mmdet 3's port of
# SwinTransformer/Swin-Transformer-Object-Detection) with MaxViT-T's ImageNet-1k weights (timm maxvit_tiny_tf_224).
# ../_base_/mask_rcnn_fpn_3x.py: AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale training,
# batch 16, drop path 0.2. BatchNorm statistics frozen (norm_eval), as for mmdet's BN backbones.
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
model = dict(
    backbone=dict(
        model_name='az_maxvit_tiny_tf_224',
        norm_eval=True,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/maxvit_tiny_tf_224.in1k')),
    neck=dict(in_channels=[64, 128, 256, 512]))
