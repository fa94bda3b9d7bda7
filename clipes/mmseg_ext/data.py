"""Training on pseudo masks: a dataset over a split file and stage folders, and the confidence transforms.

* ``PseudoMaskDataset``: images found the way the rest of clipes finds them (any usual
  extension, COCO's ``train2014/`` layout), label PNGs from one folder (``<WORK>/masks``,
  ``<WORK>/labels`` or ground truth) and, for the soft loss, confidence PNGs from another.
* ``LoadConfidence``: reads ``confidence_path`` into ``gt_confidence`` and registers it as a
  segmentation field, so mmseg's ``Resize``/``RandomResize``, ``RandomCrop`` and ``RandomFlip``
  transform it exactly like the label (nearest-neighbour, same crop box, same flip). Padding
  (mmcv's ``Pad`` and the data preprocessor touch the label only) is bottom/right, which the
  decode head reproduces on the confidence (zeros, where the label is 255 anyway).
* ``PackSegInputsWithConfidence``: mmseg's ``PackSegInputs`` plus ``data_sample.gt_confidence``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import PixelData
from mmseg.datasets import BaseSegDataset, PascalVOCDataset
from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import DATASETS, TRANSFORMS
from PIL import Image

from clipes.data.datasets import find_image, read_split
from clipes.errors import InputError, UserError


@DATASETS.register_module()
class PseudoMaskDataset(BaseSegDataset):
    """Images of a split with label maps (and optionally confidence maps) from stage folders.

    Args:
        split: split file (first token per line is the image id).
        image_dir: folder holding the images.
        seg_dir: folder of ``<id>.png`` label maps (values: class index or 255).
        confidence_dir: folder of ``<id>.png`` confidence maps (``round(255 * c)``), or None.
        **kwargs: ``BaseSegDataset`` arguments (``metainfo``, ``pipeline``, ``test_mode``, ...).
    """

    METAINFO = dict(classes=PascalVOCDataset.METAINFO["classes"], palette=PascalVOCDataset.METAINFO["palette"])

    def __init__(self, split: str, image_dir: str, seg_dir: str, confidence_dir: str | None = None, **kwargs):
        self.split, self.image_dir, self.seg_dir = Path(split), Path(image_dir), Path(seg_dir)
        self.confidence_dir = Path(confidence_dir) if confidence_dir else None
        kwargs.setdefault("seg_map_suffix", ".png")
        kwargs.setdefault("reduce_zero_label", False)
        super().__init__(**kwargs)

    @classmethod
    def get_label_map(cls, new_classes=None):
        """No remapping: label values already index the class list given in ``metainfo``."""
        return None

    def load_data_list(self) -> list[dict]:
        data_list = []
        for image_id, _ in read_split(self.split):
            try:
                image_path = find_image(self.image_dir, image_id)
            except InputError as exc:
                raise UserError(f"{self.split}: {exc}") from None
            info = dict(img_path=str(image_path), seg_map_path=str(self.seg_dir / f"{image_id}.png"),
                        label_map=self.label_map, reduce_zero_label=self.reduce_zero_label, seg_fields=[],
                        image_id=image_id)
            if self.confidence_dir is not None:
                info["confidence_path"] = str(self.confidence_dir / f"{image_id}.png")
            data_list.append(info)
        return data_list


@TRANSFORMS.register_module()
class LoadConfidence(BaseTransform):
    """Load ``results['confidence_path']`` (8-bit grayscale) as the segmentation field ``gt_confidence``.

    A sample without ``confidence_path`` passes unchanged, so the same pipeline serves hard mode.
    """

    def transform(self, results: dict) -> dict:
        path = results.get("confidence_path")
        if path is None:
            return results
        with Image.open(path) as image:
            confidence = np.asarray(image, dtype=np.uint8)  # [H, W]
        if confidence.ndim != 2:
            raise ValueError(f"{path}: a confidence map must be single-channel, not {confidence.shape}")
        results["gt_confidence"] = confidence
        results.setdefault("seg_fields", []).append("gt_confidence")
        return results


@TRANSFORMS.register_module()
class PackSegInputsWithConfidence(PackSegInputs):
    """mmseg's ``PackSegInputs`` that also packs ``gt_confidence`` as ``PixelData`` ``[1, H, W]`` uint8."""

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        if "gt_confidence" in results:
            confidence = np.ascontiguousarray(results["gt_confidence"])
            packed["data_samples"].gt_confidence = PixelData(data=torch.from_numpy(confidence)[None])
        return packed
