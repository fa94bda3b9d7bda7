"""WeakCLIP's text classes and label spaces (spec 4.1, 16).

The reference prompts raw class names with no template, ``background`` being an ordinary class.
VOC: mmseg's 21 names, which are also clipes' label values (0 background, c + 1 for class c).
COCO: the released model is 91-way in COCO-category-id space (``background`` + ids 1..90, the 10
ids COCO never uses included); clipes' own COCO masks are contiguous (0 background, 1..80), so
they are mapped to category ids for training (:func:`seed_lut`) and back for the output masks
(:func:`output_lut`). An 81-way label space (``coco81``) is the cleaner option beside it.
"""

from __future__ import annotations

import numpy as np

VOC = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

COCO91 = ("background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
          "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat",
          "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella",
          "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
          "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate",
          "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
          "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
          "mirror", "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
          "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
          "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")

#: COCO category ids that no annotation uses (kept in the 91-entry list, spec 4.1).
COCO_UNUSED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
#: ``COCO_IDS[k - 1]`` is the category id of clipes' contiguous COCO class k (1..80).
COCO_IDS = tuple(i for i in range(1, 91) if i not in COCO_UNUSED)
COCO81 = ("background", *(COCO91[i] for i in COCO_IDS))

#: label spaces: name -> (class names, whether clipes' contiguous labels map into category ids)
SPACES = {"voc": (VOC, False), "coco91": (COCO91, True), "coco81": (COCO81, False)}
IGNORE = 255


def class_names(space: str, custom: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The text classes of a label space (``custom``: background + the given names)."""
    if space == "custom":
        return ("background", *custom)
    return SPACES[space][0]


def seed_lut(space: str) -> np.ndarray | None:
    """``[256]`` uint8 map from clipes' mask values to the model's label values (None: identity).

    Only ``coco91`` needs one: contiguous k -> COCO category id; 0 and 255 stay.
    """
    if not SPACES.get(space, (None, False))[1]:
        return None
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[0] = 0
    for k, category in enumerate(COCO_IDS, start=1):
        lut[k] = category
    return lut


def output_lut(space: str, num_classes: int) -> np.ndarray | None:
    """``[num_classes]`` map from the model's labels to clipes' mask values (None: identity).

    ``coco91``: category id -> contiguous k; the 10 unused ids (a pixel the model gives one) -> 255.
    """
    if not SPACES.get(space, (None, False))[1]:
        return None
    lut = np.full(num_classes, IGNORE, dtype=np.uint8)
    lut[0] = 0
    for k, category in enumerate(COCO_IDS, start=1):
        lut[category] = k
    return lut
