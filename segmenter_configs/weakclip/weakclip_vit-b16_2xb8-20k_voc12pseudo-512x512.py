# WeakCLIP (IJCV 2024) as released (configs/voc_weakclip_vit-b_512x512_20k_mct.py of hustvl/WeakCLIP),
# on MMSegmentation 1.x: CLIP ViT-B/16 (any ViT CLIP clipes reads; `clip` is filled in from CLIP=),
# 8 learned contexts, decoupled co-attention (width 256, 4 heads, 3 layers), mmseg's FPN neck and
# FPNHead (256 channels, SyncBN), seed + CRF boundary + 0.4 x score-map losses on a 64 x 64 grid.
# Data: the seeds (clipes' CLIP-ES pseudo masks, values 0 / c+1 / 255, or any folder of mask PNGs)
# with mmseg 0.19's VOC pipeline; AdamW 1e-4, wd 3e-5, CLIP encoders and the adapter at lr_mult 0,
# warm-up x cosine to an absolute 1e-6 (the "min-lr leak", spec 12), 20k iterations of 2 x 8 images.
# `clipes train-weakclip` fills in clip, the data paths and the class names; see docs/weakclip.md.
_base_ = ['../_base_/clipes_pseudo_voc12-512x512.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
label_space = 'voc'
num_classes = 21
model = dict(
    type='WeakCLIP',
    clip=None,
    label_space=label_space,
    input_resolution=512,
    n_contexts=8,
    name_length=5,
    drop_path_rate=0.1,
    drop_path_layout='token',
    adapter_norm='SyncBN',
    frozen_clip=False,
    coattention=dict(width=256, heads=4, layers=3, dropout=0.1, chained=False),
    neck=dict(type='FPN', in_channels=[768 + num_classes] * 4, out_channels=256, num_outs=4),
    decode_head=dict(
        type='FPNHead', in_channels=[256, 256, 256, 256], in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
        channels=256, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    feature_size=(64, 64),
    tau=0.07,
    id_weight=0.4,
    test_cfg=dict(mode='slide', crop_size=512, stride=341),
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='MapSeedLabels', label_space=label_space),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=8, persistent_workers=True,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(pipeline=train_pipeline))
# validation on ground truth is not run during training (clipes scores the masks with `make eval`)
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=3e-5),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=0.0), text_encoder=dict(lr_mult=0.0))))
param_scheduler = [dict(type='WeakCLIPCosineLR', max_iters=20000, min_lr=1e-6, warmup=1500, ratio=1e-6, leak=True,
                        by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=20001)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
# the test-time settings of tools/test.py --aug-test and tools/make_crf.py (used by masks-weakclip)
masks = dict(img_scale=(2048, 512), ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True, crf='voc')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=3, save_last=True),
    visualization=dict(type='SegVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=504)
env_cfg = dict(cudnn_benchmark=True)
