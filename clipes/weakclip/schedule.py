"""The reference's learning rate (spec 12): mmcv's cosine annealing to an **absolute** floor times a
linear warm-up, per parameter group.

``lr(t) = c(t) * (1 - (1 - t / warmup) * (1 - ratio))`` for ``t < warmup``, else ``c(t)``, with
``c(t) = min_lr + 0.5 (lr0 - min_lr) (1 + cos(pi t / T))``. For the groups with lr_mult 0 (the CLIP
encoders and the adapter) ``lr0 = 0``, so ``c(t) = 0.5 min_lr (1 - cos(pi t / T))``: the nominally
frozen weights move (the "min_lr leak"); ``leak=False`` keeps them at exactly 0.
"""

from __future__ import annotations

import math

LR = 1e-4
MIN_LR = 1e-6
WARMUP_ITERS = 1500
WARMUP_RATIO = 1e-6
WEIGHT_DECAY = 3e-5


def lr_at(step: int, lr0: float, max_iters: int, min_lr: float = MIN_LR, warmup: int = WARMUP_ITERS,
          ratio: float = WARMUP_RATIO, leak: bool = True) -> float:
    """The learning rate of a group with initial lr ``lr0`` at 0-based iteration ``step``."""
    if lr0 == 0.0 and not leak:
        return 0.0
    cosine = min_lr + 0.5 * (lr0 - min_lr) * (1 + math.cos(math.pi * step / max_iters))
    if step < warmup:
        return cosine * (1 - (1 - step / warmup) * (1 - ratio))
    return cosine
