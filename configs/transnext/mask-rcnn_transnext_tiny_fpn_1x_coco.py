# TransNeXt-Tiny + Mask R-CNN + FPN, COCO 1x (published: 49.9 box / 44.6 mask AP).
# Source: DaiShiResearch/TransNeXt detection/maskrcnn/configs/mask_rcnn_transnext_tiny_fpn_1x_coco.py (+ _base_/
# schedules/schedule_1x.py, detection/maskrcnn/transnext_native.py). Upstream recipe: AdamW lr 1e-4, betas
# (0.9, 0.999), wd 0.05 with none on query_embedding / relative_pos_bias_local / cpb / temperature / norm, linear
# warm-up 500 iterations, 12 epochs with steps at 8 and 11, single scale, batch 16 (8 GPUs x 2), drop path 0.4,
# fp32, ImageNet-1k weights. (Upstream builds its masks and position tables for img_size=800; attnzoo's TransNeXt
# builds them per input size, so there is no size to set.)
# TransNeXt's own per-stage LayerNorms (norm1-norm4, eps 1e-6, in the ImageNet checkpoint) are its dense outputs'
# norms upstream, so no extra output LayerNorm (out_norm=None). Weight decay spares exactly upstream's five keys
# (its learnable_tokens / learnable_bias do decay).
# Set here: the backbone, drop path, the no-decay keys. Optimizer and schedule: ../_base_/mask_rcnn_fpn_1x.py.
_base_ = ['../_base_/mask_rcnn_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='transnext_tiny',
        out_norm=None,
        drop_path_rate=0.4,
        init_cfg=dict(_delete_=True, type='Pretrained',
                      checkpoint='hf-hub:DaiShiResearch/transnext-tiny-224-1k/transnext_tiny_224_1k.pth')),
    neck=dict(in_channels=[72, 144, 288, 576]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(
    _delete_=True,
    **{k: dict(decay_mult=0.) for k in ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature', 'norm')})))
