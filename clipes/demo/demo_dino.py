"""Training the demo DINOv2: a small DINOv2-architecture ViT distilled from the demo CLIP.

WeCLIP+ needs a DINOv2 beside its CLIP, and no DINOv2 can be downloaded here; random weights are no
demo. So clipes makes one: :class:`clipes.backbones.dinov2.DinoV2` (patch 14, LayerScale, the hub's
layout) trained to reproduce, at every patch, the demo CLIP's final patch features (``ln_post`` then
``proj``, the features its CAMs pool) of scenes rendered by :mod:`clipes.demo.demo_data` from seeds
the demo dataset never uses. The student sees the image at a random size of 224, 266 or 308 pixels
(16 to 22 patches a side: the positional table is interpolated as at test time), ImageNet-normalised
as WeCLIP+ feeds its DINO, and randomly flipped; the teacher sees it at its own 224 pixels,
CLIP-normalised, and its 14 x 14 features are resized bilinearly to the student's grid. The loss is
one minus the cosine similarity of a linear projection of the student's tokens (dropped after
training) to the teacher's.

This is a distillation, not DINO's self-supervision: the student learns the CLIP's view of the
scenes from another architecture, with its own grid and positional table, which is what WeCLIP+'s
second branch needs from it in the demo. The checkpoint is written in the hub's key layout with a
``<name>_config.json`` naming its heads, so :func:`clipes.backbones.dinov2.load_dino` reads it like
a released ``dinov2_vits14_pretrain.pth``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.dinov2 import DinoConfig, DinoV2
from clipes.demo import demo_data
from clipes.demo.demo_clip import TRAIN_SEED_BASE, _jpeg, to_input
from clipes.store.fsutil import atomic_open

ARCHITECTURE = dict(embed_dim=96, depth=6, num_heads=3, patch_size=14, pos_grid=16, mlp_hidden=384)
SEED_BASE = TRAIN_SEED_BASE + 500_000  # scenes of their own, far from the demo dataset's seeds
SIZES = (224, 266, 308)
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


@dataclass
class TrainOptions:
    """Settings of :func:`train_demo_dino` (defaults reproduce the committed checkpoint).

    Attributes:
        steps / batch_size / lr / weight_decay / warmup: AdamW with a linear warm-up, then cosine to 0.
        seed: torch seed of the initial weights (scenes come from a fixed seed range).
        threads: torch CPU threads (None: torch's default).
        save_every: steps between resumable training states.
    """

    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    seed: int = 0
    threads: int | None = None
    save_every: int = 100


def build_student(seed: int = 0) -> tuple[DinoV2, torch.nn.Linear]:
    """A fresh demo DINOv2 and the projection the distillation trains with it."""
    torch.manual_seed(seed)
    model = DinoV2(DinoConfig(**ARCHITECTURE))
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.02)
        model.vit.cls_token.normal_(0, 0.02)
        for block in model.vit.blocks:  # LayerScale starts small, as DINOv2 trains
            block.ls1.gamma.fill_(0.1)
            block.ls2.gamma.fill_(0.1)
    return model, torch.nn.Linear(ARCHITECTURE["embed_dim"], 64)


def teacher_features(clip_model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The demo CLIP's final patch features ``[B, N, D]`` (``ln_post``, ``proj``), unit length."""
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding).permute(1, 0, 2)
    x = visual.transformer(x).permute(1, 0, 2)
    return F.normalize(visual.ln_post(x[:, 1:]) @ visual.proj, dim=-1)


def make_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(teacher input [B, 3, 224, 224] CLIP-normalised, student input [B, 3, S, S] ImageNet-normalised, S)``,
    a pure function of ``step``."""
    rng = np.random.default_rng(SEED_BASE + step)
    size = int(rng.choice(SIZES))
    flips = rng.random(batch_size) < 0.5
    teacher, student = [], []
    for i in range(batch_size):
        image = _jpeg(demo_data.render_scene(SEED_BASE + step * batch_size + i).image)
        if flips[i]:
            image = np.ascontiguousarray(image[:, ::-1])
        teacher.append(to_input(image))
        raw = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
        raw = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)[0]
        student.append((raw - IMAGENET_MEAN) / IMAGENET_STD)
    return torch.stack(teacher), torch.stack(student), size


def distillation_loss(student_tokens: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor,
                      grid: tuple[int, int]) -> torch.Tensor:
    """``1 - cos`` between projected student tokens and the teacher's features resized to the student grid.

    Args:
        student_tokens: ``[B, N, D_s]`` on ``grid``.
        target: ``[B, M, D_t]`` unit teacher features on a square grid.
    """
    b, m, d = target.shape
    side = int(round(math.sqrt(m)))
    resized = F.interpolate(target.transpose(1, 2).reshape(b, d, side, side), size=grid, mode="bilinear",
                            align_corners=False).flatten(2).transpose(1, 2)
    return 1 - F.cosine_similarity(head(student_tokens), resized, dim=-1).mean()


def hub_state_dict(model: DinoV2) -> dict[str, torch.Tensor]:
    """The student under the hub's key names (the layout of ``dinov2_vits14_pretrain.pth``)."""
    out = {"pos_embed": model.pos_embed.detach().clone(),
           "mask_token": torch.zeros(1, model.width)}
    for key, value in model.vit.state_dict().items():
        name = {"cls_token": "cls_token", "reg_token": "register_tokens"}.get(key, key)
        out[name] = value.detach().clone()
    return out


