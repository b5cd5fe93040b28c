# NAT-Tiny + RetinaNet + FPN, COCO 1x.
# Source: NAT publishes no RetinaNet result. This takes the backbone settings of
# SHI-Labs/Neighborhood-Attention-Transformer detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py
# (drop path 0.2, ImageNet-1k weights, fp16 with a static loss scale of 512) and the base's RetinaNet 1x recipe
# (../_base_/retinanet_fpn_1x.py: AdamW lr 1e-4, wd 0.05, steps at 8 and 11, single scale, batch 16).
# FPN levels 8-128 come from stages 1-3 plus two extra convs on the last input (as mmdet's Swin RetinaNet);
# stage 0 is not requested, or its output norm would be a parameter without a gradient under DDP.
_base_ = ['../_base_/retinanet_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='nat_tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:shi-labs/nat-tiny-in1k-224')),
    neck=dict(in_channels=[128, 256, 512], start_level=0))
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
