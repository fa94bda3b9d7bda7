"""Training the demo CLIP: a small OpenAI-architecture ViT CLIP learnt from demo scenes and captions.

The model is ``clip.model.CLIP`` itself (patch 16, the ViT-B/16 code path) with small widths, so the
checkpoint is an ordinary OpenAI state dict that :func:`clipes.backbones.clip_loader.load_clip` reads like
the real one. It is trained contrastively (symmetric InfoNCE) on image-caption pairs rendered by
:mod:`clipes.demo.demo_data` from seeds that the demo dataset never uses.

The loss pools the patch tokens the way the CAM stage does (spec section 4: the mean of the last
block's patch tokens after ``ln_post``, projected), but over a random window of patches whose
caption names only the objects inside it (or just the backdrop), so that each token comes to
describe its own neighbourhood; clip's own CLS feature is trained on the pairs whose caption
describes the whole image. For half of the images the last block's attention shortcut is dropped
(:func:`skip_mask`), so that its attention carries the class evidence by itself: that is the path
softmax-GradCAM differentiates (its target is that block's ``ln_1`` output); it also makes that
block's attention group the patches of an object, which is why the demo's CAA uses that block
alone (``DemoOptions.attention_layers``). A batch often holds
several windows that one caption describes (same objects, and the same backdrop if the caption
names it); all of them count as positives, with equal weight.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipes.compat import import_clip
from clipes.data.images import CLIP_MEAN, CLIP_STD
from clipes.demo import demo_data
from clipes.store.fsutil import atomic_open

# clip.model.CLIP arguments of the demo model (heads = width // 64 as OpenAI's loader infers them).
ARCHITECTURE = dict(embed_dim=64, image_resolution=224, vision_layers=12, vision_width=96, vision_patch_size=16,
                    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=2)
TRAIN_SEED_BASE = 1_000_000  # demo dataset scenes use seeds below this
PROBE_SEED_BASE = 900_000
TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image with {}.", "{}.", "a clean origami {}.",
             "a drawing of {}.", "a close-up photo of {}.", "a rendering of {}.")


@dataclass
class TrainOptions:
    """Settings of :func:`train_demo_clip` (defaults reproduce the committed checkpoint).

    Attributes:
        steps: optimiser steps.
        batch_size: image-caption pairs per step.
        lr / weight_decay / warmup / schedule_steps: AdamW with linear warm-up then a cosine decay
            that would reach 0 at ``schedule_steps`` (the first phase ends before that).
        seed: torch seed for the initial weights (scenes come from fixed seed ranges).
        drop_last: chance that the last block's attention shortcut is dropped for an image (see
            :func:`skip_mask`).
        threads: torch CPU threads (None: torch's default).
        save_every: steps between resumable training states.
    """

    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    schedule_steps: int = 600
    seed: int = 0
    drop_last: float = 0.5
    threads: int | None = None
    save_every: int = 100


def build_model(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised demo CLIP (``clip.model.CLIP``, fp32)."""
    clip = import_clip()
    torch.manual_seed(seed)
    return clip.model.CLIP(**ARCHITECTURE)


def object_phrase(classes: list[int], article: str = "a ") -> str:
    """``a red disc``, ``a red disc and a blue square``, ``a red disc, a blue square and a cyan ring``
    (``article=""``: ``red disc and blue square``)."""
    words = [f"{article}{demo_data.PROMPTS[c]}" for c in classes]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption(classes: tuple[int, ...], background: str, rng: np.random.Generator) -> tuple[str, bool]:
    """A caption for objects ``classes`` on ``background``: objects in random order, the backdrop
    named half the time (always when there is no object).

    Returns:
        ``(text, names_background)``.
    """
    if not classes:
        return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(background), True
    order = [classes[i] for i in rng.permutation(len(classes))]
    phrase = object_phrase(order, "a " if rng.random() < 0.7 else "")
    with_background = bool(rng.random() < 0.5)
    if with_background:
        phrase += f" on {background}"
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(phrase), with_background


def pick_window(scene: demo_data.Scene, rng: np.random.Generator, patch: int = 16, whole: float = 0.3,
                inside: float = 0.6, outside: float = 0.15, tries: int = 10) -> tuple[np.ndarray, tuple[int, ...]]:
    """A random window of patches and the objects it holds, for window-pooled training.

    An object counts as inside when at least ``inside`` of its pixels fall in the window; windows
    that cut an object ambiguously (between ``outside`` and ``inside``) are redrawn, and after
    ``tries`` the whole image is used (also with probability ``whole``).

    Returns:
        ``(window [h, w] bool over the patch grid, classes inside)``.
    """
    h, w = scene.mask.shape[0] // patch, scene.mask.shape[1] // patch
    full = np.ones((h, w), bool)
    if rng.random() < whole:
        return full, scene.classes
    # pixels of each class per patch: [K, h, w]
    per_patch = np.stack([(scene.mask == c + 1).reshape(h, patch, w, patch).sum((1, 3)) for c in scene.classes])
    totals = per_patch.sum((1, 2))
    for _ in range(tries):
        wh, ww = int(rng.integers(3, h + 1)), int(rng.integers(3, w + 1))
        r0, c0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        fraction = per_patch[:, r0:r0 + wh, c0:c0 + ww].sum((1, 2)) / totals
        if np.any((fraction > outside) & (fraction < inside)):
            continue
        window = np.zeros((h, w), bool)
        window[r0:r0 + wh, c0:c0 + ww] = True
        return window, tuple(c for c, f in zip(scene.classes, fraction) if f >= inside)
    return full, scene.classes


def to_input(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[3, H, W]`` CLIP-normalised float32."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _jpeg(image: np.ndarray, quality: int = 92) -> np.ndarray:
    """The image after a JPEG round trip, as the demo dataset stores it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.array(Image.open(buffer).convert("RGB"))


def make_batch(step: int, batch_size: int, seed_base: int = TRAIN_SEED_BASE):
    """Scenes, windows, captions and the positive-pair matrix of one step (a pure function of ``step``).

    Returns:
        ``(images [B, 3, H, W], windows [B, N] float, captions list[str], positives [B, B] bool)``:
        ``windows[i]`` marks the patches pooled for image i (caption i describes that window),
        ``positives[i, j]`` says caption j also describes window i.
    """
    rng = np.random.default_rng(seed_base + step)
    scenes = [demo_data.render_scene(seed_base + step * batch_size + i) for i in range(batch_size)]
    windows, contents = zip(*(pick_window(s, rng) for s in scenes))
    texts, named = zip(*(caption(c, s.background, rng) for c, s in zip(contents, scenes)))
    images = torch.stack([to_input(_jpeg(s.image)) for s in scenes])
    keys = [frozenset(c) for c in contents]
    positives = torch.tensor([[keys[i] == keys[j] and (not named[j] or scenes[i].background == scenes[j].background)
                               for j in range(batch_size)] for i in range(batch_size)])
    pool = torch.from_numpy(np.stack([w.reshape(-1) for w in windows]).astype(np.float32))
    return images, pool, list(texts), positives


def image_features(model: torch.nn.Module, images: torch.Tensor, windows: torch.Tensor | None = None,
                   skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS feature (clip's ``encode_image``) and mean-patch feature (the CAM stage's), both ``[B, D]``.

    Args:
        model: a ``clip.model.CLIP``.
        images: ``[B, 3, H, W]`` normalised, at the model's resolution.
        windows: ``[B, N]`` 0/1: average only those patches (default: all, as the CAM stage does).
        skip: ``[B]`` 0/1 multiplier of the last block's attention shortcut (default: 1, clip's
            own forward). Where it is 0 that block must rebuild every token from the tokens it
            attends to (see :func:`skip_mask`).
    """
    visual = model.visual
    x = visual.conv1(images)  # [B, C, h, w]
    x = x.flatten(2).permute(0, 2, 1)  # [B, N, C]
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B, 1+N, C]
    x = visual.ln_pre(x).permute(1, 0, 2)  # [1+N, B, C]
    *blocks, last = visual.transformer.resblocks
    for block in blocks:
        x = block(x)
    a = last.ln_1(x)
    x = (x if skip is None else x * skip[None, :, None]) + last.attn(a, a, a, need_weights=False)[0]
    x = x + last.mlp(last.ln_2(x))
    x = visual.ln_post(x.permute(1, 0, 2))  # [B, 1+N, C]
    if windows is None:
        pooled = x[:, 1:].mean(dim=1)
    else:
        pooled = (x[:, 1:] * windows[..., None]).sum(1) / windows.sum(1, keepdim=True)  # [B, C]
    return x[:, 0] @ visual.proj, pooled @ visual.proj


def skip_mask(step: int, batch: int, opts: TrainOptions) -> torch.Tensor:
    """``[batch]`` 0/1 multipliers of the last block's attention shortcut for one step (a pure
    function of ``step``).

    Dropping that shortcut puts the class evidence on the path softmax-GradCAM differentiates (the
    last block's attention).
    """
    keep = np.random.default_rng(step).random(batch) >= opts.drop_last
    return torch.from_numpy(keep.astype(np.float32))


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives per row/column (uniform target over them).

    Args:
        image / text: ``[B, D]`` features (normalised here).
        positives: ``[B, B]`` bool, image i matches caption j; the diagonal must be True.
        logit_scale: log of the temperature's inverse.
    """
    logits = logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()  # [B, B]
    target = positives.float()
    image_to_text = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


@torch.no_grad()
def probe(model: torch.nn.Module, count: int = 64, template: str = "a clean origami {}.") -> float:
    """Zero-shot multi-label accuracy on held-out scenes: the fraction of images whose k top-scoring
    classes (k = number present, mean-patch feature) are exactly the present ones."""
    clip = import_clip()
    was_training = model.training
    model.eval()
    text = model.encode_text(clip.tokenize([template.format(p) for p in demo_data.PROMPTS]))
    text = F.normalize(text, dim=-1)
    scenes = [demo_data.render_scene(PROBE_SEED_BASE + i) for i in range(count)]
    _, feats = image_features(model, torch.stack([to_input(_jpeg(s.image)) for s in scenes]))
    scores = F.normalize(feats, dim=-1) @ text.t()
    hits = sum(set(scores[i].topk(len(s.classes)).indices.tolist()) == set(s.classes) for i, s in enumerate(scenes))
    model.train(was_training)
    return hits / count


def _learning_rate(step: int, opts: TrainOptions) -> float:
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = (step - opts.warmup) / max(1, opts.schedule_steps - opts.warmup)
    return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def openai_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor in fp16 under OpenAI's key names, as the released checkpoints are stored."""
    return {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}


def train_demo_clip(out: Path, opts: TrainOptions = TrainOptions(),
                    echo: Callable[[str], None] = print) -> dict:
    """Train the demo CLIP and write it to ``out`` (a plain fp16 state dict, written atomically).

    A training state (weights, optimiser, step: tensors and numbers only) is kept beside ``out`` as
    ``<out>.state`` every ``save_every`` steps, so a killed run resumes; it is removed at the end.

    Returns:
        A summary: options, steps, seconds, final loss and probe accuracy.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    clip = import_clip()
    model = build_model(opts.seed).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    state_path = out.with_name(out.name + ".state")
    start, elapsed = 0, 0.0
    if state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("options") == _options_tensor(opts).tolist():
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            start, elapsed = int(saved["step"]), float(saved["elapsed"])
            echo(f"demo-model: resuming at step {start} from {state_path}")
    began = time.perf_counter() - elapsed
    loss_value = float("nan")
    for step in range(start, opts.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, opts)
        images, windows, texts, positives = make_batch(step, opts.batch_size)
        whole = windows.all(dim=1)
        skip = skip_mask(step, len(images), opts)
        cls_feat, patch_feat = image_features(model, images, windows, skip)
        text_feat = model.encode_text(clip.tokenize(texts))
        loss = contrastive_loss(patch_feat, text_feat, positives, model.logit_scale)
        if whole.sum() > 1:  # clip's own CLS feature, on the pairs whose caption describes the whole image
            loss = (loss + contrastive_loss(cls_feat[whole], text_feat[whole], positives[whole][:, whole],
                                            model.logit_scale)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        done = step + 1
        if done % 50 == 0 or done == opts.steps:
            rate = (done - start) * opts.batch_size / max(1e-9, time.perf_counter() - began - elapsed)
            echo(f"demo-model: step {done}/{opts.steps} loss {loss_value:.3f} "
                 f"scale {model.logit_scale.exp().item():.1f} {rate:.1f} pairs/s")
        if done % opts.save_every == 0 and done < opts.steps:
            with atomic_open(state_path, "wb") as handle:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                            "elapsed": time.perf_counter() - began, "options": _options_tensor(opts).tolist()},
                           handle)
            echo(f"demo-model: probe accuracy {probe(model):.3f} at step {done}")
    accuracy = probe(model)
    seconds = time.perf_counter() - began
    with atomic_open(out, "wb") as handle:
        torch.save(openai_state_dict(model), handle)
    state_path.unlink(missing_ok=True)
    summary = {"options": asdict(opts), "architecture": ARCHITECTURE, "final_loss": loss_value,
               "probe_accuracy": accuracy, "seconds": round(seconds, 1), "threads": torch.get_num_threads()}
    echo(f"demo-model: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {seconds / 60:.1f} min; "
         f"probe accuracy {accuracy:.3f}")
    return summary


def _options_tensor(opts: TrainOptions) -> torch.Tensor:
    """The options that shape the result, as numbers (a resumed state must match them)."""
    return torch.tensor([opts.steps, opts.batch_size, opts.lr, opts.weight_decay, opts.warmup, opts.seed,
                         opts.drop_last, opts.schedule_steps],
                        dtype=torch.float64)
