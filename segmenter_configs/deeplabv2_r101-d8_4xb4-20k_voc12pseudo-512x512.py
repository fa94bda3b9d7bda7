# DeepLab-v2 ResNet-101 (clipes' DeepLabV2Head: ASPP of four dilated 3x3 classifiers, summed) on VOC
# 2012 pseudo masks. Optimiser as the CLIP-ES authors report for an ImageNet-pretrained backbone:
# SGD, LR 2e-4 (10x on the classifier), poly decay; mmseg's 20k schedule and batch 4 x 4 GPUs.
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py', './_base_/clipes_pseudo_voc12-512x512.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_20k.py'
]
model = dict(
    pretrained='open-mmlab://resnet101_v1c',
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(depth=101),
    decode_head=dict(
        _delete_=True, type='DeepLabV2Head', in_channels=2048, in_index=3, dilations=(6, 12, 18, 24),
        num_classes=21, align_corners=False,
        loss_decode=dict(type='ConfidenceCrossEntropyLoss', mode='hard', loss_weight=1.0)),
    auxiliary_head=None)
optim_wrapper = dict(
    optimizer=dict(lr=2e-4), paramwise_cfg=dict(custom_keys=dict(decode_head=dict(lr_mult=10.0))))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=20000, by_epoch=False)]
