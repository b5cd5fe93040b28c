# DiNAT-Tiny + Mask R-CNN + FPN, COCO 3x (published: 48.6 box / 43.5 mask AP).
# Source: SHI-Labs/Neighborhood-Attention-Transformer detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py
# (+ detection/configs/_base_/schedules/schedule_3x.py). Upstream recipe: as NAT-Tiny's (AdamW lr 1e-4, wd 0.05
# with none on rpb / norms, warm-up 500 iterations, 36 epochs with steps at 27 and 33, DETR-style multi-scale +
# crop training, batch 16, drop path 0.2, fp16 with a static loss scale of 512), with the detection dilations
# below: ImageNet-1k weights trained with 224-px dilations, fine-tuned with dilations sized for ~800-px inputs.
# Set here: the backbone, dilations, drop path, fp16. Optimizer, schedule and pipeline: ../_base_/mask_rcnn_fpn_3x.py.
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
model = dict(
    backbone=dict(
        model_name='dinat_tiny',
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        drop_path_rate=0.2,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:shi-labs/dinat-tiny-in1k-224')),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
