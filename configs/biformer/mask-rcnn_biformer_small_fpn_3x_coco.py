# BiFormer-S + Mask R-CNN + FPN, COCO 3x.
# Source: BiFormer publishes 1x only (rayleizhu/BiFormer object_detection/configs/coco/maskrcnn.1x.biformer_small.py).
# This 3x takes that config's backbone settings (16 x 16 routing regions, drop path 0.2, BatchNorm in eval mode,
# a LayerNorm on each output, fp16 with a static loss scale of 512) and the base's 3x recipe
# (../_base_/attnzoo_backbone.py (3x switch): AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale, batch 16).
# Weights: BiFormer's ImageNet-1k checkpoint is not on the Hugging Face Hub (rayleizhu/BiFormer README links
# https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content). Save it as
# ./biformer_small_in1k.pth (the name upstream's loader gives it) or point --cfg-options
# model.backbone.init_cfg.checkpoint=<file> at it; a missing file stops the run at init.
# Weight decay: upstream spares 'absolute_pos_embed', 'relative_position_bias_table' and 'norm'; BiFormer has only
# the last, so this keeps 'norm' alone (the base's 'pos_embed' key would also spare BiFormer's 3x3 depthwise
# positional convs, 'blocks.N.pos_embed.proj', which upstream decays).
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_biformer_small_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_biformer_small_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
