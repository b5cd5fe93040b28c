# MaxViT-T + RetinaNet + FPN, COCO 1x.
# Source: MaxViT has no mmdet recipe (the paper reports Cascade Mask R-CNN trained in TensorFlow,
# google-research/maxvit, no released config). This is the base's Swin-T recipe (mmdet 3's port of
# SwinTransformer/Swin-Transformer-Object-Detection) with MaxViT-T's ImageNet-1k weights (timm maxvit_tiny_tf_224).
# ../_base_/retinanet_fpn_1x.py: AdamW lr 1e-4, wd 0.05, steps at 8 and 11, single scale, batch 16, drop path 0.2.
# BatchNorm statistics frozen (norm_eval), as for mmdet's BN backbones. FPN levels 8-128 come from stages 1-3
# plus two extra convs on the last input (as mmdet's Swin RetinaNet); stage 0 is not requested, or its output
# norm would be a parameter without a gradient under DDP.
_base_ = ['../_base_/retinanet_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='az_maxvit_tiny_tf_224',
        out_indices=(1, 2, 3),
        norm_eval=True,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/maxvit_tiny_tf_224.in1k')),
    neck=dict(in_channels=[128, 256, 512], start_level=0))
