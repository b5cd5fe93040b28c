# TransNeXt-Tiny + Mask R-CNN + FPN, COCO 3x.
# Source: TransNeXt publishes Mask R-CNN 1x only (DaiShiResearch/TransNeXt detection/maskrcnn/configs/
# mask_rcnn_transnext_tiny_fpn_1x_coco.py). This 3x takes that config's backbone and weight-decay settings (drop path
# 0.4, no decay on query_embedding / relative_pos_bias_local / cpb / temperature / norm, fp32) and the base's 3x
# recipe (../_base_/mask_rcnn_fpn_3x.py: AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale,
# batch 16).
# TransNeXt's own per-stage LayerNorms (norm1-norm4, eps 1e-6, in the ImageNet checkpoint) are its dense outputs'
# norms upstream, so no extra output LayerNorm (out_norm=None). Weight decay spares exactly upstream's five keys
# (its learnable_tokens / learnable_bias do decay).
_base_ = ['../_base_/mask_rcnn_fpn_3x.py']
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
