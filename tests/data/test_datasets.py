import pytest

from clipes.data.datasets import open_dataset, read_split
from clipes.data.prompts import builtin_path, load_class_file
from clipes.errors import InputError, UserError

from conftest import GOLDEN
from helpers import make_voc, noise_image

VOC = load_class_file(builtin_path("voc12_classes.tsv"))
COCO = load_class_file(builtin_path("coco14_classes.tsv"))


def test_voc_labels_keep_first_appearance_and_drop_duplicates():
    ds = open_dataset("voc12", GOLDEN, GOLDEN / "split.txt", VOC)
    assert len(ds.ids) == 12
    assert ds.labels("2001_000001") == (4, 2)  # bottle, bottle, bird
    assert ds.labels("2001_000010") == (9, 18, 15)  # cow, cow, train, pottedplant
    assert ds.image_path("2001_000001").name == "2001_000001.jpg"


def test_voc_bad_annotations(tmp_path):
    img = noise_image(32, 32)
    split = make_voc(tmp_path, {"a": (img, []), "b": (img, ["unicorn"]), "c": (img, None)})
    (tmp_path / "Annotations" / "d.xml").write_text("<annotation><object>")
    ds = open_dataset("voc12", tmp_path, split, VOC)
    with pytest.raises(InputError, match="no labels"):
        ds.labels("a")
    with pytest.raises(InputError, match="unknown class name 'unicorn'"):
        ds.labels("b")
    with pytest.raises(InputError, match="annotation not found"):
        ds.labels("c")
    with pytest.raises(InputError, match="cannot parse annotation"):
        ds.labels("d")


def test_coco_indices_and_custom_names(tmp_path):
    (tmp_path / "COCO_1.jpg").write_bytes(b"")
    split = tmp_path / "train.txt"
    split.write_text("COCO_1 0 45 0\nCOCO_2 80\nCOCO_3 dog\n")
    ds = open_dataset("coco14", tmp_path, split, COCO)
    assert ds.labels("COCO_1") == (0, 45)
    with pytest.raises(InputError, match="out of range 0..79"):
        ds.labels("COCO_2")
    assert ds.labels("COCO_3") == (16,)
    (tmp_path / "img1.jpg").write_bytes(b"")
    custom = tmp_path / "custom.txt"
    custom.write_text("img1 gizmo widget\nimg2 7\n")
    classes = type(VOC)(("widget", "gizmo"), ("widget", "gizmo"))
    ds = open_dataset("custom", tmp_path, custom, classes)
    assert ds.labels("img1") == (1, 0)
    with pytest.raises(InputError, match="unknown class name '7'"):
        ds.labels("img2")


def test_voc_plain_label_file(tmp_path):
    split = make_voc(tmp_path, {"a": (noise_image(32, 32), None)})
    labels = tmp_path / "labels.txt"
    labels.write_text("a cat 14\n")
    ds = open_dataset("voc12", tmp_path, split, VOC, labels_file=labels)
    assert ds.labels("a") == (7, 14)


def test_wrong_root_or_split_stop_the_run(tmp_path):
    with pytest.raises(UserError, match="DATA_ROOT not found"):
        open_dataset("voc12", tmp_path / "nope", GOLDEN / "split.txt", VOC)
    with pytest.raises(UserError, match="split file not found"):
        open_dataset("voc12", GOLDEN, tmp_path / "nope.txt", VOC)
    with pytest.raises(UserError, match="image folder not found"):
        open_dataset("voc12", tmp_path, GOLDEN / "split.txt", VOC)
    (tmp_path / "s.txt").write_text("a\na\n")
    with pytest.raises(UserError, match="already listed"):
        read_split(tmp_path / "s.txt")


def test_split_tokens_with_paths_are_reduced_to_ids(tmp_path):
    (tmp_path / "s.txt").write_text("JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png\n")
    assert read_split(tmp_path / "s.txt") == [("2007_000032", ["SegmentationClassAug/2007_000032.png"])]


def _coco_tree(root, ids, sub="train2014"):
    (root / sub).mkdir(parents=True)
    for image_id in ids:
        noise_image(32, 32).save(root / sub / f"{image_id}.jpg")
    split = root / "train.txt"
    split.write_text("".join(f"{image_id} 0\n" for image_id in ids))
    return split


def test_a_wrong_image_folder_is_one_line_naming_the_subfolder_that_holds_the_images(tmp_path):
    ids = [f"COCO_train2014_{i:012d}" for i in range(12)]
    split = _coco_tree(tmp_path, ids)
    with pytest.raises(UserError) as info:
        open_dataset("coco14", tmp_path, split, COCO)
    message = str(info.value)
    assert "\n" not in message
    assert f"none of the first 8 images of the split ({ids[0]}, {ids[1]}, ...) is in {tmp_path};" in message
    assert f"they are in {tmp_path / 'train2014'}" in message
    assert len(open_dataset("coco14", tmp_path / "train2014", split, COCO).ids) == 12
    assert len(open_dataset("coco14", tmp_path, split, COCO, images_dir="train2014").ids) == 12


def test_a_wrong_folder_without_the_images_anywhere_names_only_the_folder(tmp_path):
    split = _coco_tree(tmp_path, ["a", "b"], sub="other")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"none of the first 2 images of the split \(a, b\) is in .*empty$"):
        open_dataset("coco14", tmp_path / "empty", split, COCO)


def test_a_few_missing_images_among_present_ones_stay_per_image_failures(tmp_path):
    ids = ["a", "b", "c"]
    split = _coco_tree(tmp_path, ids[1:])
    (tmp_path / "train.txt").write_text("a 0\nb 0\nc 0\n")
    ds = open_dataset("coco14", tmp_path / "train2014", split, COCO)
    with pytest.raises(InputError, match="image not found"):
        ds.image_path("a")
    assert ds.image_path("b").name == "b.jpg"


def test_voc_root_one_level_too_high_names_the_voc2012_folder(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"a": (noise_image(32, 32), ["cat"])})
    with pytest.raises(UserError, match=r"image folder not found: .*VOCdevkit/JPEGImages; .*VOCdevkit/VOC2012 has JPEGImages/: give DATA_ROOT="):
        open_dataset("voc12", tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012" / "split.txt", VOC)
