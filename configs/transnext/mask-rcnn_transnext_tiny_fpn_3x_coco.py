# TransNeXt-Tiny + Mask R-CNN + FPN, COCO 3x.
# Source: TransNeXt publishes Mask R-CNN 1x only (DaiShiResearch/TransNeXt detection/maskrcnn/configs/
# mask_rcnn_transnext_tiny_fpn_1x_coco.py). This 3x takes that config's backbone and weight-decay settings (drop path
# 0.4, no decay on query_embedding / relative_pos_bias_local / cpb / temperature / norm, fp32) and the base's 3x
# recipe (../_base_/attnzoo_backbone.py (3x switch): AdamW lr 1e-4, wd 0.05, 36 epochs with steps at 27 and 33, multi-scale,
# batch 16).
# TransNeXt's own per-stage LayerNorms (norm1-norm4, eps 1e-6, in the ImageNet checkpoint) are its dense outputs'
# norms upstream, so no extra output LayerNorm (out_norm=None). Weight decay spares exactly upstream's five keys
# (its learnable_tokens / learnable_bias do decay).
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_transnext_tiny_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_transnext_tiny_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
