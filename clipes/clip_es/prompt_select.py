"""Sharpness-based template selection (spec section 7) with zero-shot multi-label mAP beside it.

For a template t, each labelled image i gets softmax scores over the dataset's classes (or the
classes plus the background prompts); ``s_i`` are the scores of its ground-truth classes and

* ``sum-of-ratios`` (default, the spec's formula): ``sharpness(t) = sum_i var(s_i) / mean(s_i)``
* ``ratio-of-sums``: ``sharpness(t) = sum_i var(s_i) / sum_i mean(s_i)``

with the population variance (``ddof=0``), so a one-label image adds 0. Lower is better: the
present classes share the score evenly. The images are encoded once and every template of the pool
is scored against the same features. The image feature is the one the CAM stage scores
(``patch-mean``: mean of the last block's patch tokens after ``ln_post``, projected, at the image's
own size) or clip's ``cls`` feature at the same size.

The mAP column ranks, per class, all images by the cosine similarity of the template's class prompt
(average precision over images that have / lack the class), averaged over classes present in at
least one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.text import encode_prompts
from clipes.backbones.vit import DenseViT
from clipes.data.datasets import open_dataset
from clipes.data.images import check_size, load_image, to_clip_tensor
from clipes.data.prompts import builtin_path, check_template, class_and_background_lists, load_template_file
from clipes.errors import InputError, UserError
from clipes.store.fsutil import atomic_open, write_json

SOFTMAX_OVER = ("classes", "classes+background")
AGGREGATES = ("sum-of-ratios", "ratio-of-sums")
FEATURES = ("patch-mean", "cls")


def sharpness(scores: list[np.ndarray], aggregate: str = "sum-of-ratios") -> float:
    """Sharpness of one template from each image's ground-truth-class scores.

    Args:
        scores: per image, the softmax scores ``[k_i]`` of its ``k_i >= 1`` ground-truth classes.
        aggregate: ``sum-of-ratios`` or ``ratio-of-sums`` (module docstring).

    Returns:
        The sharpness (lower is better).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, not {aggregate!r}")
    if not scores:
        raise ValueError("no images to compute sharpness on")
    variances = np.array([np.var(np.asarray(s, dtype=np.float64)) for s in scores])
    means = np.array([np.mean(np.asarray(s, dtype=np.float64)) for s in scores])
    if aggregate == "sum-of-ratios":
        return float(np.sum(variances / means))
    return float(variances.sum() / means.sum())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Non-interpolated AP of one ranking (ties broken by index); None without positives."""
    positives = np.asarray(positives, dtype=bool)
    if not positives.any():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = positives[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP over classes with at least one positive. ``scores``, ``labels``: ``[N, C]``."""
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    aps = [ap for ap in aps if ap is not None]
    return float(np.mean(aps)) if aps else float("nan")


@dataclass
class SelectOptions:
    """Options of :func:`run_select_prompts`.

    Attributes:
        dataset / data_root / split / clip: as for the cams stage.
        out: where the ranking goes (``.tsv``; a ``.json`` with the same stem is written beside it).
        pool: template file [prompts/templates.txt].
        n_images: use the first n labelled images of the split (None: all).
        softmax_over: ``classes`` (default) or ``classes+background``.
        aggregate: ``sum-of-ratios`` (default) or ``ratio-of-sums``.
        feature: ``patch-mean`` (default, the CAM stage's) or ``cls``.
        class_file / background_file / labels_file / images_dir / synonyms: as for the cams stage.
        device: ``cpu`` or ``cuda``.
        progress: progress bar while encoding images.
    """

    dataset: str
    data_root: Path
    split: Path
    clip: str
    out: Path
    pool: Path | None = None
    n_images: int | None = None
    softmax_over: str = "classes"
    aggregate: str = "sum-of-ratios"
    feature: str = "patch-mean"
    class_file: Path | None = None
    background_file: Path | None = None
    labels_file: Path | None = None
    images_dir: str | None = None
    synonyms: str = "joined"
    device: str = "cpu"
    progress: bool = True


@torch.no_grad()
def image_feature(vit: DenseViT, image: torch.Tensor, kind: str = "patch-mean") -> torch.Tensor:
    """``[D]`` L2-normalised feature of one ``[3, H, W]`` image (module docstring)."""
    x = vit.run_blocks(vit.embed(image[None]), 0, vit.num_layers)  # [T, 1, C]
    tokens = vit.visual.ln_post(x[:, 0])  # [T, C]
    pooled = tokens[1:].mean(dim=0) if kind == "patch-mean" else tokens[0]
    feature = pooled @ vit.visual.proj
    return feature / feature.norm()


