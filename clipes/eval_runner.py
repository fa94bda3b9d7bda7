"""``clipes eval`` as a library call: mIoU of every stage folder found in a work folder.

Scores ``cams`` (raw CAMs, best background exponent of 1..10), ``refined`` (best of {1, 2}),
``masks`` (with the 255 pixels counted as misses, and with them left out), ``labels`` (the CRF
argmax before the confidence rule) and ``predictions`` (a trained segmenter's, from ``clipes
predict``) against ground-truth PNGs, next to the most-frequent-class baseline (that class predicted
everywhere), prints a table and writes the figures as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from clipes.data.datasets import ground_truth_dir, read_split
from clipes.data.evaluation import CAM_ALPHAS, REFINED_ALPHAS, Confusion, labels_from_maps
from clipes.errors import InputError, UserError
from clipes.maps.caa import upsample_maps
from clipes.store import camstore, manifest, maskstore
from clipes.store.fsutil import write_json

STAGES = (camstore.STAGE, camstore.REFINED_STAGE, maskstore.MASKS_STAGE, maskstore.LABELS_STAGE,
          maskstore.PREDICTIONS_STAGE)
_PNG_STAGES = (maskstore.MASKS_STAGE, maskstore.LABELS_STAGE, maskstore.PREDICTIONS_STAGE)


@dataclass
class EvalOptions:
    """Options of ``clipes eval``.

    Attributes:
        work: folder holding any of ``cams/``, ``refined/``, ``masks/``, ``labels/``, ``predictions/``.
        split: ids to score.
        data_root: dataset folder (default: the one the stage manifests name).
        gt_dir: ground-truth PNG folder (default: ``DATA_ROOT/SegmentationClassAug``, else
            ``DATA_ROOT/SegmentationClass``).
        json_path: where the figures go (default ``<work>/eval.json``).
    """

    work: Path
    split: Path
    data_root: Path | None = None
    gt_dir: Path | None = None
    json_path: Path | None = None


def _stage_manifests(work: Path) -> dict:
    found = {}
    for stage in STAGES:
        folder = work / stage
        data = manifest.read_manifest(folder) if folder.is_dir() else None
        if data is not None and data.get("stage") == stage:
            found[stage] = data
    return found


def _ground_truth_dir(opts: EvalOptions, manifests: dict) -> Path:
    if opts.gt_dir is not None:
        gt_dir = Path(opts.gt_dir).expanduser()
        if not gt_dir.is_dir():
            raise UserError(f"ground-truth folder not found: {gt_dir}")
        return gt_dir
    root, dataset = opts.data_root, None
    for data in manifests.values():
        recorded = data.get("dataset", {}) if isinstance(data.get("dataset"), dict) else {}
        root = root or recorded.get("data_root") or data.get("input", {}).get("data_root")
        dataset = dataset or recorded.get("name") or data.get("input", {}).get("dataset")
    if root is None:
        raise UserError("give DATA_ROOT or --gt-dir: no manifest says where the dataset is")
    found = ground_truth_dir(root, dataset)
    if found is None:
        raise UserError(f"no SegmentationClassAug or SegmentationClass folder in {root}"
                        + (" or beside it" if dataset == "coco14" else "") + "; give --gt-dir")
    return found


def run_eval(opts: EvalOptions, echo: Callable[[str], None] = print) -> dict:
    """Score every stage folder of ``opts.work`` on ``opts.split``.

    Returns:
        The report written to JSON (``stages``, ``failures``, ...).

    Raises:
        UserError: no stage folder, no ground truth, unreadable split.
    """
    work = Path(opts.work).expanduser()
    manifests = _stage_manifests(work)
    if not manifests:
        raise UserError(f"nothing to evaluate in {work}: no cams/, refined/, masks/, labels/ or predictions/ folder with a manifest")
    classes = next(iter(manifests.values())).get("classes") or []
    if not classes:
        raise UserError(f"the manifests in {work} list no classes")
    names = ["background"] + list(classes)
    ids = [image_id for image_id, _ in read_split(Path(opts.split).expanduser())]
    gt_dir = _ground_truth_dir(opts, manifests)
    n = len(names)
    confusions = {
        camstore.STAGE: {alpha: Confusion(n) for alpha in CAM_ALPHAS},
        camstore.REFINED_STAGE: {alpha: Confusion(n) for alpha in REFINED_ALPHAS},
        **{stage: {None: Confusion(n)} for stage in _PNG_STAGES},
    }
    gt_pixels = np.zeros(n, dtype=np.int64)
    failures: dict[str, str] = {}
    counted = {stage: 0 for stage in manifests}
    for image_id in ids:
        try:
            gt = maskstore.read_png(maskstore.png_path(gt_dir, image_id))
        except InputError as exc:
            failures[image_id] = str(exc)
            echo(f"failed {image_id}: {exc}")
            continue
        gt_pixels += np.bincount(gt[gt < n].ravel(), minlength=n)
        for stage in manifests:
            try:
                for key, pred in _predictions(stage, work / stage, image_id, confusions[stage]):
                    if pred.shape != gt.shape:
                        raise InputError(f"{stage} of {image_id} is {pred.shape[1]}x{pred.shape[0]} but the ground "
                                         f"truth is {gt.shape[1]}x{gt.shape[0]}")
                    confusions[stage][key].add(gt, pred)
                counted[stage] += 1
            except InputError as exc:
                failures[f"{stage}/{image_id}"] = str(exc)
                echo(f"failed {stage}/{image_id}: {exc}")
    report = {"work": str(work), "split": str(Path(opts.split).resolve()), "ground_truth": str(gt_dir.resolve()),
              "images": len(ids), "classes": names, "stages": {}, "failures": failures,
              "created": manifest.now()}
    for stage in manifests:
        report["stages"][stage] = _stage_report(stage, confusions[stage], counted[stage])
    report["baseline"] = most_frequent_class_baseline(gt_pixels, names)
    json_path = Path(opts.json_path).expanduser() if opts.json_path else work / "eval.json"
    write_json(json_path, report)
    for line in format_report(report):
        echo(line)
    echo(f"eval: {len(ids)} images, {len(failures)} failed -> {json_path}")
    return report


def most_frequent_class_baseline(gt_pixels: np.ndarray, names: list[str]) -> dict:
    """Scores of predicting the most frequent ground-truth class everywhere.

    Args:
        gt_pixels: ``[n]`` ground-truth pixel count per class (255 left out).
        names: class names, background first.

    Returns:
        ``{"class": name, **Confusion.scores()}``; ``class`` is None when no pixel was counted.
    """
    confusion = Confusion(len(names))
    if gt_pixels.sum() == 0:
        return {"class": None, **confusion.scores()}
    winner = int(np.argmax(gt_pixels))
    confusion.matrix[:, winner] = gt_pixels
    return {"class": names[winner], **confusion.scores()}


def _predictions(stage: str, folder: Path, image_id: str, alphas: dict):
    """``(alpha or None, label map)`` pairs of one image for one stage."""
    if stage in _PNG_STAGES:
        return [(None, maskstore.read_png(maskstore.png_path(folder, image_id)))]
    stored = camstore.read_cam_file(camstore.cam_path(folder, image_id))
    maps = stored.cams
    if stage == camstore.STAGE:
        maps = upsample_maps(maps, stored.image_size)
    return [(alpha, labels_from_maps(maps, stored.keys, alpha)) for alpha in alphas]


def _stage_report(stage: str, confusions: dict, images: int) -> dict:
    if stage == maskstore.MASKS_STAGE:
        confusion = confusions[None]
        return {"images": images, "with_ignored": confusion.scores(count_ignored=True),
                "without_ignored": confusion.scores(count_ignored=False)}
    if stage in _PNG_STAGES:
        return {"images": images, **confusions[None].scores()}
    sweep = {alpha: confusion.scores()["miou"] for alpha, confusion in confusions.items()}
    best = max(sweep, key=lambda a: -1.0 if sweep[a] is None else sweep[a])
    return {"images": images, "best_alpha": best, "sweep": {str(a): v for a, v in sweep.items()},
            **confusions[best].scores()}


def _pct(value) -> str:
    return "   -" if value is None else f"{100 * value:5.1f}"


def format_report(report: dict) -> list[str]:
    """The printed table: one summary row per stage setting, then per-class IoU / precision / recall."""
    rows = []
    columns = []  # (title, scores)
    for stage, data in report["stages"].items():
        if stage == maskstore.MASKS_STAGE:
            coverage = data["with_ignored"]["coverage"]
            rows.append(f"{'masks':<9} {_pct(data['with_ignored']['miou'])}  255 pixels counted as misses "
                        f"(coverage {_pct(coverage).strip()}%)")
            rows.append(f"{'masks':<9} {_pct(data['without_ignored']['miou'])}  255 pixels left out")
            columns += [("masks", data["with_ignored"]), ("masks w/o 255", data["without_ignored"])]
        elif stage in _PNG_STAGES:
            title = {maskstore.LABELS_STAGE: "labels", maskstore.PREDICTIONS_STAGE: "segmenter"}[stage]
            what = {maskstore.LABELS_STAGE: "CRF argmax, before the confidence rule",
                    maskstore.PREDICTIONS_STAGE: "trained segmenter (predictions/)"}[stage]
            rows.append(f"{title:<9} {_pct(data['miou'])}  {what}")
            columns.append((title, data))
        else:
            tried = ", ".join(data["sweep"])
            rows.append(f"{stage:<9} {_pct(data['miou'])}  background exponent {data['best_alpha']} (best of {tried})")
            columns.append((stage, data))
    baseline = report.get("baseline") or {}
    if baseline.get("class") is not None:
        rows.append(f"{'baseline':<9} {_pct(baseline['miou'])}  '{baseline['class']}' everywhere (most frequent class)")
    lines = [f"{'stage':<9} {'mIoU':>5}  setting (ground truth {report['ground_truth']})"] + rows
    header = f"{'class':<16}" + "".join(f" {title:>17}" for title, _ in columns)
    lines += ["", "per class IoU / precision / recall (%)", header]
    for c, name in enumerate(report["classes"]):
        if not any(scores["present"][c] or scores["precision"][c] is not None for _, scores in columns):
            continue
        cells = "".join(f" {_pct(s['iou'][c])}/{_pct(s['precision'][c])}/{_pct(s['recall'][c])}" for _, s in columns)
        lines.append(f"{name[:16]:<16}{cells}")
    return lines
