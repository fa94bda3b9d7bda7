"""Image-level labelled datasets: which images, where they are, which classes they contain.

* ``voc12``: ``DATA_ROOT/JPEGImages/<id>.jpg`` and labels from ``DATA_ROOT/Annotations/<id>.xml``
  (every ``<object><name>``, difficult ones too, de-duplicated keeping first appearance), or
  from a plain label file given with ``labels_file`` (lines ``<id> <class> ...``, a class being a
  name or a 0-based index).
* ``coco14``: images in ``DATA_ROOT`` (or ``DATA_ROOT/<images_dir>``); the split file's lines are
  ``<id> <class index> ...`` with 0-based indices into the 80 classes, as the reference uses.
* ``custom``: images in ``DATA_ROOT`` (or ``<images_dir>``); split lines ``<id> <class name> ...``;
  the class file is required.

A split file's first token per line is the image id (a token like ``JPEGImages/x.jpg`` is reduced
to ``x``). Problems with the whole dataset raise :class:`UserError`; problems with one image raise
:class:`InputError` from :meth:`Dataset.labels` / :meth:`Dataset.image_path`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from clipes.data.prompts import ClassList
from clipes.errors import InputError, UserError
from clipes.store.fsutil import read_lines

DATASETS = ("voc12", "coco14", "custom")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


def read_split(path: Path) -> list[tuple[str, list[str]]]:
    """Lines of a split file as ``(id, rest_of_tokens)``; comments and blank lines skipped.

    Raises:
        UserError: missing, unreadable or empty file, or an id listed twice.
    """
    path = Path(path)
    rows, seen = [], {}
    for n, line in read_lines(path, "split file"):
        tokens = line.split()
        image_id = tokens[0]
        if "/" in image_id:
            image_id = Path(image_id).stem
        if image_id in seen:
            raise UserError(f"{path}:{n}: image id {image_id} already listed on line {seen[image_id]}")
        seen[image_id] = n
        rows.append((image_id, tokens[1:]))
    return rows


@dataclass
class Dataset:
    """A split of an image-level labelled dataset.

    Attributes:
        name: ``voc12``, ``coco14`` or ``custom``.
        root: DATA_ROOT.
        classes: the class list (index = position).
        ids: image ids in split order.
    """

    name: str
    root: Path
    classes: ClassList
    ids: list[str]
    image_dir: Path
    annotation_dir: Path | None = None
    _tokens: dict = field(default_factory=dict, repr=False)

    def image_path(self, image_id: str) -> Path:
        """Existing image file of ``image_id`` (see :func:`find_image`)."""
        return find_image(self.image_dir, image_id)

    def labels(self, image_id: str) -> tuple[int, ...]:
        """0-based class indices of ``image_id``, first-appearance order, no duplicates.

        Raises:
            InputError: missing or malformed annotation, unknown class, or no labels at all.
        """
        if self.annotation_dir is not None and image_id not in self._tokens:
            raw = self._xml_names(image_id)
        else:
            raw = self._tokens.get(image_id, [])
        labels: list[int] = []
        for token in raw:
            index = self._class_index(token)
            if index not in labels:
                labels.append(index)
        if not labels:
            raise InputError("image has no labels")
        return tuple(labels)

    def _class_index(self, token: str) -> int:
        if token.lstrip("-").isdigit() and self.name != "custom":
            index = int(token)
            if 0 <= index < len(self.classes.names):
                return index
            raise InputError(f"class index {index} out of range 0..{len(self.classes.names) - 1}")
        by_name = self.classes.index(token)
        if by_name is None:
            raise InputError(f"unknown class name {token!r} (not in the class list)")
        return by_name

    def _xml_names(self, image_id: str) -> list[str]:
        path = self.annotation_dir / f"{image_id}.xml"
        if not path.is_file():
            raise InputError(f"annotation not found: {path}")
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise InputError(f"cannot parse annotation {path}: {exc}") from None
        return [(obj.findtext("name") or "").strip() for obj in root.iter("object")]


def find_image(image_dir: Path, image_id: str) -> Path:
    """The file ``<image_dir>/<image_id>.<ext>`` for the first known extension that exists.

    Raises:
        InputError: no image file with a known extension.
    """
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(image_dir) / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    raise InputError(f"image not found: {Path(image_dir) / image_id}.jpg")


def image_folder(name: str, data_root: Path, images_dir: str | None = None) -> Path:
    """The existing image folder of a dataset: ``DATA_ROOT/<images_dir>`` (default ``JPEGImages``
    for voc12, DATA_ROOT itself otherwise).

    Raises:
        UserError: DATA_ROOT or the image folder is missing (naming a subfolder of DATA_ROOT that
            has it, such as ``VOCdevkit/VOC2012`` for ``JPEGImages``).
    """
    root = _existing_dir(Path(data_root).expanduser(), "DATA_ROOT")
    default_images = "JPEGImages" if name == "voc12" else ""
    folder = root / (images_dir if images_dir is not None else default_images)
    if not folder.is_dir():
        relative = folder.relative_to(root)
        holder = next((sub for sub in _subfolders(root) if (sub / relative).is_dir()), None)
        hint = f"; {holder} has {relative}/: give DATA_ROOT={holder}" if holder is not None else ""
        raise UserError(f"image folder not found: {folder}{hint}")
    return folder


PROBE_IMAGES = 8  # how many of a split's first ids must all be missing before a run stops


def check_images_present(image_dir: Path, ids: list[str], probe: int = PROBE_IMAGES) -> None:
    """Stop at once when none of the first ``probe`` ids has an image in ``image_dir``.

    A wrong folder would otherwise give one failure line per image of the whole split. A few
    missing images among present ones stay per-image failures.

    Raises:
        UserError: naming the folder looked in and, when one exists, the subfolder (up to two
            levels down, e.g. ``JPEGImages/``, ``train2014/``, ``images/``) that holds the images.
    """
    first = [image_id for image_id in ids[:probe] if image_id]
    if not first or any(_has_image(Path(image_dir), image_id) for image_id in first):
        return
    holder = next((sub for sub in _subfolders(Path(image_dir)) if all(_has_image(sub, i) for i in first[:2])), None)
    hint = f"; they are in {holder}: point DATA_ROOT (or --images-dir) there" if holder is not None else ""
    example = ", ".join(first[:2]) + (", ..." if len(first) > 2 else "")
    raise UserError(f"none of the first {len(first)} images of the split ({example}) is in {image_dir}{hint}")


def _has_image(folder: Path, image_id: str) -> bool:
    try:
        find_image(folder, image_id)
        return True
    except InputError:
        return False


def _subfolders(folder: Path, depth: int = 2, limit: int = 200) -> list[Path]:
    """Folders below ``folder``, breadth first, at most ``depth`` levels and ``limit`` folders."""
    found, level = [], [folder]
    for _ in range(depth):
        below = []
        for parent in level:
            try:
                below += sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        found += below
        level = below
        if len(found) >= limit:
            break
    return found[:limit]


GROUND_TRUTH_FOLDERS = ("SegmentationClassAug", "SegmentationClass")


def ground_truth_dir(data_root: Path | None, dataset: str | None = None) -> Path | None:
    """The default ground-truth folder of a dataset, or None when there is none.

    ``DATA_ROOT/SegmentationClassAug``, else ``DATA_ROOT/SegmentationClass``; for coco14, whose
    DATA_ROOT is the image folder (``train2014/``), also ``SegmentationClass`` beside it, where
    ``clipes prepare-coco`` writes it by default.
    """
    if data_root is None:
        return None
    root = Path(data_root).expanduser()
    places = [root / name for name in GROUND_TRUTH_FOLDERS]
    if dataset == "coco14":
        places.append(root.parent / "SegmentationClass")
    return next((place for place in places if place.is_dir()), None)


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} not found: {path}")
    return path


def open_dataset(name: str, data_root: Path, split: Path, classes: ClassList,
                 labels_file: Path | None = None, images_dir: str | None = None) -> Dataset:
    """Open a dataset split, checking DATA_ROOT and SPLIT up front.

    Args:
        name: one of :data:`DATASETS`.
        data_root: DATA_ROOT.
        split: split file.
        classes: class list (built-in or the user's).
        labels_file: voc12 only: labels from this plain file instead of the XML annotations.
        images_dir: image folder relative to DATA_ROOT (default: ``JPEGImages`` for voc12,
            DATA_ROOT itself otherwise).

    Raises:
        UserError: unknown dataset, missing folders, unreadable split, or none of the split's
            first images in the image folder.
    """
    if name not in DATASETS:
        raise UserError(f"unknown DATASET={name}; expected one of {', '.join(DATASETS)}")
    root = _existing_dir(Path(data_root).expanduser(), "DATA_ROOT")
    rows = read_split(Path(split).expanduser())
    image_dir = image_folder(name, root, images_dir)
    check_images_present(image_dir, [r[0] for r in rows])
    tokens = {image_id: rest for image_id, rest in rows}
    annotation_dir = None
    if name == "voc12":
        if labels_file is not None:
            tokens = {image_id: rest for image_id, rest in read_split(Path(labels_file).expanduser())}
        else:
            annotation_dir = _existing_dir(root / "Annotations", "VOC annotation folder")
            tokens = {}
    return Dataset(name=name, root=root, classes=classes, ids=[r[0] for r in rows], image_dir=image_dir,
                   annotation_dir=annotation_dir, _tokens=tokens)
