# DiNAT-Tiny + Mask R-CNN + FPN, COCO 3x (published: 48.6 box / 43.5 mask AP).
# Source: SHI-Labs/Neighborhood-Attention-Transformer detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py
# (+ detection/configs/_base_/schedules/schedule_3x.py). Upstream recipe: as NAT-Tiny's (AdamW lr 1e-4, wd 0.05
# with none on rpb / norms, warm-up 500 iterations, 36 epochs with steps at 27 and 33, DETR-style multi-scale +
# crop training, batch 16, drop path 0.2, fp16 with a static loss scale of 512), with the detection dilations
# below: ImageNet-1k weights trained with 224-px dilations, fine-tuned with dilations sized for ~800-px inputs.
# Everything but the schedule and the training pipeline comes from ./mask-rcnn_dinat_tiny_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_dinat_tiny_fpn_1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = {{_base_.param_scheduler_3x}}
train_dataloader = dict(dataset=dict(pipeline={{_base_.train_pipeline_3x}}))
