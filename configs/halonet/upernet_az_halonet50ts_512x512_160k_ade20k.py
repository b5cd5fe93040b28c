# HaloNet-50ts + UperNet, ADE20K 512x512, 160k iterations.
# Source: HaloNet has no official code or released detection / segmentation config (the paper's Mask R-CNN runs
# were TensorFlow; timm's byoanet.py is the reference implementation). This is the base's Swin-T recipe with timm's
# halonet50ts ImageNet-1k weights. HaloNet is a ResNet-like BatchNorm network: no extra output LayerNorm.
# ../_base_/upernet_160k.py (Swin-T: AdamW lr 6e-5, wd 0.01, warm-up 1500 iterations, poly decay, batch 16) with
# Swin-T's drop path 0.3. BatchNorm is synchronised across GPUs (mmengine's sync_bn), as mmseg's ResNets use
# SyncBN at 2 images per GPU.
# Weight decay: as the recipe spares norms and position biases, it spares HaloNet's BatchNorm affine parameters
# ('.bn.', 'post_attn') and its relative position embeddings ('height_rel', 'width_rel') too;
# '.bn.' also matches the UperNet heads' SyncBN layers, which this spares as well.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='az_halonet50ts',
        out_norm=None,
        drop_path_rate=0.3,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/halonet50ts.a1h_in1k')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
sync_bn = 'torch'
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.) for k in ('.bn.', 'post_attn', 'height_rel', 'width_rel')}))
