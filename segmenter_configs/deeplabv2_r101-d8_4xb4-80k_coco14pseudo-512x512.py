# DeepLab-v2 ResNet-101 (clipes' DeepLabV2Head) on COCO 2014 pseudo masks, 80k iterations; LR as the
# CLIP-ES authors report for an ImageNet-pretrained backbone (2e-4; 2.5e-5 if it was COCO-pretrained).
# Validation: ground-truth PNGs (values 0..80, 255 ignore) given with GT_DIR and VAL_SPLIT.
_base_ = ['./deeplabv2_r101-d8_4xb4-20k_voc12pseudo-512x512.py']
model = dict(decode_head=dict(num_classes=81))
train_cfg = dict(max_iters=80000, val_interval=8000)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=8000))
