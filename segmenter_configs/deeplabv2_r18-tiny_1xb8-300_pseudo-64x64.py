# A tiny CPU DeepLab-v2 for tests and `make demo`: ResNet-18-V1c with 16 base channels, no
# pretraining, BN (not SyncBN), 64x64 crops of images scaled to about 128 pixels, batch 8, 300
# iterations. num_classes=None: clipes train-seg takes the class count from the pseudo masks' manifest.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py', './_base_/clipes_pseudo_voc12-512x512.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_20k.py'
]
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18, stem_channels=16, base_channels=16, norm_cfg=norm_cfg),
    decode_head=dict(
        _delete_=True, type='DeepLabV2Head', in_channels=128, in_index=3, dilations=(2, 4, 6, 8),
        num_classes=None, align_corners=False,
        loss_decode=dict(type='ConfidenceCrossEntropyLoss', mode='hard', loss_weight=1.0)),
    auxiliary_head=None)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='LoadConfidence'),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputsWithConfidence'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(max_iters=300, val_interval=300)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)  # the same pseudo masks give the same segmenter (make demo's table is repeatable)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=2),
    visualization=dict(type='SegVisualizationHook', draw=False))
