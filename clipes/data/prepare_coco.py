"""``clipes prepare-coco``: COCO instance annotations -> clipes' ``coco14`` split file and ground truth.

From one ``instances_<name>.json`` (COCO 2014 train or val) and its image folder it writes, into OUT
(default: the image folder's parent, the COCO root, where ``clipes eval`` looks by default):

* ``<OUT>/<name>.txt``: one line per image, ``<id> <class index> ...``: the id is the image file's
  stem (``COCO_train2014_000000000009``), the indices are 0-based into clipes' 80-class list
  (``prompts/coco14_classes.tsv``), which is the COCO categories sorted by category id. Every
  annotation counts for the image-level labels, crowd ones too. Images without any annotation
  are left out (counted and reported), as are images missing from the image folder (one
  ``failed <id>:`` line each).
* ``<OUT>/SegmentationClass/<id>.png``: VOC-palette PNGs, 0 background, ``c + 1`` class c, 255
  crowd regions. Where instances overlap, the smaller instance wins: instances are painted
  largest first, so an object lying on or in front of a larger one (a cup on a table, a person on
  a couch) keeps its pixels, and the order of the file decides nothing. A crowd region becomes 255
  only where no single instance covers it: an annotated person inside a crowd stays a person.
* ``<OUT>/<name>.json``: images per class, left-out and missing images.

Resumable: a PNG that exists is kept. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from clipes.data.datasets import check_images_present, find_image
from clipes.data.prompts import default_class_file, load_class_file
from clipes.errors import InputError, UserError
from clipes.runs import RunSummary, progress_bar
from clipes.store import manifest, maskstore
from clipes.store.fsutil import atomic_open, write_json


def load_instances(path: Path) -> dict:
    """The JSON of a COCO instances file, checked for the three lists this needs.

    Raises:
        UserError: missing, not JSON, or not in COCO instances format.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise UserError(f"{path} is not a COCO instances file (it needs 'images', 'annotations' and 'categories' "
                        "lists; captions and keypoints files have no per-class masks)")
    if data["annotations"] and "segmentation" not in data["annotations"][0]:
        raise UserError(f"{path}: its annotations have no 'segmentation'; give an instances_*.json file")
    return data


def category_indices(categories: list[dict], names: tuple[str, ...], where: Path) -> dict[int, int]:
    """COCO category id -> 0-based index into ``names``, clipes' coco14 classes (categories sorted by id).

    Raises:
        UserError: not the 80 COCO categories, or a name that differs from clipes' list.
    """
    ordered = sorted(categories, key=lambda c: c["id"])
    if len(ordered) != len(names):
        raise UserError(f"{where}: {len(ordered)} categories, not COCO's {len(names)}")
    for index, category in enumerate(ordered):
        if str(category.get("name", "")).replace(" ", "_") != names[index]:
            raise UserError(f"{where}: category id {category['id']} is {category.get('name')!r}, but clipes' class "
                            f"{index} is {names[index]!r} (the categories sorted by id must follow COCO's order)")
    return {int(category["id"]): index for index, category in enumerate(ordered)}


def label_map(coco, image_info: dict, annotations: list[dict], index_of: dict[int, int]) -> np.ndarray:
    """The ground truth ``[H, W]`` uint8 of one image (see module docstring for the overlap rule)."""
    label = np.zeros((int(image_info["height"]), int(image_info["width"])), dtype=np.uint8)
    crowd = np.zeros(label.shape, dtype=bool)
    covered = np.zeros(label.shape, dtype=bool)
    things = sorted((a for a in annotations if not a.get("iscrowd")), key=lambda a: -float(a.get("area", 0)))
    for annotation in things:  # largest first: a smaller instance painted later wins where they overlap
        mask = coco.annToMask(annotation).astype(bool)
        label[mask] = index_of[int(annotation["category_id"])] + 1
        covered |= mask
    for annotation in annotations:
        if annotation.get("iscrowd"):
            crowd |= coco.annToMask(annotation).astype(bool)
    label[crowd & ~covered] = maskstore.IGNORE
    return label


