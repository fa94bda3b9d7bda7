# A tiny CPU WeakCLIP for tests and `make demo`: the released model at reduced widths (co-attention
# and FPN 32), BN instead of SyncBN, any label space (class names from the seeds' manifest), 224
# crops of images scaled to about 320, batch 8, 300 iterations with a short warm-up and a larger
# learning rate (the released 1e-4 with a 1,500-iteration warm-up would not move in 300 steps).
_base_ = ['./weakclip_vit-b16_2xb8-20k_voc12pseudo-512x512.py']
crop_size = (224, 224)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    label_space='custom',
    class_names=None,
    input_resolution=224,
    adapter_norm='BN',
    coattention=dict(width=32),
    neck=dict(in_channels=None, out_channels=32),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, num_classes=None, norm_cfg=norm_cfg),
    feature_size=(28, 28),
    test_cfg=dict(crop_size=224, stride=149),
    data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(1280, 320), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [dict(type='WeakCLIPCosineLR', max_iters=300, min_lr=1e-6, warmup=20, ratio=1e-6, leak=True,
                        by_epoch=False)]
train_cfg = dict(max_iters=300, val_interval=301)
masks = dict(img_scale=(1280, 320), ratios=(0.75, 1.0, 1.25), flip=True, crf='voc')
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100, max_keep_ckpts=2))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False)
