# The attnzoo side every detection / segmentation config shares: the import that registers
# AttnZooBackbone into mmdet's and mmseg's MODELS, and the backbone defaults. A family config sets
# model.backbone.model_name and the neck's in_channels (the backbone's feature_info channels).
custom_imports = dict(imports=['attnzoo.mm'], allow_failed_imports=False)

backbone = dict(
    _delete_=True,
    type='AttnZooBackbone',
    model_name=None,  # set by the family config
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    norm_eval=False,
    with_cp=False,
    out_norm='ln',
    drop_path_rate=0.2,
    # init_cfg=dict(type='Pretrained', checkpoint='<file>', 'hf-hub:<org>/<repo>[/<file>]' or an http(s) URL)
)
# RetinaNet's: stages 1-3 (strides 8-32).
backbone_c3_c5 = dict(backbone, out_indices=(1, 2, 3))

# Weight decay off for norms and for every family's position biases / temperatures / embeddings
# (mmengine matches custom_keys as substrings of parameter names; names absent from a model match
# nothing): Swin's recipe, which NAT / DiNAT and TransNeXt follow. Families whose repositories decay
# every parameter (DaViT, SHViT, BiFormer's RetinaNet) drop it in their configs.
no_decay_keys = {
    k: dict(decay_mult=0.)
    for k in ('norm', 'rpb', 'relative_position_bias_table', 'rel_pos', 'bias_table',
              'query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature', 'learnable_tokens',
              'learnable_bias')
}

# DETR's multi-scale + crop augmentation, which Swin, NAT, DiNAT (3x) and DaViT (1x, 3x) train with:
# short side 480-800 step 32, or resize to 400-600, crop 384-600 and resize again; long side <= 1333.
_short_sides = [(s, 1333) for s in range(480, 801, 32)]
ms_crop = dict(type='RandomChoice', transforms=[
    [dict(type='RandomChoiceResize', scales=_short_sides, keep_ratio=True)],
    [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
     dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
     dict(type='RandomChoiceResize', scales=_short_sides, keep_ratio=True)],
])

# The 3x switch a family's Mask R-CNN 3x config applies on top of its own 1x config: 36 epochs,
# steps at 27 and 33, multi-scale + crop training (as mmdet 3's
# configs/swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py):
#   _base_ = ['./mask-rcnn_<model>_fpn_1x_coco.py']
#   train_cfg = dict(max_epochs=36)
#   param_scheduler = {{_base_.param_scheduler_3x}}
#   train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
param_scheduler_3x = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
train_pipeline_3x = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    ms_crop,
    dict(type='PackDetInputs'),
]
