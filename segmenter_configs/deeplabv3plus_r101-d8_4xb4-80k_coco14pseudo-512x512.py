# DeepLab-v3+ ResNet-101 (mmseg's head) on COCO 2014 pseudo masks (81 classes), 80k iterations.
# Validation: ground-truth PNGs (values 0..80, 255 ignore) given with GT_DIR and VAL_SPLIT.
_base_ = ['./deeplabv3plus_r101-d8_4xb4-20k_voc12pseudo-512x512.py']
model = dict(decode_head=dict(num_classes=81), auxiliary_head=dict(num_classes=81))
train_cfg = dict(max_iters=80000, val_interval=8000)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=8000))
