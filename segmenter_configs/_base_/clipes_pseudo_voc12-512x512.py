# clipes: train on pseudo masks of PASCAL VOC 2012, validate on its ground truth. Inherits mmseg's
# VOC-aug dataset settings and only swaps the dataset type (PseudoMaskDataset, paths filled in by
# `clipes train-seg` from the work folder) and the pipeline ends (confidence load/pack).
_base_ = ['mmseg::_base_/datasets/pascal_voc12_aug.py']
custom_imports = dict(imports=['clipes.mmseg_ext'], allow_failed_imports=False)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='LoadConfidence'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputsWithConfidence'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    dataset=dict(_delete_=True, type='PseudoMaskDataset', split=None, image_dir=None, seg_dir=None,
                 confidence_dir=None, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(_delete_=True, type='PseudoMaskDataset', split=None, image_dir=None, seg_dir=None,
                 pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