def prepare_coco(annotations: Path, images: Path, out: Path | None = None, echo: Callable[[str], None] = print,
                 progress: bool = True) -> RunSummary:
    """Write the split file, ground-truth PNGs and class counts (see module docstring).

    Args:
        annotations: ``instances_<name>.json``.
        images: the folder holding that split's images.
        out: output folder [the parent of ``images``].
        echo: where lines go.
        progress: progress bar.

    Raises:
        UserError: unreadable or non-instances JSON, other categories, or none of the first images
            in the image folder.
    """
    from pycocotools.coco import COCO

    annotations, images = Path(annotations).expanduser(), Path(images).expanduser()
    if not images.is_dir():
        raise UserError(f"image folder not found: {images}")
    out = Path(out).expanduser() if out is not None else images.resolve().parent
    data = load_instances(annotations)
    classes = load_class_file(default_class_file("coco14")).names
    index_of = category_indices(data["categories"], classes, annotations)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its indexing progress
        coco.createIndex()
    name = annotations.stem.removeprefix("instances_")
    by_id = {}
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        image_id = Path(info["file_name"]).stem
        by_id[image_id] = info
    annotated = [i for i, info in by_id.items() if coco.imgToAnns.get(info["id"])]
    unannotated = len(by_id) - len(annotated)
    if not annotated:
        raise UserError(f"{annotations}: none of its {len(by_id)} images has an annotation")
    check_images_present(images, annotated)
    summary = RunSummary(folder=out / "SegmentationClass", stage="prepare-coco")
    present = []
    for image_id in annotated:
        try:
            find_image(images, image_id)
            present.append(image_id)
        except InputError as exc:
            summary.failures[image_id] = str(exc)
            echo(f"failed {image_id}: {exc}")
    lines, counts = [], np.zeros(len(index_of), dtype=np.int64)
    for image_id in present:
        labels = sorted({index_of[int(a["category_id"])] for a in coco.imgToAnns[by_id[image_id]["id"]]})
        counts[labels] += 1
        lines.append(f"{image_id} {' '.join(map(str, labels))}\n")
    split = out / f"{name}.txt"
    with atomic_open(split, "w") as handle:
        handle.write("".join(lines))
    folder = summary.folder
    header = {"command": manifest.command_line(), "input": {"annotations": str(annotations.resolve()),
                                                            "images": str(images.resolve())},
              "rule": "largest instance painted first (smaller wins), crowd 255 where no instance",
              "format": maskstore.MASKS_FORMAT}
    stage = maskstore.GROUND_TRUTH_STAGE
    manifest.begin_run(folder, stage, header, manifest.identity_of({"stage": stage, "source": "coco",
                                                                    "rule": header["rule"]}))
    existing = maskstore.done_ids(folder)
    todo = [image_id for image_id in present if image_id not in existing]
    summary.already_done = len(present) - len(todo)
    with progress_bar(len(todo), progress and bool(todo), "ground truth") as bar:
        for image_id in todo:
            info = by_id[image_id]
            try:
                label = label_map(coco, info, coco.imgToAnns[info["id"]], index_of)
            except Exception as exc:  # a malformed segmentation of one annotation
                summary.failures[image_id] = f"cannot draw its annotations: {type(exc).__name__}: {exc}"
                bar.write(f"failed {image_id}: {summary.failures[image_id]}")
            else:
                maskstore.write_mask(maskstore.png_path(folder, image_id), label)
                summary.done += 1
            bar.update()
    summary.failed = len(summary.failures)
    manifest.end_run(folder, {"finished": manifest.now(), "annotations": str(annotations), "done": summary.done,
                              "already_done": summary.already_done, "failed": summary.failed},
                     set(present) - set(summary.failures), summary.failures, {}, len(maskstore.done_ids(folder)))
    per_class = {classes[i]: int(counts[i]) for i in range(len(classes))}
    write_json(out / f"{name}.json", {"split": str(split), "images": len(present), "unannotated_left_out": unannotated,
                                      "missing_images": sorted(summary.failures), "images_per_class": per_class})
    echo(f"prepare-coco: {split}: {len(present)} images; {unannotated} without any annotation left out, "
         f"{len(annotated) - len(present)} missing from {images}")
    echo("prepare-coco: images per class: " + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    echo(f"prepare-coco: {folder}: {summary.done} written, {summary.already_done} already there")
    return summary
