# UperNet on ADE20K, 512x512 crops, 160k iterations, AdamW lr 6e-5, wd 0.01, linear warm-up 1500
# iterations then poly decay (power 1): Swin's segmentation recipe, which NAT / DiNAT, DaViT, BiFormer
# and TransNeXt report their UperNet 160k results with. Batch 16 (8 GPUs x 2).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    './attnzoo_backbone.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone={{_base_.backbone}},
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(in_index=2, num_classes=150),
)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={{_base_.no_decay_keys}}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
