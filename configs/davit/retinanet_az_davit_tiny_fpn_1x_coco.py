# DaViT-T + RetinaNet + FPN, COCO 1x (published: 44.0 box AP).
# Source: dingmyu/davit mmdet/configs/davit_retinanet_1x_coco.py (+ _base_/models/retinanet_davit.py,
# _base_/schedules/schedule_1x.py). Upstream recipe: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05 on every
# parameter, linear warm-up 500 iterations, 12 epochs with steps at 8 and 11, DETR-style multi-scale + crop
# training (below), batch 16 (8 GPUs x 2), drop path 0.1, fp32, FPN from stages 1-3 with extra convs on the
# input (strides 8-128). Upstream notes the stage-0 output norm must go: stage 0 is not requested here.
# Set here: the backbone, drop path, the pipeline, no weight-decay exclusions. Optimizer and schedule:
# ../_base_/retinanet_fpn_1x.py.
_base_ = ['../_base_/retinanet_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='az_davit_tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/davit_tiny.msft_in1k')),
    neck=dict(in_channels=[192, 384, 768], start_level=0))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    {{_base_.ms_crop}},
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
