# NAT-Tiny + Mask R-CNN + FPN, COCO 1x.
# Source: NAT publishes Mask R-CNN with the 3x schedule only (SHI-Labs/Neighborhood-Attention-Transformer
# detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py). This 1x takes that config's backbone settings
# (drop path 0.2, ImageNet-1k weights, fp16 with a static loss scale of 512) and the base's 1x recipe
# (../_base_/mask_rcnn_fpn_1x.py: AdamW lr 1e-4, wd 0.05, steps at 8 and 11, single scale, batch 16).
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:shi-labs/nat-tiny-in1k-224')),
    neck=dict(in_channels=[64, 128, 256, 512]))
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
