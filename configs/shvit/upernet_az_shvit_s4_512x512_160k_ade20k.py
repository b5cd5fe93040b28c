# SHViT-S4 + UperNet, ADE20K 512x512, 160k iterations.
# Source: SHViT publishes no segmentation result or recipe (ysj9909/SHViT has detection configs only). This is
# the base's Swin-T recipe (../_base_/upernet_160k.py: AdamW lr 6e-5, wd 0.01, warm-up 1500 iterations, poly
# decay, batch 16) with SHViT's detection backbone settings (no stochastic depth, no output norm, no
# weight-decay exclusions) and BatchNorm synchronised across GPUs (mmengine's sync_bn), as mmseg's BN backbones.
# SHViT's three stages (strides 16 / 32 / 64) feed UperNet; the auxiliary FCN head reads the second-to-last level,
# as it reads stage 2 of 4 in the four-stage recipe.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='az_shvit_s4',
        out_indices=(0, 1, 2),
        out_norm=None,
        drop_path_rate=0.0,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/shvit_s4.in1k')),
    decode_head=dict(in_channels=[224, 336, 448], in_index=[0, 1, 2]),
    auxiliary_head=dict(in_channels=336, in_index=1))
sync_bn = 'torch'
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
