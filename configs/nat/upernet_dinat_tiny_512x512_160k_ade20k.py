# DiNAT-Tiny + UperNet, ADE20K 512x512, 160k iterations (published: 47.8 mIoU, 48.8 multi-scale).
# Source: SHI-Labs/Neighborhood-Attention-Transformer
# segmentation/configs/dinat/upernet_dinat_tiny_512x512_160k_ade20k.py.
# Upstream recipe: AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 with none on rpb / norms, linear warm-up 1500
# iterations (ratio 1e-6) then poly decay (power 1, min 0), batch 16 (8 GPUs x 2), drop path 0.3,
# ImageNet-1k weights, fp16 with a static loss scale of 512, and the segmentation dilations below (sized for
# 512-px crops).
# Set here: the backbone, dilations, drop path, fp16. Optimizer, schedule and pipeline: ../_base_/upernet_160k.py.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='dinat_tiny',
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
        drop_path_rate=0.3,
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='hf-hub:shi-labs/dinat-tiny-in1k-224')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
# fp32 here, so the config runs anywhere (AmpOptimWrapper is CUDA-only); the authors' fp16 on GPUs:
#   --cfg-options optim_wrapper.type=AmpOptimWrapper optim_wrapper.loss_scale=512.
