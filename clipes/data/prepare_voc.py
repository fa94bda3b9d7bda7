"""``clipes prepare-voc``: check a PASCAL VOC 2012 tree and, with SBD, add ``train_aug``.

The standard augmented training set of weakly supervised segmentation is SBD train + SBD val +
VOC train, minus VOC val (10,582 ids for the real datasets). Its ground truth,
``SegmentationClassAug/<id>.png``, is VOC's own ``SegmentationClass`` mask where VOC has one
(values kept, 255 boundaries included) and otherwise SBD's ``cls/<id>.mat`` segmentation, both
written as VOC-palette PNGs (values 0 background, 1..20 the classes, 255 ignore). After it,
``clipes cams --dataset voc12 --data-root <VOC> --split <VOC>/ImageSets/Segmentation/train_aug.txt``
and ``clipes eval`` need no other preparation.

Resumable: a PNG that exists is kept. Files are written atomically. A corrupt ``.mat`` is one
``failed <id>:`` line and the rest goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from clipes.errors import InputError, UserError
from clipes.runs import RunSummary, progress_bar
from clipes.store import manifest, maskstore
from clipes.store.fsutil import atomic_open, read_lines

TRAIN_AUG_SIZE = 10582  # train_aug of the real VOC 2012 + SBD
VOC_PARTS = {  # relative path -> what it is
    "JPEGImages": "the images",
    "Annotations": "the XML image-level labels",
    "ImageSets/Segmentation/train.txt": "VOC's segmentation train ids",
    "ImageSets/Segmentation/val.txt": "VOC's segmentation val ids",
    "SegmentationClass": "VOC's ground-truth masks",
}
SBD_PARTS = {"cls": "SBD's class segmentations (<id>.mat)", "train.txt": "SBD's train ids", "val.txt": "SBD's val ids"}


@dataclass
class VocPlan:
    """What prepare-voc found: the id lists it combines."""

    voc_train: list[str]
    voc_val: list[str]
    sbd_train: list[str] = field(default_factory=list)
    sbd_val: list[str] = field(default_factory=list)

    def train_aug(self) -> list[str]:
        """SBD train + SBD val + VOC train, minus VOC val, sorted."""
        return sorted((set(self.sbd_train) | set(self.sbd_val) | set(self.voc_train)) - set(self.voc_val))


def _ids(path: Path) -> list[str]:
    return [line.split()[0] for _, line in read_lines(path, "id list")]


def _missing(root: Path, parts: dict) -> list[str]:
    return [f"missing {root / rel}: {what}" for rel, what in parts.items() if not (root / rel).exists()]


def find_sbd(sbd: Path) -> Path:
    """SBD's ``dataset/`` folder: ``sbd`` itself, or ``sbd/dataset`` (the archive's ``benchmark_RELEASE``)."""
    sbd = Path(sbd).expanduser()
    if not (sbd / "cls").is_dir() and (sbd / "dataset" / "cls").is_dir():
        return sbd / "dataset"
    return sbd


def check_tree(voc: Path, sbd: Path | None, echo: Callable[[str], None]) -> VocPlan:
    """Check the VOC (and SBD) tree, one line for each missing part.

    Raises:
        UserError: a part is missing (after its line), naming the folder one level down that is
            the VOC 2012 folder when VOC points above it.
    """
    voc = Path(voc).expanduser()
    if not voc.is_dir():
        raise UserError(f"VOC folder not found: {voc}")
    problems = _missing(voc, VOC_PARTS)
    if problems and not (voc / "JPEGImages").is_dir():
        for below in ("VOC2012", "VOCdevkit/VOC2012"):
            if (voc / below / "JPEGImages").is_dir():
                raise UserError(f"{voc} has no JPEGImages/, but {voc / below} has: give VOC={voc / below}")
    if sbd is not None:
        sbd = find_sbd(sbd)
        if not sbd.is_dir():
            raise UserError(f"SBD folder not found: {sbd}")
        problems += _missing(sbd, SBD_PARTS)
    for line in problems:
        echo(line)
    if problems:
        raise UserError(f"{len(problems)} part(s) of the dataset tree missing (listed above)")
    segmentation = voc / "ImageSets" / "Segmentation"
    plan = VocPlan(_ids(segmentation / "train.txt"), _ids(segmentation / "val.txt"))
    if sbd is not None:
        plan.sbd_train, plan.sbd_val = _ids(sbd / "train.txt"), _ids(sbd / "val.txt")
    return plan


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class segmentation ``[H, W]`` uint8 (0 background, 1..20) of an SBD ``cls/<id>.mat``.

    Raises:
        InputError: unreadable file, no ``GTcls.Segmentation``, or values outside 0..20 and 255.
    """
    from scipy.io import loadmat

    try:
        data = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(data["GTcls"].Segmentation)
    except FileNotFoundError:
        raise InputError(f"SBD segmentation not found: {path}") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read SBD segmentation {path}: {reason}") from None
    if segmentation.ndim != 2 or segmentation.size == 0:
        raise InputError(f"{path}: GTcls.Segmentation is not a 2-D label map (shape {segmentation.shape})")
    values = np.unique(segmentation)
    if ((values > 20) & (values != 255)).any() or (values < 0).any():
        raise InputError(f"{path}: label values {values.tolist()[:8]} outside 0..20 and 255")
    return segmentation.astype(np.uint8)


