# HaloNet-50ts + Mask R-CNN + FPN, COCO 1x.
# Source: HaloNet has no official code or released detection / segmentation config (the paper's Mask R-CNN runs
# were TensorFlow; timm's byoanet.py is the reference implementation). This is the base's Swin-T recipe with timm's
# halonet50ts ImageNet-1k weights. HaloNet is a ResNet-like BatchNorm network: no extra output LayerNorm.
# ../_base_/mask_rcnn_fpn_1x.py: AdamW lr 1e-4, wd 0.05, steps at 8 and 11, single scale, batch 16, drop path 0.2.
# BatchNorm statistics stay frozen (norm_eval) at 2 images per GPU, as for mmdet's ResNets.
# Weight decay: as the recipe spares norms and position biases, it spares HaloNet's BatchNorm affine parameters
# ('.bn.', 'post_attn') and its relative position embeddings ('height_rel', 'width_rel') too.
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='az_halonet50ts',
        out_norm=None,
        norm_eval=True,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:timm/halonet50ts.a1h_in1k')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.) for k in ('.bn.', 'post_attn', 'height_rel', 'width_rel')}))
