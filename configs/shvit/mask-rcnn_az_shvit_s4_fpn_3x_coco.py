# SHViT-S4 + Mask R-CNN + FPN, COCO 3x.
# Source: SHViT publishes 1x only (ysj9909/SHViT downstream/configs/mask_rcnn_shvit_s4_fpn_1x_coco.py). This 3x
# takes that config's backbone and optimizer settings (AdamW lr 1e-4, wd 0.05 with no exclusions, no stochastic
# depth, BatchNorm in eval mode, no output norm, fp32) and the base's 3x schedule and multi-scale pipeline
# (../_base_/attnzoo_backbone.py (3x switch): 36 epochs, steps at 27 and 33, batch 16).
# SHViT has three stages at strides 16 / 32 / 64. Upstream grows them to strides 4-64 with its own neck
# (EfficientViTFPN: two transposed-conv levels below stride 16), which mmdet lacks. Here a plain FPN takes the three
# levels and adds two extra convs: strides 16-256. The anchor and RoI strides follow, and the anchor scales shrink
# by the same factor (RPN 2 instead of 8, RetinaNet octave base 2 instead of 4), so anchors stay mmdet's 32-512 px.
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_az_shvit_s4_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_az_shvit_s4_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
