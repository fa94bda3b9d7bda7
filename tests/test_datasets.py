import pytest

from clipes.datasets import open_dataset, read_split
from clipes.errors import InputError, UserError
from clipes.prompts import builtin_path, load_class_file
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
    (tmp_path / "x.jpg").write_bytes(b"")
    split = tmp_path / "train.txt"
    split.write_text("COCO_1 0 45 0\nCOCO_2 80\nCOCO_3 dog\n")
    ds = open_dataset("coco14", tmp_path, split, COCO)
    assert ds.labels("COCO_1") == (0, 45)
    with pytest.raises(InputError, match="out of range 0..79"):
        ds.labels("COCO_2")
    assert ds.labels("COCO_3") == (16,)
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
