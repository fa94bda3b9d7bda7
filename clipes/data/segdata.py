"""Checks of a segmentation training set before any training starts (no mmseg needed), and where
a stage folder's images and classes are (what train-seg and train-weakclip read from a manifest).

A bad pseudo mask found after an hour of training wastes the hour; these checks read every label
PNG of the split once (header for the size, pixels for the values) and stop with one line naming
the first problems: missing folder, empty split, missing label, a label or confidence map whose
size differs from its image, label values that are neither a class nor 255. A missing, unreadable
or truncated *image* is left out of the run with one ``failed <id>:`` line instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from clipes.data.datasets import find_image, image_folder
from clipes.data.images import check_image_file
from clipes.errors import InputError, UserError
from clipes.store import manifest
from clipes.store.maskstore import IGNORE

_SHOWN = 3


def _png(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if image.mode not in ("P", "L"):
        raise InputError(f"{path}: a {image.mode} image; expected a palette or grayscale PNG")
    return image


def check_image(image_id: str, image_dir: Path) -> tuple[Path, tuple[int, int]]:
    """Find an image and check its file up front (:func:`clipes.data.images.check_image_file`).

    Returns:
        ``(path, (width, height))``.

    Raises:
        InputError: missing, unreadable or truncated image, naming the file.
    """
    image_path = find_image(image_dir, image_id)
    return image_path, check_image_file(image_path)


def check_labels(image_id: str, size: tuple[int, int], seg_dir: Path, num_classes: int,
                 confidence_dir: Path | None = None) -> None:
    """Check an image's label map (and optionally confidence map) against its size ``(W, H)``.

    Raises:
        InputError: the first problem found, naming the file.
    """
    label_path = Path(seg_dir) / f"{image_id}.png"
    with _png(label_path) as label:
        if label.size != size:
            raise InputError(f"{label_path}: label map is {label.size[0]}x{label.size[1]} but the image is "
                             f"{size[0]}x{size[1]}")
        values = np.unique(np.asarray(label, dtype=np.uint8))
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        raise InputError(f"{label_path}: values {bad.tolist()} are neither a class (0..{num_classes - 1}) nor 255")
    if confidence_dir is not None:
        confidence_path = Path(confidence_dir) / f"{image_id}.png"
        with _png(confidence_path) as confidence:
            if confidence.size != size:
                raise InputError(f"{confidence_path}: confidence map is {confidence.size[0]}x{confidence.size[1]} "
                                 f"but the image is {size[0]}x{size[1]}")


@dataclass
class CheckedSet:
    """The items of a split a run can use, and the images it leaves out.

    Attributes:
        ids: usable ids, in split order.
        failures: ``{id: reason}`` of images that are missing, unreadable or truncated.
    """

    ids: list[str]
    failures: dict[str, str] = field(default_factory=dict)


def check_training_set(ids: list[str], image_dir: Path, seg_dir: Path, num_classes: int,
                       confidence_dir: Path | None = None, what: str = "training set",
                       echo: Callable[[str], None] | None = None) -> CheckedSet:
    """Check every item of a split before a run starts.

    An image that is missing, unreadable or truncated is left out: one ``failed <id>: <reason>``
    line (through ``echo``) and an entry in the result's failures; the run goes on without it.
    A label or confidence map that does not fit its image (a wrong folder or config) stops the run.

    Raises:
        UserError: empty split, missing folder, any bad label map (the first few are named), or
            no usable image at all.
    """
    if not ids:
        raise UserError(f"the {what} split lists no images")
    for folder, name in ((seg_dir, "label folder"), (confidence_dir, "confidence folder")):
        if folder is not None and not Path(folder).is_dir():
            raise UserError(f"{what}: {name} not found: {folder}")
    problems, usable, failures = [], [], {}
    for image_id in ids:
        try:
            _, size = check_image(image_id, image_dir)
        except InputError as exc:
            failures[image_id] = str(exc)
            if echo is not None:
                echo(f"failed {image_id}: {exc}")
            continue
        try:
            check_labels(image_id, size, seg_dir, num_classes, confidence_dir)
        except InputError as exc:
            problems.append(str(exc))
            continue
        usable.append(image_id)
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise UserError(f"{what}: {len(problems)} of {len(ids)} label maps are unusable: "
                        + "; ".join(problems[:_SHOWN]) + more)
    if not usable:
        raise UserError(f"{what}: none of the {len(ids)} images can be read (e.g. {next(iter(failures.values()))})")
    return CheckedSet(usable, failures)


def stage_info(folder: Path | None, classes: Path | None = None, dataset: str | None = None) -> dict:
    """The manifest of a label folder (``{}`` without one), with ``"clipes"``: whether it had one.

    For masks made elsewhere (no manifest, or one without classes) the classes come from the class
    file ``classes`` or the built-in list of ``dataset``.
    """
    from clipes.data.prompts import BUILTIN, default_class_file, load_class_file

    info = dict((manifest.read_manifest(folder) if folder is not None and Path(folder).is_dir() else None) or {})
    info["clipes"] = bool(info)
    if classes is not None:
        info["classes"] = list(load_class_file(Path(classes).expanduser()).names)
    elif not info.get("classes") and dataset in BUILTIN:
        info["classes"] = list(load_class_file(default_class_file(dataset)).names)
    return info


def dataset_paths(info: dict, dataset: str | None = None, data_root: Path | None = None,
                  images_dir: str | None = None) -> tuple[str, Path, Path]:
    """``(dataset, data_root, image folder)``: the given ones, else those a stage manifest records.

    Raises:
        UserError: no DATA_ROOT given or recorded.
    """
    recorded = info.get("input", {})
    name = dataset or recorded.get("dataset") or "voc12"
    root = Path(data_root or recorded.get("data_root") or "").expanduser()
    if not str(root) or str(root) == ".":
        raise UserError("give DATA_ROOT: no stage-2 manifest says where the dataset is")
    if images_dir is None and data_root is None and recorded.get("images"):
        images = Path(recorded["images"])
        if images.is_dir():
            return name, root, images
    return name, root, image_folder(name, root, images_dir)
