# TransNeXt-Tiny + UperNet, ADE20K 512x512, 160k iterations (published: 51.1 mIoU single-scale).
# Source: DaiShiResearch/TransNeXt segmentation/upernet/configs/upernet_transnext_tiny_512x512_160k_ade20k_ss.py
# (the config its README says to train with). Upstream recipe: AdamW lr 6e-5, betas (0.9, 0.999), wd 0.05 (not the
# usual 0.01) with none on query_embedding / relative_pos_bias_local / cpb / temperature / norm, linear warm-up 1500
# iterations (ratio 1e-6) then poly decay (power 1, min 0), batch 16 (8 GPUs x 2), drop path 0.4, fp32,
# sliding-window testing (512 crops, stride 341), ImageNet-1k weights.
# TransNeXt's own per-stage LayerNorms (norm1-norm4, eps 1e-6, in the ImageNet checkpoint) are its dense outputs'
# norms upstream, so no extra output LayerNorm (out_norm=None). Weight decay spares exactly upstream's five keys
# (its learnable_tokens / learnable_bias do decay).
# Set here: the backbone, drop path, wd, the no-decay keys, the test mode. Schedule and pipeline:
# ../_base_/upernet_160k.py.
_base_ = ['../_base_/upernet_160k.py']
model = dict(
    backbone=dict(
        model_name='transnext_tiny',
        out_norm=None,
        drop_path_rate=0.4,
        init_cfg=dict(_delete_=True, type='Pretrained',
                      checkpoint='hf-hub:DaiShiResearch/transnext-tiny-224-1k/transnext_tiny_224_1k.pth')),
    decode_head=dict(in_channels=[72, 144, 288, 576]),
    auxiliary_head=dict(in_channels=288),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
optim_wrapper = dict(optimizer=dict(weight_decay=0.05), paramwise_cfg=dict(custom_keys=dict(
    _delete_=True,
    **{k: dict(decay_mult=0.) for k in ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature', 'norm')})))
