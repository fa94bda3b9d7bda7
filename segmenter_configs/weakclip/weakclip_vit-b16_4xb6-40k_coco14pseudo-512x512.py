# WeakCLIP as released for COCO 2014 (configs/coco_weakclip_vit-b_512x512_40k_mct.py): 91-way in
# COCO-category-id space (background + ids 1..90, the 10 unused ids included, spec 4.1). clipes' own
# COCO pseudo masks (contiguous 0..80) are mapped to category ids by MapSeedLabels, and the output
# masks back to 0..80 (a pixel given an unused id becomes 255). 40k iterations of 4 x 6 images; the
# COCO inference CRF. For an 81-way model set label_space='coco81' and num_classes 81 (a deviation).
_base_ = ['./weakclip_vit-b16_2xb8-20k_voc12pseudo-512x512.py']
label_space = 'coco91'
num_classes = 91
model = dict(
    label_space=label_space,
    neck=dict(in_channels=[768 + num_classes] * 4),
    decode_head=dict(num_classes=num_classes))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='MapSeedLabels', label_space=label_space),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=6, num_workers=6, dataset=dict(pipeline=train_pipeline))
param_scheduler = [dict(type='WeakCLIPCosineLR', max_iters=40000, min_lr=1e-6, warmup=1500, ratio=1e-6, leak=True,
                        by_epoch=False)]
train_cfg = dict(max_iters=40000, val_interval=40001)
masks = dict(crf='coco')
default_hooks = dict(logger=dict(interval=100))
