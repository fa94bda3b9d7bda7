"""A reduced ``make demo``: every stage on a few demo scenes with the bundled demo CLIP."""

import json

import pytest

from clipes.demo import stage_miou
from test_cli_cams import clipes


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    result = clipes("demo", "--work", work, "--train", 32, "--val", 16, "--seg-iters", 60, "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result.stdout


def test_reduced_demo_orders_the_stages(demo_run):
    work, stdout = demo_run
    report = json.loads((work / "eval.json").read_text())
    assert report["images"] == 16 and not report["failures"]
    assert set(report["stages"]) == {"cams", "refined", "masks", "labels", "predictions"}
    refine_options = json.loads((work / "refined" / "manifest.json").read_text())["options"]
    assert refine_options["attention_layers"] == 1  # the demo's choice reaches the refine stage
    cams, refined, labels, masks = (stage_miou(report, s) for s in ("cams", "refined", "labels", "masks"))
    # Measured on these 16 images (CAA on the last block's attention, the demo's --layers 1): CAMs
    # 82.0, refined 73.3, CRF labels 81.7, masks 81.9, segmenter (60 iterations on 32 images, seeded)
    # 48.1, baseline 13.0. With the spec's 8 blocks the refined maps were 57.8 and the masks 72.6.
    # The demo CLIP's CAA does not beat its raw CAMs (demo/README.md), so the ordering asserted is the
    # one that holds: the CRF improves on the refined maps.
    assert cams >= 0.6
    assert refined >= 0.6
    assert labels > refined + 0.05
    assert masks >= 0.7
    assert stage_miou(report, "predictions") > report["baseline"]["miou"] + 0.1
    table = stdout[stdout.index("demo: mIoU (%) on 16 held-out val images"):]
    for title in ("raw CAMs", "refined maps (CAA)", "pseudo masks", "trained segmenter", "baseline: background",
                  "viz/index.html"):
        assert title in table


def test_demo_resumes_without_redoing_work(demo_run):
    work, _ = demo_run
    stamp = (work / "cams" / "demo_train_0000.npz").stat().st_mtime_ns
    result = clipes("demo", "--work", work, "--train", 32, "--val", 16, "--seg-iters", 60, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cams: 0 done, 48 already done, 0 failed" in result.stdout
    assert "predict: 0 done, 16 already done, 0 failed" in result.stdout
    assert (work / "cams" / "demo_train_0000.npz").stat().st_mtime_ns == stamp
