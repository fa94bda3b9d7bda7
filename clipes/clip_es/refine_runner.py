"""Stage 2 as a library call: CAA-refined maps, CRF pseudo masks and confidence maps.

Reads ``<WORK>/cams`` (and its manifest, for the dataset, CLIP and quirks that made it) and writes
``<OUT>/refined``, ``<OUT>/masks`` and ``<OUT>/confidence`` (OUT defaults to WORK; another OUT lets
users try other CAA / CRF / confidence options beside the first result without recomputing
GradCAM). The CLIP attention CAA needs comes from ``<WORK>/attention`` when ``clipes cams
--save-affinity`` cached it, else from a gradient-free forward pass, batched on ``device``.

Resumable: an image is done when its mask and confidence files exist; a refined file left by a
killed run is reused rather than recomputed. Bad inputs are reported per image and skipped.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clipes.data.datasets import DATASETS, check_images_present, find_image, image_folder, read_split
from clipes.errors import InputError, UserError
from clipes.maps.caa import DEFAULT_BOX_THRESHOLD, affinity_from_attention, refine_cams
from clipes.maps.crf import CRF_COLORS, CrfParams, crf_labels, pseudo_mask
from clipes.runs import RunSummary, progress_bar, resolve_device
from clipes.store import attncache, camstore, manifest, maskstore
from clipes.store.fsutil import BackgroundWriter, remove_stale_temporaries
from clipes.store.halfcast import to_float16

ATTENTION_SOURCES = ("auto", "recompute", "cache")


@dataclass
class RefineOptions:
    """Options of the refine stage (defaults are the reference's).

    Attributes:
        work: work folder holding ``cams/`` (and maybe ``attention/``).
        out: where ``refined/``, ``masks/``, ``confidence/`` go (default: ``work``).
        dataset: expected dataset (checked against the cams manifest; default: the manifest's).
        data_root / images_dir: where the images are (default: the cams manifest's).
        split: ids to refine (default: every image with a cams file).
        clip: checkpoint for recomputing attention (default: the one that made the cams; another
            one is refused unless ``force``).
        device: ``cpu``, ``cuda`` or ``cuda:N`` for attention and CAA.
        batch_size: images per attention forward (same grid only); None: 1 on CPU, 8 on GPU.
        jobs: parallel CRF workers (joblib processes).
        attention_layers: how many final blocks' attention is averaged.
        sinkhorn_rounds / affinity_power: CAA normalisation rounds and matrix power.
        box_threshold: fraction of the CAM maximum for class boxes (default by dataset: VOC
            0.4, COCO 0.7, custom 0.4).
        attention: ``auto`` (cache when present, else recompute), ``recompute`` or ``cache``.
        crf: run the dense CRF (False: argmax of the probability stack).
        crf_params: CRF settings and quirks.
        confidence: pixels whose confidence is below this become 255 in the masks (0: none).
        force: recompute everything, even over files made another way.
        progress: show a progress bar.
    """

    work: Path
    out: Path | None = None
    dataset: str | None = None
    data_root: Path | None = None
    images_dir: str | None = None
    split: Path | None = None
    clip: str | None = None
    device: str = "cpu"
    batch_size: int | None = None
    jobs: int = 1
    attention_layers: int = 8
    sinkhorn_rounds: int = 3
    affinity_power: int = 2
    box_threshold: float | None = None
    attention: str = "auto"
    crf: bool = True
    crf_params: CrfParams = field(default_factory=CrfParams)
    confidence: float = 0.95
    force: bool = False
    progress: bool = True


@dataclass
class _Ready:
    """An image whose refined maps are known, waiting for the CRF."""

    image_id: str
    keys: np.ndarray
    maps: np.ndarray  # [K, H, W] float16, the values the refined file holds
    image_path: Path


def _cams_manifest(work: Path) -> tuple[Path, dict]:
    folder = Path(work).expanduser() / camstore.STAGE
    if not folder.is_dir():
        raise UserError(f"no cams folder in {work}: run `make cams` (clipes cams) first")
    data = manifest.read_manifest(folder)
    if data is None or data.get("stage") != camstore.STAGE:
        raise UserError(f"{folder} has no cams manifest; it was not written by clipes cams")
    return folder, data


def _check_inputs(opts: RefineOptions, cams_manifest: dict) -> tuple[str, Path, str | None]:
    """Dataset name, data root and image folder, checked against the cams manifest."""
    made = cams_manifest.get("dataset", {})
    dataset = opts.dataset or made.get("name")
    if dataset not in DATASETS:
        raise UserError(f"unknown DATASET={dataset}; expected one of {', '.join(DATASETS)}")
    if made.get("name") and dataset != made.get("name") and not opts.force:
        raise UserError(f"the cams were made for DATASET={made.get('name')}, not {dataset} (use --force to go on)")
    data_root = opts.data_root or made.get("data_root")
    if data_root is None:
        raise UserError("DATA_ROOT is needed: the cams manifest does not say where the images are")
    images_dir = opts.images_dir if opts.images_dir is not None else cams_manifest.get("options", {}).get("images_dir")
    return dataset, Path(data_root), images_dir


def _options_record(opts: RefineOptions) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


def run_refine(opts: RefineOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Refine the CAMs of a work folder into maps, pseudo masks and confidence maps.

    Raises:
        UserError: missing cams, a mismatched dataset or CLIP, wrong options; nothing is written.
    """
    start = time.time()
    if opts.attention not in ATTENTION_SOURCES:
        raise UserError(f"attention source must be one of {', '.join(ATTENTION_SOURCES)}")
    if opts.crf_params.color not in CRF_COLORS:
        raise UserError(f"CRF colour mode must be one of {', '.join(CRF_COLORS)}")
    if opts.jobs < 1 or (opts.batch_size is not None and opts.batch_size < 1):
        raise UserError("JOBS and BATCH must be >= 1")
    if opts.attention_layers < 1 or opts.sinkhorn_rounds < 0 or opts.affinity_power < 1:
        raise UserError("need attention layers >= 1, Sinkhorn rounds >= 0 and affinity power >= 1")
    if not 0.0 <= opts.confidence <= 1.0:
        raise UserError(f"confidence threshold must be in [0, 1], not {opts.confidence}")
    cams_folder, cams_manifest = _cams_manifest(opts.work)
    dataset, data_root, images_dir = _check_inputs(opts, cams_manifest)
    image_dir = image_folder(dataset, data_root, images_dir)
    threshold = opts.box_threshold if opts.box_threshold is not None else DEFAULT_BOX_THRESHOLD[dataset]
    if not 0.0 <= threshold < 1.0:
        raise UserError(f"box threshold must be in [0, 1), not {threshold}")
    device = resolve_device(opts.device)
    batch_size = opts.batch_size or (8 if device.type == "cuda" else 1)
    if opts.split is not None:
        ids = [image_id for image_id, _ in read_split(Path(opts.split).expanduser())]
    else:
        ids = sorted(camstore.done_ids(cams_folder))
        if not ids:
            raise UserError(f"{cams_folder} holds no cams files")
    check_images_present(image_dir, ids)

    cams_options = cams_manifest.get("options", {})
    caa_fields = {"attention_layers": opts.attention_layers, "sinkhorn_rounds": opts.sinkhorn_rounds,
                  "affinity_power": opts.affinity_power, "box_threshold": threshold}
    refined_identity = manifest.identity_of({"cams": cams_manifest.get("identity"), **caa_fields})
    mask_fields = {"crf": opts.crf, "crf_params": opts.crf_params.as_dict(), "confidence": opts.confidence}
    masks_identity = manifest.identity_of({"refined": refined_identity, **mask_fields})
    out = Path(opts.out or opts.work).expanduser()
    folders = {name: out / name for name in (camstore.REFINED_STAGE, maskstore.MASKS_STAGE,
                                             maskstore.CONFIDENCE_STAGE, maskstore.LABELS_STAGE)}
    common = {
        "command": manifest.command_line(),
        "input": {"cams": str(cams_folder.resolve()), "cams_identity": cams_manifest.get("identity"),
                  "dataset": dataset, "data_root": str(data_root.resolve()), "images": str(image_dir.resolve())},
        "classes": cams_manifest.get("classes", []),
        "clip": cams_manifest.get("clip", {}),
        "options": _options_record(replace(opts, box_threshold=threshold)),
    }
    formats = {camstore.REFINED_STAGE: camstore.REFINED_FORMAT, maskstore.MASKS_STAGE: maskstore.MASKS_FORMAT,
               maskstore.CONFIDENCE_STAGE: maskstore.CONFIDENCE_FORMAT, maskstore.LABELS_STAGE: maskstore.LABELS_FORMAT}
    attention = _AttentionSource(opts, cams_manifest, cams_options, Path(opts.work).expanduser(), device, batch_size)
    begun = []
    summary = RunSummary(folder=out, stage="refine")
    succeeded: set[str] = set()
    bar = None
    try:
        for name, folder in folders.items():
            identity = refined_identity if name == camstore.REFINED_STAGE else masks_identity
            header = {**common, "format": formats[name]}
            if name != camstore.REFINED_STAGE:
                header["input"] = {**header["input"], "refined_identity": refined_identity}
            manifest.begin_run(folder, name, header, identity, force=opts.force, echo=echo)
            begun.append(name)
            remove_stale_temporaries(folder, older_than_s=0)

        done = set() if opts.force else set.intersection(
            *(maskstore.done_ids(folders[name]) for name in maskstore.PNG_STAGES))
        have_refined = set() if opts.force else camstore.done_ids(folders[camstore.REFINED_STAGE])
        todo = [image_id for image_id in ids if image_id not in done]
        summary.already_done = len(ids) - len(todo)
        bar = progress_bar(len(todo), opts.progress and bool(todo), "refine")
        succeeded.update(set(ids) - set(todo))
        chunk = max(4 * opts.jobs, batch_size)

        def fail(image_id: str, reason: str) -> None:
            summary.failures[image_id] = reason
            bar.write(f"failed {image_id}: {reason}")

        # the background writer's PNG and npz encoding overlap the next image's CAA
        with _crf_pool(opts.jobs, opts.crf_params, opts.crf) as pool, BackgroundWriter() as writer:
            for begin in range(0, len(todo), chunk):
                ready = _refine_chunk(todo[begin:begin + chunk], cams_folder, image_dir, folders[camstore.REFINED_STAGE],
                                      have_refined, attention, threshold, opts, device, fail, writer)
                for item, result in zip(ready, pool(ready)):
                    if isinstance(result, str):
                        fail(item.image_id, result)
                        continue
                    writer.submit(_write_masks, folders, item.image_id, *result, opts.confidence, succeeded)
                    summary.done += 1
                bar.update(min(chunk, len(todo) - begin))
                bar.set_postfix(failed=len(summary.failures), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        summary.failed = len(summary.failures)
        summary.seconds = time.time() - start
        run = {"finished": manifest.now(), "device": str(device), "jobs": opts.jobs, "batch_size": batch_size,
               "attention": attention.counts, "done": summary.done, "already_done": summary.already_done,
               "failed": summary.failed, "seconds": round(summary.seconds, 2)}
        for name in begun:  # each releases its folder, also when another's update fails
            folder = folders[name]
            count = (camstore.done_ids(folder) if name == camstore.REFINED_STAGE else maskstore.done_ids(folder))
            with contextlib.suppress(Exception):
                manifest.end_run(folder, run, succeeded, summary.failures, {}, len(count))
    echo(summary.line())
    return summary


def _write_masks(folders: dict, image_id: str, label: np.ndarray, confidence: np.ndarray, threshold: float,
                 succeeded: set) -> None:
    """The three PNGs of one image (run by the background writer); the image counts once they exist."""
    maskstore.write_confidence(maskstore.png_path(folders[maskstore.CONFIDENCE_STAGE], image_id), confidence)
    maskstore.write_mask(maskstore.png_path(folders[maskstore.LABELS_STAGE], image_id), label)
    maskstore.write_mask(maskstore.png_path(folders[maskstore.MASKS_STAGE], image_id),
                         pseudo_mask(label, confidence, threshold))
    succeeded.add(image_id)


def _refine_chunk(ids, cams_folder, image_dir, refined_folder, have_refined, attention, threshold, opts, device,
                  fail, writer: BackgroundWriter) -> list[_Ready]:
    """Refined maps of a few images (reused from disk when present), written to ``refined/``."""
    ready, pending = [], []
    for image_id in ids:
        try:
            image_path = find_image(image_dir, image_id)
            if image_id in have_refined:
                stored = camstore.read_cam_file(camstore.cam_path(refined_folder, image_id))
                ready.append(_Ready(image_id, stored.keys, to_float16(stored.cams), image_path))
                continue
            cams = camstore.read_cam_file(camstore.cam_path(cams_folder, image_id))
            _check_image_size(image_path, cams.image_size)
            grid = tuple(cams.cams.shape[1:])
            if grid != tuple(-(-s // attention.patch) for s in cams.image_size):
                raise InputError(f"cams grid {grid} does not match the image size {cams.image_size}")
            pending.append((image_id, image_path, cams))
        except InputError as exc:
            fail(image_id, str(exc))
    maps = attention.for_images([(image_id, path, cams.cams.shape[1:]) for image_id, path, cams in pending], fail)
    for image_id, image_path, cams in pending:
        if image_id not in maps:
            continue
        # T itself; refine_cams applies T**power as repeated products with the CAMs (no N**3 product)
        affinity = affinity_from_attention(maps[image_id].to(device), opts.sinkhorn_rounds, power=1)
        refined = refine_cams(affinity, cams.cams, cams.image_size, threshold, power=opts.affinity_power)
        refined = to_float16(refined)  # as stored; the CRF reads exactly these values
        writer.submit(camstore.write_cam_file, camstore.cam_path(refined_folder, image_id), cams.keys, refined,
                      cams.image_size, np.float16)
        ready.append(_Ready(image_id, cams.keys, refined, image_path))
    order = {image_id: i for i, image_id in enumerate(ids)}
    return sorted(ready, key=lambda item: order[item.image_id])


def _check_image_size(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    if (height, width) != tuple(size):
        raise InputError(f"image {path} is {width}x{height} but its cams were made for {size[1]}x{size[0]}")


class _AttentionSource:
    """Mean attention per image: from the cache folder, or recomputed with the CLIP (loaded lazily)."""

    def __init__(self, opts: RefineOptions, cams_manifest: dict, cams_options: dict, work: Path,
                 device: torch.device, batch_size: int):
        self.opts, self.cams_manifest, self.cams_options = opts, cams_manifest, cams_options
        self.device, self.batch_size = device, batch_size
        self.cache_folder = work / attncache.STAGE
        self.cache_ids = self._usable_cache()
        if opts.attention == "cache" and not self.cache_ids:
            raise UserError(f"no usable attention cache in {self.cache_folder} (run cams with --save-affinity "
                            f"and the same layers, or use --attention auto)")
        self.patch = int(cams_manifest.get("clip", {}).get("vision_patch_size", 16) or 16)
        self.vit = None
        self.counts = {"cache": 0, "recomputed": 0}

    def _usable_cache(self) -> set[str]:
        if self.opts.attention == "recompute" or self.opts.force:
            return set()
        data = manifest.read_manifest(self.cache_folder) if self.cache_folder.is_dir() else None
        if not data or data.get("stage") != attncache.STAGE:
            return set()
        if data.get("cams_identity") != self.cams_manifest.get("identity"):
            return set()
        if data.get("layers") != self.opts.attention_layers:
            return set()
        return attncache.done_ids(self.cache_folder)

    def _load_model(self):
        from clipes.backbones.clip_loader import load_clip
        from clipes.backbones.vit import DenseViT

        made = self.cams_manifest.get("clip", {})
        source = self.opts.clip
        if source is None:
            path = made.get("path")
            source = path if path and Path(path).is_file() else made.get("source")
        if source is None:
            raise UserError("CLIP is needed to recompute attention and the cams manifest names none")
        loaded = load_clip(source, self.device)
        if made.get("sha256") and loaded.sha256 != made.get("sha256") and not self.opts.force:
            raise UserError(f"CLIP {source} is not the checkpoint that made the cams (sha256 {loaded.sha256[:12]} vs "
                            f"{made['sha256'][:12]}); use --force to go on")
        self.vit = DenseViT(loaded.model.visual, fp16_pos_embed=self.cams_options.get("fp16_pos_embed", True))
        self.patch = self.vit.patch_size

    def for_images(self, items, fail) -> dict[str, torch.Tensor]:
        """``{id: [N, N] float32}`` for ``(id, image_path, grid)`` items; failures reported."""
        out, compute = {}, []
        for image_id, path, grid in items:
            if image_id in self.cache_ids:
                try:
                    cached = attncache.read_attention(attncache.attention_path(self.cache_folder, image_id))
                    if cached.grid != tuple(grid):
                        raise InputError(f"cached attention grid {cached.grid} differs from the cams grid {tuple(grid)}")
                    out[image_id] = torch.from_numpy(cached.attention)
                    self.counts["cache"] += 1
                    continue
                except InputError as exc:
                    if self.opts.attention == "cache":
                        fail(image_id, str(exc))
                        continue
            elif self.opts.attention == "cache":
                fail(image_id, f"no cached attention in {self.cache_folder}")
                continue
            compute.append((image_id, path, tuple(grid)))
        if compute:
            out.update(self._recompute(compute, fail))
        return out

    def _recompute(self, items, fail) -> dict[str, torch.Tensor]:
        from clipes.data.images import check_size, load_image, to_clip_tensor

        if self.vit is None:
            self._load_model()
        groups: dict = defaultdict(list)
        for image_id, path, grid in items:
            try:
                image, _ = load_image(path)
                check_size(image, self.patch, path)
                groups[grid].append((image_id, to_clip_tensor(image, self.patch)))
            except InputError as exc:
                fail(image_id, str(exc))
        out = {}
        quirk = self.cams_options.get("quirk_77_tokens", True)
        for members in groups.values():
            for begin in range(0, len(members), self.batch_size):
                part = members[begin:begin + self.batch_size]
                images = torch.stack([tensor for _, tensor in part]).to(self.device)
                maps = self.vit.mean_attention(images, self.opts.attention_layers, quirk).float()
                for (image_id, _), attn in zip(part, maps):
                    out[image_id] = attn
                self.counts["recomputed"] += len(part)
        return out


def _crf_one(item: _Ready, params: CrfParams, crf: bool):
    """CRF of one image in a worker: ``(label, confidence)`` or the reason it failed."""
    try:
        return crf_labels(item.image_path, item.maps, item.keys, params, crf)
    except InputError as exc:
        return str(exc)


@contextlib.contextmanager
def _crf_pool(jobs: int, params: CrfParams, crf: bool):
    """A callable mapping ready items to CRF results in order, run by ``jobs`` joblib processes."""
    if jobs == 1:
        yield lambda items: [_crf_one(item, params, crf) for item in items]
        return
    from joblib import Parallel, delayed

    with Parallel(n_jobs=jobs) as parallel:
        yield lambda items: parallel(delayed(_crf_one)(item, params, crf) for item in items)
