# SHViT-S4 + Mask R-CNN + FPN, COCO 3x.
# Source: SHViT publishes 1x only (ysj9909/SHViT downstream/configs/mask_rcnn_shvit_s4_fpn_1x_coco.py). This 3x
# takes that config's backbone and optimizer settings (AdamW lr 1e-4, wd 0.05 with no exclusions, no stochastic
# depth, BatchNorm in eval mode, no output norm, fp32) and the base's 3x schedule and multi-scale pipeline
# (../_base_/mask_rcnn_fpn_3x.py: 36 epochs, steps at 27 and 33, batch 16).
# SHViT has three stages at strides 16 / 32 / 64. Upstream grows them to strides 4-64 with its own neck
# (EfficientViTFPN: two transposed-conv levels below stride 16), which mmdet lacks. Here a plain FPN takes the three
# levels and adds two extra convs: strides 16-256. The anchor and RoI strides follow, and the anchor scales shrink
# by the same factor (RPN 2 instead of 8, RetinaNet octave base 2 instead of 4), so anchors stay mmdet's 32-512 px.
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
model = dict(
    backbone=dict(
        model_name='az_shvit_s4',
        out_indices=(0, 1, 2),
        out_norm=None,
        norm_eval=True,
        drop_path_rate=0.0,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/shvit_s4.in1k')),
    neck=dict(in_channels=[224, 336, 448], start_level=0, add_extra_convs='on_input', num_outs=5),
    rpn_head=dict(anchor_generator=dict(scales=[2], strides=[16, 32, 64, 128, 256])),
    roi_head=dict(
        bbox_roi_extractor=dict(featmap_strides=[16, 32, 64, 128]),
        mask_roi_extractor=dict(featmap_strides=[16, 32, 64, 128])))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
