"""Panels, the HTML report (links, order, headless Chromium) and ``clipes show`` on a hand-made work folder."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from clipes import viz
from clipes.store import camstore, maskstore

from helpers import clipes

H, W = 80, 100  # panels scale the width to viz.TILE = 200: exactly 2x, so NEAREST tiles are exact
CLASSES = ["cat", "dog", "cow"]


def _manifest(folder, stage, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "classes": CLASSES, **extra}))


def make_work(root, stages=("cams", "refined", "masks", "confidence", "labels", "predictions")):
    """Two images with known masks: 'good' (masks = truth) and 'bad' (masks mostly wrong, with 255)."""
    data, work = root / "data", root / "work"
    (data / "JPEGImages").mkdir(parents=True)
    (data / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    truth = np.zeros((H, W), np.uint8)
    truth[10:40, 20:60] = 1  # cat
    truth[50:75, 60:95] = 3  # cow
    masks = {"good": truth.copy(), "bad": np.where(truth > 0, 2, 0).astype(np.uint8)}
    masks["good"][0:4, :] = 255  # an ignore band
    masks["bad"][30:45, 10:90] = 255
    for image_id, mask in masks.items():
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(data / "JPEGImages" / f"{image_id}.jpg")
        maskstore.write_mask(maskstore.png_path(data / "SegmentationClass", image_id), truth)
        cam = np.zeros((2, 5, 7), np.float32)
        cam[0, 1:3, 2:5], cam[1, 3:5, 4:7] = 1.0, 0.8
        refined = np.stack([(truth == 1), (truth == 3)]).astype(np.float32)
        writers = {
            "cams": lambda f: camstore.write_cam_file(camstore.cam_path(f, image_id), [0, 2], cam, (H, W)),
            "refined": lambda f: camstore.write_cam_file(camstore.cam_path(f, image_id), [0, 2], refined, (H, W),
                                                         np.float16),
            "masks": lambda f: maskstore.write_mask(maskstore.png_path(f, image_id), mask),
            "confidence": lambda f: maskstore.write_confidence(maskstore.png_path(f, image_id),
                                                               np.full((H, W), 0.5)),
            "labels": lambda f: maskstore.write_mask(maskstore.png_path(f, image_id), np.where(mask == 255, 0, mask)),
            "predictions": lambda f: maskstore.write_mask(maskstore.png_path(f, image_id), truth),
        }
        for stage in stages:
            writers[stage](work / stage)
    for stage in stages:
        extra = {"dataset": {"name": "voc12", "data_root": str(data)}} if stage == "cams" else {
            "input": {"dataset": "voc12", "data_root": str(data), "images": str(data / "JPEGImages")}}
        _manifest(work / stage, stage, **extra)
    return data, work, masks, truth


def _tiles(panel):
    """Tile bodies of a panel as arrays, in drawing order (rows of viz.COLUMNS, caption bands skipped)."""
    array = np.asarray(panel)
    body = H * viz.TILE // W
    out = []
    for row in range(3):
        top = row * (body + viz.CAPTION) + viz.CAPTION
        for col in range(viz.COLUMNS):
            out.append(array[top:top + body, col * viz.TILE:(col + 1) * viz.TILE])
    return out


def test_panel_tiles_show_every_stage_with_exact_mask_colours(tmp_path):
    data, work, masks, truth = make_work(tmp_path)
    out = viz.show(work, "good", tmp_path / "good.png")
    panel = Image.open(out)
    assert panel.width == viz.TILE * viz.COLUMNS
    tiles = _tiles(panel)
    assert tiles  # image, CAM x2, refined x2, mask, mask over image, confidence, labels, prediction x2, truth
    expected_mask = np.kron(viz.palette_colours(masks["good"]), np.ones((2, 2, 1), np.uint8))
    assert np.array_equal(tiles[5], expected_mask)  # the pseudo mask tile, hatched ignore band included
    assert {tuple(c) for c in tiles[5][:8].reshape(-1, 3)} == {(255, 255, 255), (0, 0, 0)}  # hatch
    assert tuple(tiles[5][40, 60]) == tuple(maskstore.voc_palette()[3:6])  # cat = value 1
    image = np.asarray(Image.open(data / "JPEGImages" / "good.jpg").convert("RGB"))
    assert np.array_equal(tiles[0], np.kron(image, np.ones((2, 2, 1), np.uint8)))
    over = tiles[6].astype(int)
    blended = np.kron(viz.blend(image, viz.palette_colours(masks["good"])), np.ones((2, 2, 1), np.uint8))
    assert np.array_equal(over, blended)
    # the CAM of the cat is hottest (red) inside the cat's patches and cold (blue) elsewhere
    cam_tile = tiles[1].astype(int)
    assert cam_tile[40, 70, 0] > cam_tile[40, 70, 2] and cam_tile[150, 10, 2] > cam_tile[150, 10, 0]
    truth_tile = tiles[11]
    assert np.array_equal(truth_tile, np.kron(viz.palette_colours(truth), np.ones((2, 2, 1), np.uint8)))


def test_missing_stages_are_stated_not_errors(tmp_path):
    _, work, _, _ = make_work(tmp_path, stages=("cams", "masks"))
    lines = []
    report = viz.run_viz(work, echo=lines.append, progress=False)
    assert report.is_file()
    assert any("not in" in line and "refined/" in line and "predictions/" in line for line in lines)
    panel = Image.open(work / "viz" / "panels" / "good.png")
    grey = _tiles(panel)[3]  # image, CAM x2, then the 'no refined/ in WORK' tile
    assert (grey[:60] == 70).mean() > 0.8


def test_report_links_resolve_and_worst_comes_first(tmp_path):
    _, work, _, _ = make_work(tmp_path)
    report = viz.run_viz(work, progress=False, echo=lambda _: None)
    text = report.read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', text)
    assert len(links) == 4  # a panel link and a thumbnail per image
    assert all((report.parent / link).is_file() for link in links)
    assert text.index('id">bad<') < text.index('id">good<')  # worst first
    record = json.loads((report.parent / "manifest.json").read_text())
    assert [e["id"] for e in record["images"]] == ["bad", "good"]
    assert record["images"][1]["mask_miou"] < 1.0  # the ignore band counts as a miss
    assert record["images"][1]["segmenter_miou"] == pytest.approx(1.0)
    assert record["images"][0]["classes"] == ["cat", "dog", "cow"]
    limited = viz.run_viz(work, limit=1, progress=False, echo=lambda _: None)
    assert len(re.findall(r'class="card"', limited.read_text())) == 1


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and not os.environ.get("CLIPES_REQUIRE_CHROMIUM"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it and sets CLIPES_REQUIRE_CHROMIUM)")
    assert found, "CLIPES_REQUIRE_CHROMIUM is set but chromium is not on PATH"
    return found


def test_report_loads_in_headless_chromium(tmp_path):
    chromium = _chromium()
    _, work, _, _ = make_work(tmp_path)
    report = viz.run_viz(work, progress=False, echo=lambda _: None)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images="2"' in body and 'data-loaded="2"' in body and 'data-broken="0"' in body
    assert "2 shown" in dom
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=900,600", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (600, 900, 3) and pixels.std() > 10  # thumbnails drawn, not a blank page


def test_show_command_and_bad_id(tmp_path):
    _, work, _, _ = make_work(tmp_path)
    result = clipes("show", "good", "--work", work)
    assert result.returncode == 0, result.stderr
    assert (work / "viz" / "panels" / "good.png").is_file()
    bad = clipes("show", "nope", "--work", work)
    assert bad.returncode == 2 and bad.stderr.startswith("error: nothing to show for 'nope'")
    empty = clipes("viz", "--work", tmp_path / "missing")
    assert empty.returncode == 2 and "work folder not found" in empty.stderr
