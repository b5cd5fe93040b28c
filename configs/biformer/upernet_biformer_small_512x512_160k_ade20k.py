# BiFormer-S + UperNet, ADE20K 512x512, 160k iterations (published: 49.8 mIoU, 50.8 multi-scale + flip).
# Source: rayleizhu/BiFormer semantic_segmentation/configs/ade20k/upernet.biformer_small.py (+ semantic_segmentation/
# models_mm/biformer_mm.py; recipe after UniFormer / CSWin). Upstream recipe: AdamW lr 6e-5, betas (0.9, 0.999),
# wd 0.01 with none on norms / position tables, linear warm-up 1500 iterations (ratio 1e-6) then poly decay
# (power 1, min 0), batch 16 (8 GPUs x 2), drop path 0.3, 8 x 8 routing regions for 512-px crops (n_win=8) with
# auto-padding, a LayerNorm on each output, the backbone's BatchNorm converted to SyncBN, fp16 with a static loss
# scale of 512.
# Set here: the backbone, regions, drop path, SyncBN, fp16, the no-decay keys. Optimizer, schedule and pipeline:
# ../_base_/upernet_160k.py.
# Weights: BiFormer's ImageNet-1k checkpoint is not on the Hugging Face Hub (rayleizhu/BiFormer README links
# https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content). Save it as
# ./biformer_small_in1k.pth (the name upstream's loader gives it) or point --cfg-options
# model.backbone.init_cfg.checkpoint=<file> at it; a missing file stops the run at init.
# Weight decay: upstream spares 'absolute_pos_embed', 'relative_position_bias_table' and 'norm'; BiFormer has only
# the last, so this keeps 'norm' alone (the base's 'pos_embed' key would also spare BiFormer's 3x3 depthwise
# positional convs, 'blocks.N.pos_embed.proj', which upstream decays).
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='biformer_small',
        num_regions=8,
        drop_path_rate=0.3,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='biformer_small_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
sync_bn = 'torch'
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=dict(_delete_=True, norm=dict(decay_mult=0.))))
