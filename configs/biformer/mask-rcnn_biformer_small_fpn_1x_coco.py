# BiFormer-S + Mask R-CNN + FPN, COCO 1x (published: 47.8 box / 43.2 mask AP).
# Source: rayleizhu/BiFormer object_detection/configs/coco/maskrcnn.1x.biformer_small.py (+ _base_/schedules/
# schedule_1x.py, object_detection/models_mm/biformer_mm.py). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999),
# wd 0.05 with none on norms / position tables, linear warm-up 500 iterations, 12 epochs with steps at 8 and 11,
# single scale, batch 16 (8 GPUs x 2), drop path 0.2, 16 x 16 routing regions with auto-padding (n_win=16),
# a LayerNorm on each output, BatchNorm (stem / downsamplers) in eval mode (BiFormer_mm's norm_eval=True),
# fp16 with mmcv's static loss scale 512, ImageNet-1k weights.
# Set here: the backbone, regions, drop path, norm_eval, fp16, the no-decay keys. Optimizer and schedule:
# ../_base_/mask_rcnn_fpn_1x.py.
# Weights: BiFormer's ImageNet-1k checkpoint is not on the Hugging Face Hub (rayleizhu/BiFormer README links
# https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content). Save it as
# ./biformer_small_in1k.pth (the name upstream's loader gives it) or point --cfg-options
# model.backbone.init_cfg.checkpoint=<file> at it; a missing file stops the run at init.
# Weight decay: upstream spares 'absolute_pos_embed', 'relative_position_bias_table' and 'norm'; BiFormer has only
# the last, so this keeps 'norm' alone (the base's 'pos_embed' key would also spare BiFormer's 3x3 depthwise
# positional convs, 'blocks.N.pos_embed.proj', which upstream decays).
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='biformer_small',
        num_regions=16,
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='biformer_small_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=dict(_delete_=True, norm=dict(decay_mult=0.))))
