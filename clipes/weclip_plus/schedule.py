"""WeCLIP+'s schedule (spec 10) and its one phase switch (spec 9.4), as deltas on WeCLIP's.

The optimiser and the warm-up + poly factor are WeCLIP's (:mod:`clipes.weclip.schedule`), except the
base learning rate: 2e-5, so the decoder and both heads train at 10 x 2e-5 = 2e-4. There is no RFM
phase switch (RFM+ is decoder-guided from iteration 0); from the 0-based iteration after
``OVERRIDE_AFTER`` on, the pseudo label is replaced by the prediction wherever its probability
exceeds 0.75.
"""

from __future__ import annotations

from clipes.weclip import schedule as weclip_schedule

BASE_LR = 2e-5
LR = BASE_LR * weclip_schedule.LR_MULTIPLIER  # 2e-4
ITERS = {"voc12": 30000, "coco14": 80000, "custom": 30000}
BATCH = {"voc12": 4, "coco14": 8, "custom": 4}
OVERRIDE_AFTER = {"voc12": 18000, "coco14": 40000, "custom": 18000}  # override when n_iter > this


def override_after(dataset: str, iters: int) -> int:
    """The override point scaled to a run of ``iters`` iterations (the reference's at its own length)."""
    reference = ITERS.get(dataset, 30000)
    return round(OVERRIDE_AFTER.get(dataset, 18000) * int(iters) / reference)
