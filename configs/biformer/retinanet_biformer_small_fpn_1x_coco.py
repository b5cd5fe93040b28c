# BiFormer-S + RetinaNet + FPN, COCO 1x (published: 45.9 box AP).
# Source: rayleizhu/BiFormer object_detection/configs/coco/retinanet.1x.biformer_small.py (+ _base_/schedules/
# schedule_1x.py; optimizer after WaveViT). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999), wd 1e-4 on every
# parameter (no paramwise exclusions), linear warm-up 500 iterations, 12 epochs with steps at 8 and 11, single
# scale, batch 16, drop path 0.2, 16 x 16 routing regions, BatchNorm in eval mode, a LayerNorm on each output,
# fp16 with a static loss scale of 512, FPN from stages 1-3 with extra convs on the input (strides 8-128).
# Upstream keeps stage 0 and sets find_unused_parameters; here stage 0 is simply not requested.
# Set here: the backbone, regions, drop path, norm_eval, fp16, wd 1e-4 without exclusions. Schedule:
# ../_base_/retinanet_fpn_1x.py.
# Weights: BiFormer's ImageNet-1k checkpoint is not on the Hugging Face Hub (rayleizhu/BiFormer README links
# https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content). Save it as
# ./biformer_small_in1k.pth (the name upstream's loader gives it) or point --cfg-options
# model.backbone.init_cfg.checkpoint=<file> at it; a missing file stops the run at init.
_base_ = ['../_base_/retinanet_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='biformer_small',
        out_indices=(1, 2, 3),
        num_regions=16,
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='biformer_small_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512], start_level=0))
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4), paramwise_cfg=dict(_delete_=True))