def _write_ids(path: Path, ids: list[str]) -> None:
    with atomic_open(path, "w") as handle:
        handle.write("".join(f"{image_id}\n" for image_id in ids))


def prepare_voc(voc: Path, sbd: Path | None = None, echo: Callable[[str], None] = print,
                progress: bool = True) -> RunSummary:
    """Check the tree; with SBD, write ``train_aug.txt`` and ``SegmentationClassAug`` (see module docstring).

    Returns:
        A :class:`RunSummary` over the ground-truth PNGs (zero of each without SBD).

    Raises:
        UserError: missing parts of the tree.
    """
    voc = Path(voc).expanduser()
    plan = check_tree(voc, sbd, echo)
    echo(f"prepare-voc: {voc} has VOC train {len(plan.voc_train)} and val {len(plan.voc_val)} ids, "
         f"{len(maskstore.done_ids(voc / 'SegmentationClass'))} SegmentationClass masks")
    summary = RunSummary(folder=voc / "SegmentationClassAug", stage="prepare-voc")
    if sbd is None:
        echo("prepare-voc: give SBD=<SBD dataset folder> to write train_aug.txt and SegmentationClassAug "
             "(the standard 10,582-image training set)")
        return summary
    sbd = find_sbd(sbd)
    train_aug = plan.train_aug()
    split = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    _write_ids(split, train_aug)
    echo(f"prepare-voc: {split}: {len(train_aug)} ids (SBD train {len(plan.sbd_train)} + SBD val "
         f"{len(plan.sbd_val)} + VOC train {len(plan.voc_train)}, minus VOC val {len(plan.voc_val)})")
    if len(train_aug) != TRAIN_AUG_SIZE:
        echo(f"warning: train_aug has {len(train_aug)} ids, not the {TRAIN_AUG_SIZE} of the real VOC 2012 + SBD; "
             "check that both datasets are complete")
    out = summary.folder
    ids = sorted(set(train_aug) | set(plan.voc_val))
    header = {"command": manifest.command_line(), "input": {"voc": str(voc.resolve()), "sbd": str(sbd.resolve())},
              "rule": "VOC SegmentationClass/<id>.png where it exists (values kept), else SBD cls/<id>.mat",
              "format": maskstore.MASKS_FORMAT}
    stage = maskstore.GROUND_TRUTH_STAGE
    manifest.begin_run(out, stage, header, manifest.identity_of({"stage": stage, "source": "voc+sbd"}))
    existing = maskstore.done_ids(out)
    todo = [image_id for image_id in ids if image_id not in existing]
    summary.already_done = len(ids) - len(todo)
    sources = {"voc": 0, "sbd": 0}
    with progress_bar(len(todo), progress and bool(todo), "ground truth") as bar:
        for image_id in todo:
            try:
                voc_png = voc / "SegmentationClass" / f"{image_id}.png"
                if voc_png.is_file():
                    label, source = maskstore.read_png(voc_png), "voc"
                else:
                    label, source = read_sbd_mat(sbd / "cls" / f"{image_id}.mat"), "sbd"
                maskstore.write_mask(maskstore.png_path(out, image_id), label)
                sources[source] += 1
                summary.done += 1
            except InputError as exc:
                summary.failures[image_id] = str(exc)
                bar.write(f"failed {image_id}: {exc}")
            bar.update()
    summary.failed = len(summary.failures)
    manifest.end_run(out, {"finished": manifest.now(), "done": summary.done, "from_voc": sources["voc"],
                           "from_sbd": sources["sbd"], "already_done": summary.already_done,
                           "failed": summary.failed}, set(ids) - set(summary.failures), summary.failures, {},
                     len(maskstore.done_ids(out)))
    echo(f"prepare-voc: SegmentationClassAug: {sources['voc']} from VOC, {sources['sbd']} from SBD, "
         f"{summary.already_done} already there, {summary.failed} failed")
    return summary
