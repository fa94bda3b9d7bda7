# DeepLab-v3+ ResNet-101 (mmseg's head) on VOC 2012 pseudo masks; mmseg's 20k VOC-aug schedule.
_base_ = [
    'mmseg::_base_/models/deeplabv3plus_r50-d8.py', './_base_/clipes_pseudo_voc12-512x512.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_20k.py'
]
model = dict(
    pretrained='open-mmlab://resnet101_v1c',
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(depth=101),
    decode_head=dict(
        type='ConfidenceDepthwiseSeparableASPPHead', num_classes=21,
        loss_decode=dict(_delete_=True, type='ConfidenceCrossEntropyLoss', mode='hard', loss_weight=1.0)),
    auxiliary_head=dict(
        type='ConfidenceFCNHead', num_classes=21,
        loss_decode=dict(_delete_=True, type='ConfidenceCrossEntropyLoss', mode='hard', loss_weight=0.4)))
