# TransNeXt-Tiny + RetinaNet + FPN, COCO 1x.
# Source: TransNeXt publishes no RetinaNet result. This takes the backbone and weight-decay settings of
# DaiShiResearch/TransNeXt detection/maskrcnn/configs/mask_rcnn_transnext_tiny_fpn_1x_coco.py (drop path 0.4, no decay
# on query_embedding / relative_pos_bias_local / cpb / temperature / norm, fp32) and the base's RetinaNet 1x recipe
# (../_base_/retinanet_fpn_1x.py: AdamW lr 1e-4, wd 0.05, steps at 8 and 11, single scale, batch 16).
# FPN levels 8-128 come from stages 1-3 plus two extra convs on the last input (as mmdet's Swin RetinaNet).
# TransNeXt's own per-stage LayerNorms (norm1-norm4, eps 1e-6, in the ImageNet checkpoint) are its dense outputs'
# norms upstream, so no extra output LayerNorm (out_norm=None). Weight decay spares exactly upstream's five keys
# (its learnable_tokens / learnable_bias do decay).
_base_ = ['../_base_/retinanet_fpn_1x.py']
model = dict(
    backbone=dict(
        model_name='transnext_tiny',
        out_indices=(1, 2, 3),
        out_norm=None,
        drop_path_rate=0.4,
        init_cfg=dict(_delete_=True, type='Pretrained',
                      checkpoint='hf-hub:DaiShiResearch/transnext-tiny-224-1k/transnext_tiny_224_1k.pth')),
    neck=dict(in_channels=[144, 288, 576], start_level=0))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=dict(
    _delete_=True,
    **{k: dict(decay_mult=0.) for k in ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature', 'norm')})))
