"""``clipes prepare-coco`` on a synthetic COCO instances file: the split file and ground-truth PNGs
against an independent computation, the overlap and crowd rules, refusals, resume, cams + eval."""

import json
import random

import numpy as np
from PIL import Image

from clipes.data.prompts import default_class_file, load_class_file
from clipes.store import maskstore

from helpers import CLIP, clipes, noise_image

NAMES = load_class_file(default_class_file("coco14")).names
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
            *range(84, 91)]
H, W = 30, 40


def rle(mask):
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def box(y0, y1, x0, x1):
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def build(root):
    """Images in root/train2014, annotations in root/annotations; returns expected {id: (labels, mask)}."""
    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    categories = [{"id": cid, "name": name.replace("_", " "), "supercategory": "x"} for cid, name in zip(COCO_IDS, NAMES)]
    random.Random(0).shuffle(categories)  # the file's order must not matter, only the ids
    big, small, crowd = box(2, 28, 2, 38), box(10, 20, 10, 20), box(0, 30, 30, 40)
    images, annotations, expected = [], [], {}

    def image(number, present=True):
        name = f"COCO_train2014_{number:012d}"
        images.append({"id": number, "file_name": f"{name}.jpg", "height": H, "width": W})
        if present:
            noise_image(W, H, seed=number).save(root / "train2014" / f"{name}.jpg")
        return name

    def annotate(number, category, mask, iscrowd=0, polygon=None):
        annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": category,
                            "iscrowd": iscrowd, "area": float(mask.sum()), "bbox": [0, 0, 1, 1],
                            "segmentation": polygon if polygon is not None else rle(mask)})

    one = image(1)  # a chair (id 62) on a person (id 1), and a crowd of people at the right edge
    annotate(1, 62, small)
    annotate(1, 1, big)
    annotate(1, 1, crowd, iscrowd=1)
    label = np.zeros((H, W), np.uint8)
    label[big] = NAMES.index("person") + 1
    label[small] = NAMES.index("chair") + 1
    label[crowd & ~big] = 255
    expected[one] = ([NAMES.index("person"), NAMES.index("chair")], label)
    two = image(2)  # the last category, as a polygon
    annotate(2, 90, box(5, 25, 5, 25), polygon=[[5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]])
    expected[two] = ([79], None)
    image(3)  # no annotation: left out
    image(4, present=False)  # annotated but missing from the folder
    annotate(4, 18, small)
    five = image(5)
    annotate(5, 18, small)
    label = np.zeros((H, W), np.uint8)
    label[small] = NAMES.index("dog") + 1
    expected[five] = ([NAMES.index("dog")], label)
    path = root / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, expected


def test_split_and_ground_truth_equal_an_independent_computation_then_cams_and_eval_run(tmp_path):
    annotations, expected = build(tmp_path)
    result = clipes("prepare-coco", "--annotations", annotations, "--images", tmp_path / "train2014", "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr  # one image missing
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed ")]
    assert failed == [f"failed COCO_train2014_000000000004: image not found: {tmp_path / 'train2014'}/"
                      "COCO_train2014_000000000004.jpg"]
    assert "3 images; 1 without any annotation left out, 1 missing from" in result.stdout
    assert "person 1, bicycle 0" in result.stdout and "dog 1" in result.stdout and "toothbrush 1" in result.stdout
    split = tmp_path / "train2014.txt"  # beside the image folder by default
    rows = [line.split() for line in split.read_text().splitlines()]
    assert rows
    assert {row[0]: [int(x) for x in row[1:]] for row in rows} == {k: sorted(v[0]) for k, v in expected.items()}
    gt = tmp_path / "SegmentationClass"
    assert maskstore.done_ids(gt) == set(expected)
    for image_id, (_, label) in expected.items():
        written = maskstore.read_png(gt / f"{image_id}.png")
        if label is not None:
            assert np.array_equal(written, label), image_id
    polygon = maskstore.read_png(gt / "COCO_train2014_000000000002.png")
    assert set(np.unique(polygon)) == {0, 80}
    drawn = polygon == 80
    iou = (drawn & box(5, 25, 5, 25)).sum() / (drawn | box(5, 25, 5, 25)).sum()
    assert iou > 0.8
    counts = json.loads((tmp_path / "train2014.json").read_text())
    assert counts["images"] == 3 and counts["unannotated_left_out"] == 1
    assert counts["images_per_class"]["person"] == 1 and counts["images_per_class"]["car"] == 0

    again = clipes("prepare-coco", "--annotations", annotations, "--images", tmp_path / "train2014", "--no-progress")
    assert "0 written, 3 already there" in again.stdout

    work = tmp_path / "work"
    cams = clipes("cams", "--dataset", "coco14", "--data-root", tmp_path / "train2014", "--split", split, "--clip", CLIP,
                  "--work", work, "--no-progress")
    assert cams.returncode == 0 and "3 done" in cams.stdout, cams.stdout + cams.stderr
    scored = clipes("eval", "--work", work, "--split", split)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert json.loads((work / "eval.json").read_text())["ground_truth"] == str(gt.resolve())


def test_wrong_folder_and_wrong_files_are_one_line(tmp_path):
    annotations, _ = build(tmp_path)
    wrong = clipes("prepare-coco", "--annotations", annotations, "--images", tmp_path, "--no-progress")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert f"is in {tmp_path}; they are in {tmp_path / 'train2014'}" in wrong.stderr
    captions = tmp_path / "captions_train2014.json"
    captions.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "caption": "a cat"}]}))
    result = clipes("prepare-coco", "--annotations", captions, "--images", tmp_path / "train2014")
    assert result.returncode == 2 and "is not a COCO instances file" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    data = json.loads(annotations.read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] != 90]
    fewer = tmp_path / "instances_fewer.json"
    fewer.write_text(json.dumps(data))
    result = clipes("prepare-coco", "--annotations", fewer, "--images", tmp_path / "train2014")
    assert result.returncode == 2 and "79 categories, not COCO's 80" in result.stderr
    assert not (tmp_path / "fewer.txt").exists()
    with Image.open(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg") as image:
        assert image.size == (W, H)
