# MaxViT-T + UperNet, ADE20K 512x512, 160k iterations.
# Source: MaxViT reports no UperNet result and has no mmseg recipe. This is the base's Swin-T recipe
# (../_base_/upernet_160k.py = SwinTransformer/Swin-Transformer-Semantic-Segmentation upernet_swin_tiny:
# AdamW lr 6e-5, wd 0.01, warm-up 1500 iterations, poly decay, batch 16) with Swin-T's drop path 0.3 and
# MaxViT-T's ImageNet-1k weights (timm maxvit_tiny_tf_224). The MBConv BatchNorm layers are synchronised across
# GPUs (mmengine's sync_bn), as mmseg does for BN backbones at 2 images per GPU.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='az_maxvit_tiny_tf_224',
        drop_path_rate=0.3,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/maxvit_tiny_tf_224.in1k')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
sync_bn = 'torch'
