# HaloNet-50ts + Mask R-CNN + FPN, COCO 3x.
# Source: HaloNet has no official code or released detection / segmentation config (the paper's Mask R-CNN runs
# were TensorFlow; timm's byoanet.py is the reference implementation). This is the base's Swin-T recipe with timm's
# halonet50ts ImageNet-1k weights. HaloNet is a ResNet-like BatchNorm network: no extra output LayerNorm.
# ../_base_/attnzoo_backbone.py (3x switch): AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale training,
# batch 16, drop path 0.2. BatchNorm statistics stay frozen (norm_eval), as for mmdet's ResNets.
# Weight decay: as the recipe spares norms and position biases, it spares HaloNet's BatchNorm affine parameters
# ('.bn.', 'post_attn') and its relative position embeddings ('height_rel', 'width_rel') too.
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_az_halonet50ts_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_az_halonet50ts_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
