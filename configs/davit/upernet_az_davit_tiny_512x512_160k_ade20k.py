# DaViT-T + UperNet, ADE20K 512x512, 160k iterations (published: 46.3 mIoU).
# Source: dingmyu/davit mmseg/configs/upernet_davit_512x512_160k_ade20k.py (+ _base_/models/upernet_davit.py).
# Upstream recipe: AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 on every parameter (its norm exclusion is commented
# out), linear warm-up 1500 iterations (ratio 1e-6) then poly decay (power 1, min 0), batch 16 (8 GPUs x 2),
# drop path 0.3, fp32, ImageNet-1k weights. (Upstream's heads use plain BN, marked "# SyncBN"; the base keeps
# mmseg's SyncBN.)
# Set here: the backbone, drop path, no weight-decay exclusions. Optimizer, schedule and pipeline:
# ../_base_/upernet_160k.py.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='az_davit_tiny',
        drop_path_rate=0.3,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/davit_tiny.msft_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