def score_template(image_features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, logit_scale: float,
                   labels: list[tuple[int, ...]], softmax_over: str, aggregate: str) -> dict:
    """Sharpness and mAP of one template's text features against encoded images.

    Args:
        image_features: ``[N, D]`` normalised.
        fg / bg: ``[C, D]`` / ``[Bg, D]`` normalised text features.
        logit_scale: CLIP's temperature (``logit_scale.exp()``).
        labels: per image, its 0-based classes.
    """
    cosine = image_features @ fg.t()  # [N, C]
    logits = cosine if softmax_over == "classes" else image_features @ torch.cat([fg, bg]).t()
    probs = (logit_scale * logits).softmax(dim=-1).double().cpu().numpy()
    per_image = [probs[i, list(c)] for i, c in enumerate(labels)]
    truth = np.zeros(cosine.shape, dtype=bool)
    for i, c in enumerate(labels):
        truth[i, list(c)] = True
    return {"sharpness": sharpness(per_image, aggregate),
            "map": mean_average_precision(cosine.double().cpu().numpy(), truth)}


def run_select_prompts(opts: SelectOptions, echo: Callable[[str], None] = print) -> list[dict]:
    """Rank every template of the pool by sharpness; print the table and write it to ``opts.out``.

    Returns:
        Rows ``{"rank", "template", "sharpness", "map"}``, best (lowest sharpness) first.

    Raises:
        UserError: bad dataset, split, checkpoint, option, or no usable image.
    """
    if opts.softmax_over not in SOFTMAX_OVER:
        raise UserError(f"softmax over must be one of {', '.join(SOFTMAX_OVER)}")
    if opts.aggregate not in AGGREGATES:
        raise UserError(f"aggregate must be one of {', '.join(AGGREGATES)}")
    if opts.feature not in FEATURES:
        raise UserError(f"feature must be one of {', '.join(FEATURES)}")
    if opts.n_images is not None and opts.n_images < 1:
        raise UserError("N_IMAGES must be at least 1")
    templates = load_template_file(Path(opts.pool) if opts.pool else builtin_path("templates.txt"))
    templates = [check_template(t) for t in dict.fromkeys(templates)]
    if not templates:
        raise UserError("the template pool is empty")
    classes, background = class_and_background_lists(opts.dataset, opts.class_file, opts.background_file)
    dataset = open_dataset(opts.dataset, Path(opts.data_root), Path(opts.split), classes,
                           labels_file=opts.labels_file, images_dir=opts.images_dir)
    device = torch.device(opts.device)
    loaded = load_clip(opts.clip, device)
    model, vit = loaded.model, DenseViT(loaded.model.visual)

    ids = dataset.ids if opts.n_images is None else dataset.ids[: opts.n_images]
    features, labels, skipped = [], [], 0
    from clipes.runs import progress_bar

    with progress_bar(len(ids), opts.progress, "images") as bar:
        for image_id in ids:
            try:
                present = dataset.labels(image_id)
                path = dataset.image_path(image_id)
                image, _ = load_image(path)
                check_size(image, vit.patch_size, path)
                features.append(image_feature(vit, to_clip_tensor(image, vit.patch_size).to(device), opts.feature))
                labels.append(tuple(present))
            except InputError as exc:
                skipped += 1
                echo(f"skipped {image_id}: {exc}")
            bar.update(1)
    if not features:
        raise UserError("no usable image in the split")
    image_features = torch.stack(features)  # [N, D]
    logit_scale = float(model.logit_scale.exp())
    rows = []
    for template in templates:
        fg = encode_prompts(model, list(classes.prompts), [template], opts.synonyms)
        bg = encode_prompts(model, background, [template], opts.synonyms)
        rows.append({"template": template, **score_template(image_features, fg, bg, logit_scale, labels,
                                                             opts.softmax_over, opts.aggregate)})
    rows.sort(key=lambda r: (r["sharpness"], -r["map"] if not math.isnan(r["map"]) else 0.0))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    _write_ranking(Path(opts.out).expanduser(), rows, opts, loaded.sha256, len(features), skipped)
    echo(f"{'rank':>4}  {'sharpness':>10}  {'mAP %':>6}  template")
    for row in rows:
        echo(f"{row['rank']:>4}  {row['sharpness']:>10.4f}  {100 * row['map']:>6.1f}  {row['template']}")
    echo(f"select-prompts: {len(rows)} templates over {len(features)} images ({skipped} skipped); "
         f"softmax over {opts.softmax_over}, {opts.aggregate}, {opts.feature} feature -> {opts.out}")
    echo(f'best: PROMPT="{rows[0]["template"]}"')
    return rows


def _write_ranking(out: Path, rows: list[dict], opts: SelectOptions, sha256: str, images: int, skipped: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as handle:
        handle.write("rank\tsharpness\tmap\ttemplate\n")
        for row in rows:
            handle.write(f"{row['rank']}\t{row['sharpness']:.6g}\t{row['map']:.6g}\t{row['template']}\n")
    write_json(out.with_suffix(".json"), {
        "stage": "select-prompts", "clip_sha256": sha256, "images": images, "skipped": skipped,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "ranking": rows})
