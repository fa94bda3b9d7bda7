"""WeCLIP's optimiser schedule (spec section 10): linear warm-up from 1e-6, then poly."""

from __future__ import annotations

BASE_LR = 2e-4
LR_MULTIPLIER = 10.0  # the decoder sits in the reference's parameter group 3: lr = 10 x 2e-4
WARMUP_ITERS = 50
WARMUP_RATIO = 1e-6
POWER = 1.0
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8
ITERS = {"voc12": 30000, "coco14": 80000, "custom": 30000}
# The reference switches to the decoder-guided RFM when its forward counter passes 15000 (VOC) or
# 40000 (COCO); validation forwards advance that counter, which moves VOC's switch to iteration 9145.
SWITCH_ITER = {"voc12": 9145, "coco14": 40001, "custom": 9145}


def lr_factor(step: int, max_iters: int, warmup: int = WARMUP_ITERS, ratio: float = WARMUP_RATIO,
              power: float = POWER) -> float:
    """Multiplier of the base learning rate at 0-based step ``step`` (set before the step)."""
    if step < warmup:
        return 1 - (1 - step / warmup) * (1 - ratio)
    return (1 - step / max_iters) ** power
