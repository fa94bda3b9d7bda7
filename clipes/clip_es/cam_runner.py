"""Stage 1 as a library call: softmax-GradCAM for every image of a split, into ``<WORK>/cams``.

:class:`CamOptions` holds every option with its default (the single source of truth; the CLI
forwards only what the user set). :func:`run_cams` is resumable (finished files are skipped),
shardable (``shard=(i, n)`` or torchrun's RANK/WORLD_SIZE), writes files atomically, and records
bad inputs in the manifest while the rest of the split goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.text import encode_prompts
from clipes.backbones.vit import DenseViT
from clipes.data.datasets import DATASETS, Dataset, open_dataset
from clipes.data.images import check_size, load_image, to_clip_tensor
from clipes.data.prompts import DEFAULT_TEMPLATE, check_template, class_and_background_lists
from clipes.errors import InputError, UserError
from clipes.maps.gradcam import GRAD_METHODS, softmax_gradcam
from clipes.runs import RunSummary, progress_bar, resolve_device
from clipes.store import attncache, camstore, manifest
from clipes.store.fsutil import BackgroundWriter, remove_stale_temporaries

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class CamOptions:
    """Options of the cams stage. Paths may be str or Path.

    Attributes:
        dataset: ``voc12``, ``coco14`` or ``custom``.
        data_root: dataset folder.
        split: split file.
        clip: OpenAI model name or checkpoint path.
        work: work folder; outputs go to ``<work>/cams``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward (same-size images only); None: 1 on CPU, 8 on GPU.
        jobs: DataLoader decoding workers; None: 1 on CPU, min(8, cores) on GPU.
        shard: ``(i, n)``: process every n-th image starting at i; None: from torchrun's
            environment, else the whole split.
        template: prompt template.
        class_file / background_file: override the built-in lists.
        labels_file: voc12 only, labels from a plain file instead of XML.
        images_dir: image folder relative to data_root.
        synonyms: ``joined`` (reference) or ``split`` (average of per-synonym embeddings).
        grad_method: ``analytic`` (fast, default) or ``autograd`` (the reference's way).
        fp16_pos_embed: the reference's fp16 rounding of the interpolated positional table.
        quirk_77_tokens: the reference's all-blocks path for images of exactly 76 patches.
        precision: ``fp32``; ``fp16``/``bf16`` autocast the frozen blocks (GPU only).
        save_affinity: also cache each image's mean attention in ``<work>/attention`` for the
            refine stage (about 2 * N**2 bytes per image, N patches).
        affinity_layers: final blocks averaged into that cache (refine's default: 8).
        force: recompute everything, even in a folder made with other settings.
        progress: show a progress bar.
    """

    dataset: str
    data_root: Path
    split: Path
    clip: str
    work: Path
    device: str = "cpu"
    batch_size: int | None = None
    jobs: int | None = None
    shard: tuple[int, int] | None = None
    template: str = DEFAULT_TEMPLATE
    class_file: Path | None = None
    background_file: Path | None = None
    labels_file: Path | None = None
    images_dir: str | None = None
    synonyms: str = "joined"
    grad_method: str = "analytic"
    fp16_pos_embed: bool = True
    quirk_77_tokens: bool = True
    precision: str = "fp32"
    save_affinity: bool = False
    affinity_layers: int = 8
    force: bool = False
    progress: bool = True


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_from_env(env=os.environ) -> tuple[int, int] | None:
    """The shard torchrun assigns (RANK / WORLD_SIZE), or None outside torchrun."""
    if "WORLD_SIZE" in env and "RANK" in env:
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    return None


@dataclass
class _Item:
    image_id: str
    tensor: torch.Tensor | None = None
    labels: tuple = ()
    size: tuple = ()
    note: str | None = None
    error: str | None = None


class _Items(TorchDataset):
    """Decoding and preprocessing, run in DataLoader workers."""

    def __init__(self, dataset: Dataset, ids: list[str], patch: int):
        self.dataset, self.ids, self.patch = dataset, ids, patch

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index: int) -> _Item:
        image_id = self.ids[index]
        try:
            labels = self.dataset.labels(image_id)
            path = self.dataset.image_path(image_id)
            image, note = load_image(path)
            check_size(image, self.patch, path)
            tensor = to_clip_tensor(image, self.patch)
            return _Item(image_id, tensor, labels, (image.size[1], image.size[0]), note)
        except InputError as exc:
            return _Item(image_id, error=str(exc))


def _header_size(dataset: Dataset, image_id: str):
    from PIL import Image

    try:
        with Image.open(dataset.image_path(image_id)) as image:
            return image.size
    except Exception:
        return None


def make_batches(dataset: Dataset, ids: list[str], patch: int, batch_size: int) -> list[list[int]]:
    """Indices into ``ids`` grouped into batches of same-grid images, in a deterministic order.

    Images whose header cannot be read form batches of one (their error is reported later).
    """
    if batch_size <= 1:
        return [[i] for i in range(len(ids))]
    groups: dict = defaultdict(list)
    singles = []
    for index, image_id in enumerate(ids):
        size = _header_size(dataset, image_id)
        if size is None:
            singles.append([index])
        else:
            groups[(-(-size[1] // patch), -(-size[0] // patch))].append(index)
    batches = [members[i:i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]
    return sorted(batches + singles, key=lambda b: b[0])


def _identity_fields(opts: CamOptions, classes, fg_prompts, bg_prompts, sha256: str) -> dict:
    return {
        "stage": camstore.STAGE, "dataset": opts.dataset, "classes": list(classes.names),
        "foreground_prompts": fg_prompts, "background_prompts": bg_prompts, "synonyms": opts.synonyms,
        "clip_sha256": sha256, "fp16_pos_embed": opts.fp16_pos_embed, "quirk_77_tokens": opts.quirk_77_tokens,
        "precision": opts.precision,
    }


def _write_outputs(folder: Path, attention_folder: Path, image_id: str, labels: tuple, size: tuple,
                   cams: np.ndarray, attention: np.ndarray | None, succeeded: set) -> None:
    """One image's files (run by the background writer); the image counts once they exist."""
    if attention is not None:
        attncache.write_attention(attncache.attention_path(attention_folder, image_id), attention,
                                  tuple(cams.shape[1:]))
    camstore.write_cam_file(camstore.cam_path(folder, image_id), labels, cams, size)
    succeeded.add(image_id)


def run_cams(opts: CamOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Compute and save softmax-GradCAMs for a split (see module docstring).

    Args:
        opts: options.
        echo: where one-line messages go (failures, notes, the final line).

    Returns:
        A :class:`RunSummary`.

    Raises:
        UserError: a wrong dataset, split, checkpoint or option; nothing is computed then.
    """
    start = time.time()
    if opts.dataset not in DATASETS:
        raise UserError(f"unknown DATASET={opts.dataset}; expected one of {', '.join(DATASETS)}")
    if opts.grad_method not in GRAD_METHODS:
        raise UserError(f"grad method must be one of {', '.join(GRAD_METHODS)}")
    if opts.synonyms not in ("joined", "split"):
        raise UserError("synonyms must be 'joined' or 'split'")
    if opts.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}")
    device = resolve_device(opts.device)
    if opts.precision != "fp32" and device.type != "cuda":
        raise UserError(f"precision {opts.precision} is only offered on GPU; use fp32 on CPU")
    on_gpu = device.type == "cuda"
    batch_size = opts.batch_size or (8 if on_gpu else 1)
    jobs = opts.jobs if opts.jobs is not None else (min(8, os.cpu_count() or 1) if on_gpu else 1)
    if batch_size < 1 or jobs < 0:
        raise UserError("BATCH must be >= 1 and JOBS >= 0")
    shard = opts.shard or shard_from_env() or (0, 1)
    template = check_template(opts.template)
    classes, background = class_and_background_lists(opts.dataset, opts.class_file, opts.background_file)
    dataset = open_dataset(opts.dataset, Path(opts.data_root), Path(opts.split), classes,
                           labels_file=opts.labels_file, images_dir=opts.images_dir)
    loaded = load_clip(opts.clip, device)
    model = loaded.model
    vit = DenseViT(model.visual, fp16_pos_embed=opts.fp16_pos_embed)
    patch = vit.patch_size

    fg_prompts = [template.format(p) for p in classes.prompts]
    bg_prompts = [template.format(p) for p in background]
    folder = Path(opts.work).expanduser() / camstore.STAGE
    header = {
        "command": manifest.command_line(),
        "dataset": {"name": opts.dataset, "data_root": str(Path(opts.data_root).resolve()),
                    "split": str(Path(opts.split).resolve()), "images": len(dataset.ids)},
        "classes": list(classes.names),
        "prompts": {"template": template, "synonyms": opts.synonyms, "foreground": fg_prompts,
                    "background": bg_prompts},
        "clip": {"source": str(opts.clip), "path": str(loaded.path), "sha256": loaded.sha256, **loaded.config},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "format": camstore.FORMAT,
    }
    identity = manifest.identity_of(_identity_fields(opts, classes, fg_prompts, bg_prompts, loaded.sha256))
    attention_folder = Path(opts.work).expanduser() / attncache.STAGE
    if opts.save_affinity and not 1 <= opts.affinity_layers <= vit.num_layers:
        raise UserError(f"affinity layers must be in 1..{vit.num_layers}")
    shared = shard[1] > 1  # shards of one run write the folder together
    manifest.begin_run(folder, camstore.STAGE, header, identity, force=opts.force, shared=shared, echo=echo)
    begun = [folder]
    summary = RunSummary(folder=folder)
    succeeded: set[str] = set()
    bar = None
    try:
        remove_stale_temporaries(folder, older_than_s=0)
        if opts.save_affinity:
            manifest.begin_run(attention_folder, attncache.STAGE,
                               {"command": header["command"], "cams_identity": identity,
                                "layers": opts.affinity_layers, "format": attncache.FORMAT},
                               manifest.identity_of({"cams": identity, "layers": opts.affinity_layers}),
                               force=opts.force, shared=shared, echo=echo)
            begun.append(attention_folder)
            remove_stale_temporaries(attention_folder, older_than_s=0)

        fg_features = encode_prompts(model, list(classes.prompts), [template], opts.synonyms)  # [C, D]
        bg_features = encode_prompts(model, background, [template], opts.synonyms)  # [Bg, D]

        ids = dataset.ids[shard[0]::shard[1]]
        already = set() if opts.force else camstore.done_ids(folder) & set(ids)
        if opts.save_affinity:
            already &= attncache.done_ids(attention_folder)
        batches = [b for b in make_batches(dataset, ids, patch, batch_size)
                   if not all(ids[i] in already for i in b)]
        summary.already_done = len(already)
        autocast = None
        if opts.precision != "fp32":
            dtype = torch.float16 if opts.precision == "fp16" else torch.bfloat16
            autocast = lambda: torch.autocast("cuda", dtype=dtype)  # noqa: E731
        loader = DataLoader(_Items(dataset, ids, patch), batch_sampler=batches, num_workers=jobs,
                            collate_fn=list, pin_memory=on_gpu)
        todo = sum(len(b) for b in batches) - sum(1 for b in batches for i in b if ids[i] in already)
        bar = progress_bar(todo, opts.progress and todo > 0, camstore.STAGE)
        succeeded.update(already)
        with BackgroundWriter() as writer:  # the npz writes overlap the next forward
            for batch in loader:
                for item in batch:
                    if item.error is not None:
                        summary.failures[item.image_id] = item.error
                        bar.write(f"failed {item.image_id}: {item.error}")
                    elif item.note is not None and item.image_id not in already:
                        summary.notes[item.image_id] = item.note
                        bar.write(f"note {item.image_id}: {item.note}")
                good = [item for item in batch if item.error is None]
                if good:
                    images = torch.stack([item.tensor for item in good]).to(device, non_blocking=True)
                    results = softmax_gradcam(
                        vit, images, [fg_features[list(item.labels)] for item in good], bg_features,
                        model.logit_scale, method=opts.grad_method, quirk_77_tokens=opts.quirk_77_tokens,
                        autocast=autocast, attention_layers=opts.affinity_layers if opts.save_affinity else 0)
                    for item, result in zip(good, results):
                        if item.image_id in already:
                            succeeded.add(item.image_id)
                            continue
                        attention = None if result.attention is None else result.attention.half().cpu().numpy()
                        writer.submit(_write_outputs, folder, attention_folder, item.image_id, item.labels, item.size,
                                      result.cams.float().cpu().numpy(), attention, succeeded)
                        summary.done += 1
                bar.update(sum(1 for item in batch if item.image_id not in already))
                bar.set_postfix(failed=len(summary.failures), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        summary.failed = len(summary.failures)
        summary.seconds = time.time() - start
        run = {"finished": manifest.now(), "shard": f"{shard[0]}/{shard[1]}", "device": str(device),
               "batch_size": batch_size, "jobs": jobs, "done": summary.done,
               "already_done": summary.already_done, "failed": summary.failed,
               "seconds": round(summary.seconds, 2)}
        counts = {folder: camstore.done_ids, attention_folder: attncache.done_ids}
        for begun_folder in begun:  # each releases its folder, also when the other's update fails
            with contextlib.suppress(Exception):
                manifest.end_run(begun_folder, run, succeeded, summary.failures,
                                 summary.notes if begun_folder == folder else {},
                                 len(counts[begun_folder](begun_folder)))
    echo(summary.line())
    return summary

