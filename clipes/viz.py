"""Inspecting a work folder: one PNG panel per image and a static HTML report (``clipes viz`` / ``show``).

A panel shows, for one image, every stage the work folder holds: the image; each class's raw CAM
and refined map as heat overlays; the pseudo mask (VOC palette, ignore pixels hatched black on
white) alone and over the image; the confidence map; the CRF labels; the segmenter's prediction and
the ground truth when present; and a legend naming the classes. A stage that is missing is stated
in its tile, never an error.

The report (``<WORK>/viz/index.html``) needs no server or network: thumbnails sorted worst first by
the per-image mIoU of the pseudo masks (or of the segmenter when there are no masks), a class
filter, and a link to each panel. Layout::

    <WORK>/viz/index.html, manifest.json, panels/<id>.png, thumbs/<id>.jpg
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipes.data.datasets import find_image, ground_truth_dir, image_folder
from clipes.data.evaluation import Confusion
from clipes.data.images import load_image
from clipes.errors import InputError, UserError
from clipes.maps.caa import upsample_maps
from clipes.store import camstore, manifest, maskstore
from clipes.store.fsutil import atomic_open, item_path, write_json

STAGE = "viz"
DRAWN_STAGES = (camstore.STAGE, camstore.REFINED_STAGE, maskstore.MASKS_STAGE, maskstore.CONFIDENCE_STAGE,
                maskstore.LABELS_STAGE, maskstore.PREDICTIONS_STAGE)  # the stage folders a panel reads
TILE = 200  # tile width in pixels
CAPTION = 18  # caption band height
COLUMNS = 4
IGNORE_COLOUR = (255, 255, 255)
_PALETTE = np.array(maskstore.voc_palette(), dtype=np.uint8).reshape(256, 3)


def palette_colours(label: np.ndarray) -> np.ndarray:
    """``[H, W]`` label values -> ``[H, W, 3]`` VOC colours, 255 (ignore) white with black hatching."""
    label = np.asarray(label, dtype=np.uint8)
    rgb = _PALETTE[label].copy()
    ignore = label == maskstore.IGNORE
    if ignore.any():
        yy, xx = np.mgrid[0:label.shape[0], 0:label.shape[1]]
        hatch = ((yy + xx) % 6) < 2
        rgb[ignore] = IGNORE_COLOUR
        rgb[ignore & hatch] = 0
    return rgb


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8, a jet-like map (blue low, red high)."""
    x = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``alpha`` of ``colours`` over ``image`` (both ``[H, W, 3]`` uint8)."""
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


@dataclass
class WorkFolder:
    """What a work folder holds, read once from its manifests.

    Attributes:
        work: the folder.
        classes: class names, background first.
        image_dir: where the images are (None: not found).
        gt_dir: ground-truth PNGs (None: none).
        stages: stage folders present (``cams``, ``refined``, ``masks``, ``confidence``, ``labels``,
            ``predictions``).
        methods: ``{tile title: label folder}`` of other methods' outputs in ``WORK/methods/<name>/``
            (``predictions/`` or ``masks/`` with a manifest), each drawn in a tile of its own.
        made_by: ``{stage: method}`` for stage folders another method wrote (their manifest's ``method``).
    """

    work: Path
    classes: list[str]
    image_dir: Path | None
    gt_dir: Path | None
    stages: list[str] = field(default_factory=list)
    methods: dict = field(default_factory=dict)
    made_by: dict = field(default_factory=dict)

    def title(self, stage: str, default: str) -> str:
        """A tile's caption: named after the method that made the stage folder (e.g. WeCLIP), if not CLIP-ES."""
        method = self.made_by.get(stage)
        return f"{maskstore.METHOD_TITLES.get(method, method)} {default}" if method else default

    def ids(self) -> list[str]:
        """Every image id with a file in any stage folder, sorted."""
        found: set[str] = set()
        for stage in self.stages:
            found |= (camstore.done_ids if stage in (camstore.STAGE, camstore.REFINED_STAGE)
                      else maskstore.done_ids)(self.work / stage)
        return sorted(found)


def open_work(work: Path, data_root: Path | None = None, gt_dir: Path | None = None) -> WorkFolder:
    """Read a work folder's manifests.

    Raises:
        UserError: no such folder, or no stage folder in it.
    """
    work = Path(work).expanduser()
    if not work.is_dir():
        raise UserError(f"work folder not found: {work}")
    stages, manifests = [], {}
    for stage in DRAWN_STAGES:
        data = manifest.read_manifest(work / stage) if (work / stage).is_dir() else None
        if data is not None:
            stages.append(stage)
            manifests[stage] = data
    if not stages:
        raise UserError(f"nothing to show in {work}: no stage folder with a manifest")
    classes = next((m["classes"] for m in manifests.values() if m.get("classes")), [])
    cams = manifests.get(camstore.STAGE, {})
    recorded = next((m.get("input", {}) for m in manifests.values() if m.get("input", {}).get("data_root")), {})
    dataset = cams.get("dataset", {}).get("name") or recorded.get("dataset") or "voc12"
    root = data_root or cams.get("dataset", {}).get("data_root") or recorded.get("data_root")
    image_dir = None
    if root is not None:
        try:
            image_dir = image_folder(dataset, Path(root), cams.get("options", {}).get("images_dir"))
        except UserError:
            image_dir = Path(recorded["images"]) if recorded.get("images") else None
    if gt_dir is not None and not Path(gt_dir).is_dir():
        raise UserError(f"ground-truth folder not found: {gt_dir}")
    return WorkFolder(work=work, classes=["background"] + list(classes), image_dir=image_dir,
                      gt_dir=Path(gt_dir) if gt_dir else ground_truth_dir(root, dataset),
                      stages=stages, methods=method_folders(work),
                      made_by={s: m["method"] for s, m in manifests.items() if m.get("method")})


def method_folders(work: Path) -> dict[str, Path]:
    """``{"<method> <stage>": folder}`` for every ``WORK/methods/<method>/{predictions,masks}`` with a manifest."""
    found = {}
    root = Path(work) / maskstore.METHODS_DIR
    for method in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for stage, title in ((maskstore.PREDICTIONS_STAGE, "predictions"), (maskstore.MASKS_STAGE, "pseudo masks")):
            if manifest.read_manifest(method / stage) is not None:
                found[f"{maskstore.METHOD_TITLES.get(method.name, method.name)} {title}"] = method / stage
    return found


def method_backbones(methods: dict[str, Path]) -> dict[str, dict]:
    """``{tile title: {"clip": ..., "dino": ...}}``: the backbones each method folder's manifest names."""
    out = {}
    for title, folder in methods.items():
        used = (manifest.read_manifest(folder) or {}).get("backbones")
        if used:
            out[title] = dict(used)
    return out


def _font():
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _tile(array: np.ndarray | None, caption: str, note: str = "") -> Image.Image:
    """One captioned tile: the array resized to the tile width, or a grey box saying ``note``."""
    if array is None:
        body = Image.new("RGB", (TILE, TILE * 3 // 4), (70, 70, 70))
        ImageDraw.Draw(body).multiline_text((8, 8), note, fill=(230, 230, 230), font=_font())
    else:
        body = Image.fromarray(array)
        height = max(1, round(body.height * TILE / body.width))
        body = body.resize((TILE, height), Image.NEAREST)
    tile = Image.new("RGB", (TILE, body.height + CAPTION), (255, 255, 255))
    tile.paste(body, (0, CAPTION))
    ImageDraw.Draw(tile).text((3, 2), caption[:34], fill=(0, 0, 0), font=_font())
    return tile


def _read_png(folder: Path, image_id: str) -> np.ndarray | None:
    path = maskstore.png_path(folder, image_id)
    return maskstore.read_png(path) if path.is_file() else None


@dataclass
class ImageView:
    """Everything drawn for one image; arrays are None where a stage has no file."""

    image_id: str
    image: np.ndarray | None
    cams: camstore.CamFile | None
    refined: camstore.CamFile | None
    masks: np.ndarray | None
    confidence: np.ndarray | None
    labels: np.ndarray | None
    prediction: np.ndarray | None
    truth: np.ndarray | None
    problems: list[str]
    methods: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the image (or of any full-size stage when the image is missing)."""
        for array in (self.image, self.masks, self.labels, self.prediction, self.truth):
            if array is not None:
                return array.shape[:2]
        if self.refined is not None:
            return self.refined.image_size
        return self.cams.image_size if self.cams is not None else None

    def classes_present(self) -> list[int]:
        """0-based class indices named by any stage of this image."""
        found: set[int] = set()
        for stored in (self.cams, self.refined):
            if stored is not None:
                found |= {int(k) for k in stored.keys}
        for label in (self.masks, self.labels, self.prediction, self.truth, *self.methods.values()):
            if label is not None:
                found |= {int(v) - 1 for v in np.unique(label) if 0 < v < 255}
        return sorted(found)


def load_view(folder: WorkFolder, image_id: str) -> ImageView:
    """Read every stage file of one image; unreadable files become problems, not errors."""
    problems: list[str] = []

    def attempt(read):
        try:
            return read()
        except InputError as exc:
            problems.append(str(exc))
            return None

    image = None
    if folder.image_dir is not None:
        image = attempt(lambda: np.asarray(load_image(find_image(folder.image_dir, image_id))[0].convert("RGB")))
    else:
        problems.append("image folder unknown (give DATA_ROOT)")
    stage = {s: (folder.work / s) if s in folder.stages else None for s in DRAWN_STAGES}

    def cam(name):
        path = camstore.cam_path(stage[name], image_id) if stage[name] else None
        return attempt(lambda: camstore.read_cam_file(path)) if path is not None and path.is_file() else None

    def png(name, where=None):
        where = where or stage.get(name)
        return attempt(lambda: _read_png(where, image_id)) if where is not None else None

    return ImageView(image_id=image_id, image=image, cams=cam(camstore.STAGE), refined=cam(camstore.REFINED_STAGE),
                     masks=png(maskstore.MASKS_STAGE), confidence=png(maskstore.CONFIDENCE_STAGE),
                     labels=png(maskstore.LABELS_STAGE), prediction=png(maskstore.PREDICTIONS_STAGE),
                     truth=png("truth", folder.gt_dir) if folder.gt_dir is not None else None, problems=problems,
                     methods={title: png(title, where) for title, where in folder.methods.items()})


def image_miou(truth: np.ndarray | None, label: np.ndarray | None, classes: int) -> float | None:
    """mIoU of one label map against its ground truth (255 predictions count as misses)."""
    if truth is None or label is None or truth.shape != label.shape:
        return None
    confusion = Confusion(classes)
    confusion.add(truth, label)
    return confusion.scores()["miou"]


def draw_panel(folder: WorkFolder, view: ImageView) -> Image.Image:
    """The panel of one image (see module docstring)."""
    names = folder.classes
    size = view.size
    base = view.image if view.image is not None else (
        np.full((*size, 3), 128, np.uint8) if size is not None else None)
    tiles = [_tile(view.image, f"{view.image_id}", "image not found")]

    def label_tiles(label, title, stage):
        if stage not in folder.stages:
            return [_tile(None, title, f"no {stage}/ in WORK")]
        if label is None:
            return [_tile(None, title, "no file for this image")]
        out = [_tile(palette_colours(label), title)]
        if base is not None and base.shape[:2] == label.shape:
            out.append(_tile(blend(base, palette_colours(label)), f"{title} over image"))
        return out

    for stored, stage, title in ((view.cams, camstore.STAGE, "CAM"), (view.refined, camstore.REFINED_STAGE,
                                                                       "refined")):
        if stage not in folder.stages:
            tiles.append(_tile(None, title, f"no {stage}/ in WORK"))
            continue
        if stored is None:
            tiles.append(_tile(None, title, "no file for this image"))
            continue
        maps = upsample_maps(stored.cams, stored.image_size) if stage == camstore.STAGE else stored.cams
        for key, heat in zip(stored.keys, maps):
            name = names[int(key) + 1] if int(key) + 1 < len(names) else f"class {int(key)}"
            under = base if base is not None and base.shape[:2] == heat.shape else np.zeros((*heat.shape, 3), np.uint8)
            tiles.append(_tile(blend(under, heat_colours(heat), 0.55), f"{title}: {name}"))
    tiles += label_tiles(view.masks, folder.title(maskstore.MASKS_STAGE, "pseudo mask"), maskstore.MASKS_STAGE)
    if maskstore.CONFIDENCE_STAGE in folder.stages:
        tiles.append(_tile(np.repeat(view.confidence[..., None], 3, axis=2), "confidence")
                     if view.confidence is not None else _tile(None, "confidence", "no file for this image"))
    if maskstore.LABELS_STAGE in folder.stages:
        tiles.append(_tile(palette_colours(view.labels), "CRF labels") if view.labels is not None
                     else _tile(None, "CRF labels", "no file for this image"))
    if maskstore.PREDICTIONS_STAGE in folder.stages:
        tiles += label_tiles(view.prediction, folder.title(maskstore.PREDICTIONS_STAGE, "segmenter"),
                             maskstore.PREDICTIONS_STAGE)
    for title, label in view.methods.items():
        tiles += [_tile(palette_colours(label), title)] if label is not None else [
            _tile(None, title, "no file for this image")]
    if folder.gt_dir is not None:
        tiles.append(_tile(palette_colours(view.truth), "ground truth") if view.truth is not None
                     else _tile(None, "ground truth", "no file for this image"))
    legend = _legend([0] + [c + 1 for c in view.classes_present()], names,
                     hatch=view.masks is not None and bool((view.masks == maskstore.IGNORE).any()),
                     problems=view.problems)
    return _grid(tiles, legend)


def _legend(values: list[int], names: list[str], hatch: bool, problems: list[str]) -> Image.Image:
    entries = [(tuple(int(c) for c in _PALETTE[v]), names[v] if v < len(names) else str(v)) for v in values]
    if hatch:
        entries.append((None, "ignore (255)"))
    rows = (len(entries) + COLUMNS - 1) // COLUMNS + len(problems)
    legend = Image.new("RGB", (TILE * COLUMNS, 20 * rows + 6), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, (colour, name) in enumerate(entries):
        x, y = (i % COLUMNS) * TILE + 4, (i // COLUMNS) * 20 + 4
        if colour is None:
            swatch = Image.fromarray(palette_colours(np.full((14, 14), maskstore.IGNORE, np.uint8)))
            legend.paste(swatch, (x, y))
        else:
            draw.rectangle([x, y, x + 13, y + 13], fill=colour, outline=(0, 0, 0))
        draw.text((x + 20, y + 1), name, fill=(0, 0, 0), font=_font())
    for j, problem in enumerate(problems):
        y = ((len(entries) + COLUMNS - 1) // COLUMNS + j) * 20 + 4
        draw.text((4, y), f"! {problem}"[:120], fill=(180, 0, 0), font=_font())
    return legend


def _grid(tiles: list[Image.Image], legend: Image.Image) -> Image.Image:
    rows = [tiles[i:i + COLUMNS] for i in range(0, len(tiles), COLUMNS)]
    heights = [max(t.height for t in row) for row in rows]
    panel = Image.new("RGB", (TILE * COLUMNS, sum(heights) + legend.height), (255, 255, 255))
    y = 0
    for row, height in zip(rows, heights):
        for i, tile in enumerate(row):
            panel.paste(tile, (i * TILE, y))
        y += height
    panel.paste(legend, (0, y))
    return panel


def _save_image(image: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        image.save(handle, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))


def show(work: Path, image_id: str, out: Path | None = None, data_root: Path | None = None,
         gt_dir: Path | None = None) -> Path:
    """Write the panel of one image (default ``<WORK>/viz/panels/<id>.png``) and return its path."""
    folder = open_work(work, data_root, gt_dir)
    view = load_view(folder, image_id)
    if view.size is None:
        raise UserError(f"nothing to show for {image_id!r} in {folder.work}: no stage has a file for it")
    out = Path(out).expanduser() if out else item_path(folder.work / STAGE / "panels", image_id, ".png")
    _save_image(draw_panel(folder, view), out, "PNG")
    return out


def run_viz(work: Path, data_root: Path | None = None, gt_dir: Path | None = None, limit: int | None = None,
            echo: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Write panels, thumbnails and ``index.html`` for a work folder; returns the report's path.

    Args:
        work: work folder.
        data_root: dataset folder (default: the one the manifests name).
        gt_dir: ground-truth PNGs (default: ``DATA_ROOT/SegmentationClass(Aug)`` when present).
        limit: draw only this many images, the worst first (all when None).
        echo: where messages go.
        progress: progress bar.
    """
    from clipes.runs import progress_bar

    folder = open_work(work, data_root, gt_dir)
    ids = folder.ids()
    out = folder.work / STAGE
    missing = [s for s in (camstore.STAGE, camstore.REFINED_STAGE, maskstore.MASKS_STAGE, maskstore.PREDICTIONS_STAGE)
               if s not in folder.stages]
    if missing:
        echo(f"viz: not in {folder.work}: {', '.join(s + '/' for s in missing)} (drawn as 'missing')")
    if folder.gt_dir is None:
        echo("viz: no ground truth found (give DATA_ROOT or GT_DIR for per-image mIoU)")
    entries = []
    n = len(folder.classes)
    with progress_bar(len(ids), progress, "scores") as bar:
        for image_id in ids:
            truth = _safe(lambda: _read_png(folder.gt_dir, image_id)) if folder.gt_dir else None
            masks = _safe(lambda: _read_png(folder.work / maskstore.MASKS_STAGE, image_id)) \
                if maskstore.MASKS_STAGE in folder.stages else None
            prediction = _safe(lambda: _read_png(folder.work / maskstore.PREDICTIONS_STAGE, image_id)) \
                if maskstore.PREDICTIONS_STAGE in folder.stages else None
            entries.append({"id": image_id, "mask_miou": image_miou(truth, masks, n),
                            "segmenter_miou": image_miou(truth, prediction, n)})
            bar.update(1)
    key = "mask_miou" if any(e["mask_miou"] is not None for e in entries) else "segmenter_miou"
    entries.sort(key=lambda e: (e[key] is None, e[key] if e[key] is not None else 0.0, e["id"]))
    if limit is not None:
        entries = entries[:limit]
    drawn = []
    with progress_bar(len(entries), progress, "panels") as bar:
        for entry in entries:
            view = load_view(folder, entry["id"])
            entry["classes"] = [folder.classes[c + 1] for c in view.classes_present() if c + 1 < n]
            entry["problems"] = view.problems
            if view.size is not None:
                panel = draw_panel(folder, view)
                _save_image(panel, item_path(out / "panels", entry["id"], ".png"), "PNG")
                thumb = Image.fromarray(view.image) if view.image is not None else panel
                thumb.thumbnail((160, 160))
                _save_image(thumb.convert("RGB"), item_path(out / "thumbs", entry["id"], ".jpg"), "JPEG")
                drawn.append(entry)
            bar.update(1)
    report = out / "index.html"
    with atomic_open(report, "w") as handle:
        handle.write(report_html(drawn, folder, key))
    write_json(out / manifest.MANIFEST_NAME, {
        "stage": STAGE, "created": manifest.now(), "work": str(folder.work), "stages": folder.stages,
        "ground_truth": str(folder.gt_dir) if folder.gt_dir else None, "sorted_by": key,
        "images": [{k: e[k] for k in ("id", "mask_miou", "segmenter_miou", "classes")} for e in drawn],
        "format": {"panels/<id>.png": "panel PNG", "thumbs/<id>.jpg": "thumbnail", "index.html": "report"}})
    echo(f"viz: {len(drawn)} panels, report {report}")
    return report


def _safe(read):
    try:
        return read()
    except InputError:
        return None


def report_html(entries: list[dict], folder: WorkFolder, key: str) -> str:
    """The static report: cards in the given order, a class filter, links to the panels."""
    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}"

    cards = []
    for e in entries:
        quoted = html.escape(e["id"])
        cards.append(
            f'<a class="card" href="panels/{quoted}.png" data-classes="{html.escape(" ".join(e["classes"]))}">'
            f'<img src="thumbs/{quoted}.jpg" alt="{quoted}"><div class="id">{quoted}</div>'
            f'<div class="meta">masks mIoU {pct(e["mask_miou"])} · segmenter {pct(e["segmenter_miou"])}</div>'
            f'<div class="meta">{html.escape(", ".join(e["classes"]))}</div></a>')
    options = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in folder.classes[1:])
    order = {"mask_miou": "pseudo-mask mIoU", "segmenter_miou": "segmenter mIoU"}[key]
    scored = any(e[key] is not None for e in entries)
    sorting = f"worst first by {order}" if scored else "in id order (no ground truth to score against)"
    stages = ", ".join(folder.stages)
    backbones = "".join(
        f"<li>{html.escape(title)}: " + html.escape("; ".join(f"{k.upper() if k == 'clip' else 'DINOv2' if k == 'dino' else k} "
                                                             f"{v}" for k, v in used.items())) + "</li>"
        for title, used in method_backbones(folder.methods).items())
    backbones = f"<p>Models used by the other methods:</p><ul>{backbones}</ul>" if backbones else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clipes: {html.escape(str(folder.work))}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; background: #f4f4f4; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: 170px; background: #fff; padding: 5px; text-decoration: none; color: #222; border: 1px solid #ccc; }}
.card img {{ width: 160px; display: block; }}
.id {{ font-weight: bold; font-size: 12px; margin-top: 3px; }}
.meta {{ font-size: 11px; color: #555; }}
.hidden {{ display: none; }}
</style></head>
<body data-images="{len(entries)}">
<h1>clipes report</h1>
<p>Work folder <code>{html.escape(str(folder.work))}</code>; stages: {html.escape(stages)}.
{len(entries)} images, {sorting}. Click a card for its panel.</p>
{backbones}
<label>class <select id="filter"><option value="">all</option>{options}</select></label>
<span id="shown"></span>
<div class="grid" id="grid">
{chr(10).join(cards)}
</div>
<script>
const filter = document.getElementById('filter');
function apply() {{
  let shown = 0;
  for (const card of document.querySelectorAll('.card')) {{
    const keep = !filter.value || card.dataset.classes.split(' ').includes(filter.value);
    card.classList.toggle('hidden', !keep);
    shown += keep ? 1 : 0;
  }}
  document.getElementById('shown').textContent = shown + ' shown';
}}
filter.addEventListener('change', apply);
apply();
window.addEventListener('load', () => {{
  const images = [...document.images];
  document.body.dataset.loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
}});
</script>
</body></html>
"""