def _learning_rate(step: int, opts: TrainOptions) -> float:
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    return opts.lr * 0.5 * (1 + math.cos(math.pi * (step - opts.warmup) / max(1, opts.steps - opts.warmup)))


def train_demo_dino(out: Path, clip: Path, opts: TrainOptions = TrainOptions(),
                    echo: Callable[[str], None] = print) -> dict:
    """Distil the demo DINOv2 from the demo CLIP and write it to ``out`` (+ ``<stem>_config.json``).

    A training state (student, head, optimiser, step) is kept beside ``out`` as ``<out>.state`` every
    ``save_every`` steps, so a killed run resumes; it is removed at the end.

    Returns:
        A summary: options, architecture, steps, seconds, final loss and held-out cosine similarity.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    teacher = load_clip(str(clip)).model.float().eval().requires_grad_(False)
    model, head = build_student(opts.seed)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    state_path = out.with_name(out.name + ".state")
    start, elapsed = 0, 0.0
    if state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("options") == json.dumps(asdict(opts), sort_keys=True):
            model.load_state_dict(saved["model"])
            head.load_state_dict(saved["head"])
            optimizer.load_state_dict(saved["optimizer"])
            start, elapsed = int(saved["step"]), float(saved["elapsed"])
            echo(f"demo-dino: resuming at step {start} from {state_path}")
    began = time.perf_counter() - elapsed
    loss_value = float("nan")
    model.train()
    for step in range(start, opts.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, opts)
        torch.manual_seed(opts.seed * 100_003 + step)
        teacher_in, student_in, size = make_batch(step, opts.batch_size)
        with torch.no_grad():
            target = teacher_features(teacher, teacher_in)
        loss = distillation_loss(model(student_in)["x_norm_patchtokens"], head, target, (size // 14, size // 14))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = loss.item()
        done = step + 1
        if done % 50 == 0 or done == opts.steps:
            echo(f"demo-dino: step {done}/{opts.steps} loss {loss_value:.4f} "
                 f"({time.perf_counter() - began:.0f} s)")
        if done % opts.save_every == 0 and done < opts.steps:
            with atomic_open(state_path, "wb") as handle:
                torch.save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                            "step": done, "elapsed": time.perf_counter() - began,
                            "options": json.dumps(asdict(opts), sort_keys=True)}, handle)
    model.eval()
    with torch.no_grad():  # held-out scenes: how close the student's features are to the teacher's
        teacher_in, student_in, size = make_batch(10_000_000 // max(opts.batch_size, 1), 16)
        held_out = 1 - distillation_loss(model(student_in)["x_norm_patchtokens"], head,
                                         teacher_features(teacher, teacher_in), (size // 14, size // 14)).item()
    seconds = time.perf_counter() - began
    summary = {"options": asdict(opts), "architecture": ARCHITECTURE, "final_loss": loss_value,
               "held_out_cosine": round(held_out, 4), "seconds": round(seconds, 1),
               "threads": torch.get_num_threads(), "teacher": Path(clip).name}
    config = {"num_heads": ARCHITECTURE["num_heads"], "interpolate_offset": 0.1, "interpolate_antialias": False,
              "made_by": "clipes demo-dino (distilled from the demo CLIP; see clipes/demo/demo_dino.py)",
              "training": summary}
    with atomic_open(out, "wb") as handle:
        torch.save(hub_state_dict(model), handle)
    with atomic_open(out.with_name(f"{out.stem}_config.json"), "w") as handle:
        json.dump(config, handle, indent=1)
    state_path.unlink(missing_ok=True)
    echo(f"demo-dino: wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {seconds / 60:.1f} min; "
         f"held-out cosine similarity to the teacher {held_out:.3f}")
    return summary
