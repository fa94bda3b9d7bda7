"""ExCEL's schedule and phases (spec 6, 10), as deltas on WeCLIP's.

The optimiser and the warm-up + poly factor are WeCLIP's (:mod:`clipes.weclip.schedule`) with a base
learning rate of 1e-4 (the decoder trains at 10 x 1e-4 = 1e-3) and, for COCO, a 200-iteration
warm-up. The phases switch on the 0-based iteration: from ``DYNAMIC_FROM`` the CAM is the dynamic
(LVC) one and the refinement is decoder-guided; from ``SELF_AFFINITY_FROM`` (VOC only) the affinity
labels come from the decoder's own prediction. Shorter runs scale both points with ``iters``.
"""

from __future__ import annotations

from clipes.weclip import schedule as weclip_schedule

BASE_LR = 1e-4
LR = BASE_LR * weclip_schedule.LR_MULTIPLIER  # 1e-3
ITERS = {"voc12": 30000, "coco14": 100000, "custom": 30000}
WARMUP_ITERS = {"voc12": 50, "coco14": 200, "custom": 50}
BATCH = 4
DYNAMIC_FROM = {"voc12": 14000, "coco14": 30000, "custom": 14000}
SELF_AFFINITY_FROM = {"voc12": 24000, "coco14": None, "custom": 24000}  # COCO: always the pseudo labels


def scaled(point: int | None, dataset: str, iters: int) -> int | None:
    """A phase point of the reference's run length moved to a run of ``iters`` iterations."""
    if point is None:
        return None
    return round(point * int(iters) / ITERS.get(dataset, 30000))


def dynamic_from(dataset: str, iters: int) -> int:
    """First 0-based iteration with the dynamic CAM and the decoder-guided refinement."""
    return scaled(DYNAMIC_FROM.get(dataset, DYNAMIC_FROM["custom"]), dataset, iters)


def self_affinity_from(dataset: str, iters: int) -> int | None:
    """First 0-based iteration whose affinity labels come from the decoder's prediction (None: never)."""
    return scaled(SELF_AFFINITY_FROM.get(dataset, SELF_AFFINITY_FROM["custom"]), dataset, iters)
