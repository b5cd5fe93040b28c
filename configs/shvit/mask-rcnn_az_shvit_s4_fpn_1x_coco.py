# SHViT-S4 + Mask R-CNN + FPN, COCO 1x (published with upstream's neck: 39.0 box / 35.9 mask AP).
# Source: ysj9909/SHViT downstream/configs/mask_rcnn_shvit_s4_fpn_1x_coco.py (+ downstream/shvit.py). Upstream
# recipe: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05 with no exclusions that match SHViT (its 'attention_biases'
# keys are EfficientViT's), linear warm-up 500 iterations, 12 epochs with steps at 8 and 11, single scale,
# batch 16, no stochastic depth, BatchNorm always in eval mode, no output norm, fp32, ImageNet-1k weights.
# SHViT has three stages at strides 16 / 32 / 64. Upstream grows them to strides 4-64 with its own neck
# (EfficientViTFPN: two transposed-conv levels below stride 16), which mmdet lacks. Here a plain FPN takes the three
# levels and adds two extra convs: strides 16-256. The anchor and RoI strides follow, and the anchor scales shrink
# by the same factor (RPN 2 instead of 8, RetinaNet octave base 2 instead of 4), so anchors stay mmdet's 32-512 px.
# Set here: the backbone, the neck / anchors, no weight-decay exclusions. Optimizer and schedule:
# ../_base_/mask_rcnn_fpn_1x.py.
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
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
