"""Metrics on hand-built label maps."""

import numpy as np
import pytest

from clipes.data.evaluation import Confusion, labels_from_maps


def test_iou_precision_recall_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]])
    confusion = Confusion(3)
    confusion.add(gt, pred)
    s = confusion.scores()
    # class 0: tp 2, gt 3, pred 3 -> IoU 2/4; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 1, gt 2, pred 1 -> 1/2
    assert s["iou"] == pytest.approx([0.5, 2 / 3, 0.5])
    assert s["precision"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert s["recall"] == pytest.approx([2 / 3, 1.0, 0.5])
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)  # the GT 255 pixel is left out


def test_ignored_predictions_count_as_misses_or_are_left_out():
    gt = np.array([[1, 1, 1, 0]])
    pred = np.array([[1, 255, 255, 0]])
    confusion = Confusion(2)
    confusion.add(gt, pred)
    with_ignored, without = confusion.scores(True), confusion.scores(False)
    assert with_ignored["iou"][1] == pytest.approx(1 / 3) and with_ignored["recall"][1] == pytest.approx(1 / 3)
    assert without["iou"][1] == pytest.approx(1.0) and without["miou"] == pytest.approx(1.0)
    assert with_ignored["coverage"] == pytest.approx(0.5)


def test_absent_classes_are_not_averaged():
    confusion = Confusion(4)
    confusion.add(np.array([[0, 0]]), np.array([[0, 3]]))
    s = confusion.scores()
    assert s["present"] == [True, False, False, False]
    assert s["miou"] == pytest.approx(0.5) and s["iou"][1] is None and s["iou"][3] == 0.0


def test_labels_from_maps_background_exponent():
    maps = np.array([[[0.6, 0.2]], [[0.1, 0.3]]], np.float32)
    keys = np.array([4, 7])
    # alpha 1: bg = [0.4, 0.7] -> [5, 0]; alpha 2: bg = [0.16, 0.49] -> [5, 0]; alpha 4: [0.0256, 0.24] -> [5, 8]
    assert labels_from_maps(maps, keys, 1).tolist() == [[5, 0]]
    assert labels_from_maps(maps, keys, 4).tolist() == [[5, 8]]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        Confusion(2).add(np.zeros((2, 2)), np.zeros((2, 3)))


def _png_stage(folder, stage, maps, classes):
    import json

    from clipes.store import maskstore

    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "classes": classes}))
    for image_id, label in maps.items():
        maskstore.write_mask(maskstore.png_path(folder, image_id), label)


def test_eval_scores_predictions_and_labels_next_to_the_majority_baseline(tmp_path):
    from clipes.eval_runner import EvalOptions, run_eval

    gt = {"a": np.array([[0, 0, 1, 1], [0, 0, 2, 255]]), "b": np.array([[0, 0, 0, 2]])}
    pred = {"a": np.array([[0, 1, 1, 1], [0, 0, 2, 2]]), "b": np.array([[0, 0, 2, 2]])}
    _png_stage(tmp_path / "gt", "gt", gt, [])
    (tmp_path / "gt" / "manifest.json").unlink()
    _png_stage(tmp_path / "work" / "predictions", "predictions", pred, ["x", "y"])
    _png_stage(tmp_path / "work" / "labels", "labels", gt, ["x", "y"])
    (tmp_path / "split.txt").write_text("a\nb\n")
    lines = []
    report = run_eval(EvalOptions(work=tmp_path / "work", split=tmp_path / "split.txt", gt_dir=tmp_path / "gt"),
                      echo=lines.append)
    assert set(report["stages"]) == {"predictions", "labels"}
    # GT 255 left out. class 0: gt 7, pred 5, tp 5 -> 5/7; class 1: gt 2, pred 3, tp 2 -> 2/3; class 2: gt 2, pred 3, tp 2
    assert report["stages"]["predictions"]["iou"] == pytest.approx([5 / 7, 2 / 3, 2 / 3])
    assert report["stages"]["labels"]["miou"] == pytest.approx(1.0)
    # background everywhere: IoU 7/11 for background, 0 for the two others
    assert report["baseline"]["class"] == "background"
    assert report["baseline"]["miou"] == pytest.approx(7 / 11 / 3)
    assert any(line.startswith("segmenter") for line in lines)
    assert any(line.startswith("baseline") and "'background' everywhere" in line for line in lines)
