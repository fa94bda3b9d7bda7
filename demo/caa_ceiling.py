"""How much can CAA gain on the demo's CAMs? Refinement with affinities other than the CLIP's attention.

A diagnostic, not part of the pipeline. It takes the raw CAMs that ``make demo`` left in ``WORK/cams``
and runs the CAA step of spec section 5 (Sinkhorn, symmetrise, square, class box masks, bilinear
resize) on them with hand-made attention matrices instead of the CLIP's:

* ``oracle``: patches attend to the patches of the same ground-truth label (majority label of each
  patch; a small uniform floor keeps Sinkhorn defined): the best affinity CAA could be given;
* ``local``: a Gaussian of the grid distance (sigma 1.5 patches): attention that is only positional;
* ``uniform``: every patch attends to every patch alike, which is what Sinkhorn makes of attention
  whose rows are all the same.

Each goes through CAA twice, with the demo's settings (``clipes demo``: no Sinkhorn, power 1) and
with the spec's (3 Sinkhorn rounds, power 2), and is scored like ``clipes eval`` scores refined maps
(background ``1 - max``) on the val split, next to the raw CAMs scored the same way. Usage::

    .venv/bin/python demo/caa_ceiling.py [WORK]   # default work/demo, after make demo
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from clipes.clip_es.refine_runner import RefineOptions
from clipes.data.datasets import read_split
from clipes.data.evaluation import Confusion, labels_from_maps
from clipes.demo import demo_data
from clipes.demo.pipeline import DemoOptions
from clipes.maps.caa import DEFAULT_BOX_THRESHOLD, affinity_from_attention, refine_cams, upsample_maps
from clipes.store import camstore, maskstore


def patch_labels(gt: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Majority ground-truth label of each patch, ``[h * w]``."""
    h, w = grid
    ph, pw = gt.shape[0] // h, gt.shape[1] // w
    cells = torch.from_numpy(gt[:h * ph, :w * pw].astype(np.int64)).reshape(h, ph, w, pw)
    return torch.mode(cells.permute(0, 2, 1, 3).reshape(h * w, ph * pw), dim=1).values


def attentions(labels: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Row-stochastic ``[N, N]`` attention matrices of the three kinds (see module docstring)."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([yy.flatten(), xx.flatten()], dim=1).float()  # [N, 2]
    kinds = {
        "oracle": (labels[:, None] == labels[None, :]).float() + 0.05,
        "local": torch.exp(-torch.cdist(points, points) ** 2 / (2 * 1.5 ** 2)),
        "uniform": torch.ones(h * w, h * w),
    }
    return {name: a / a.sum(dim=1, keepdim=True) for name, a in kinds.items()}


def caa_settings() -> dict[str, tuple[int, int]]:
    """(Sinkhorn rounds, matrix power) of the demo's CAA and of the spec's (``make refine``'s defaults)."""
    settings = {}
    for name, options in (("demo", DemoOptions), ("spec", RefineOptions)):
        defaults = {f.name: f.default for f in fields(options)}
        settings[name] = (defaults["sinkhorn_rounds"], defaults["affinity_power"])
    return settings


def main(work: Path) -> None:
    data = work / "data"
    split = data / "ImageSets" / "Segmentation" / "val.txt"
    if not (work / camstore.STAGE).is_dir() or not split.is_file():
        sys.exit(f"error: {work} holds no demo run (run make demo first)")
    kinds = ("oracle", "local", "uniform")
    settings = caa_settings()
    confusions = {"raw CAMs": Confusion(len(demo_data.CLASS_NAMES) + 1)}  # + background
    confusions.update({(kind, name): Confusion(len(demo_data.CLASS_NAMES) + 1) for kind in kinds for name in settings})
    ids = [image_id for image_id, _ in read_split(split)]
    for image_id in ids:
        gt = maskstore.read_png(maskstore.png_path(data / "SegmentationClass", image_id))
        stored = camstore.read_cam_file(camstore.cam_path(work / camstore.STAGE, image_id))
        grid = stored.cams.shape[1:]
        size = stored.image_size
        confusions["raw CAMs"].add(gt, labels_from_maps(upsample_maps(stored.cams, size), stored.keys, 1))
        for kind, attention in attentions(patch_labels(gt, grid), grid).items():
            for name, (rounds, power) in settings.items():
                refined = refine_cams(affinity_from_attention(attention, rounds, power), stored.cams, size,
                                      DEFAULT_BOX_THRESHOLD["voc12"])
                confusions[kind, name].add(gt, labels_from_maps(refined, stored.keys, 1))
    print(f"CAA with other affinities, {len(ids)} val images of {work} (mIoU %, background 1 - max):")
    header = "".join(f"{f'{name} ({rounds} rounds, power {power})':>32}" for name, (rounds, power) in settings.items())
    print(f"  {'affinity':<10}{header}")
    print(f"  {'raw CAMs':<10}{100 * confusions['raw CAMs'].scores()['miou']:>32.1f}")
    for kind in kinds:
        print(f"  {kind:<10}" + "".join(f"{100 * confusions[kind, name].scores()['miou']:>32.1f}" for name in settings))

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "work/demo"))
