"""Stage-1 speed: softmax-GradCAM per image against one plain forward pass of the image encoder.

Builds a ViT-B/16-sized random CLIP in OpenAI's format (saved as an fp16 state dict, then loaded
by clipes like a real checkpoint), synthetic 500x375 JPEGs with 2 labels each, and measures, per
image and interleaved so that machine noise hits all alike:

* ``cam``: clipes' softmax-GradCAM (default options: exact fp32, analytic gradients);
* ``forward``: one plain gradient-free forward of the image tower on the same input (yardstick);
* ``reference-style``: the original code's schedule re-enacted with the same modules (all blocks
  keep attention weights, then the last block is re-run forward + backward once per label).

Prints seconds per image (mean, median), the cost in forwards per image, model load and text
encoding times, and where the CAM time goes. Usage: ``python benchmarks/bench_cams.py [--device
cuda] [--images 8] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.text import encode_prompts
from clipes.backbones.vit import DenseViT
from clipes.compat import import_clip
from clipes.data.images import load_image, to_clip_tensor
from clipes.data.prompts import DEFAULT_TEMPLATE, builtin_path, load_background_file, load_class_file
from clipes.maps.gradcam import LastBlockPass, SoftmaxTarget, autograd_weights, cam_from_weights, softmax_gradcam


def make_checkpoint(folder: Path) -> Path:
    clip = import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)  # ViT-B/16 dimensions
    path = folder / "vit_b16_random.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


def make_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:375, 0:500]
        base = np.stack([(x * (i + 1)) % 256, (y * 2) % 256, ((x + y) * 3) % 256], -1)
        noise = rng.integers(0, 40, size=(375, 500, 3))
        path = folder / f"img{i}.jpg"
        Image.fromarray(((base + noise) % 256).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def reference_style(vit: DenseViT, images, fg, bg, logit_scale):
    """The original code's schedule: attention kept in every block, last block re-run per label."""
    with torch.no_grad():
        x, _ = vit.run_blocks_with_attention(vit.embed(images), 0, vit.num_layers - 1)
    target = SoftmaxTarget(fg, bg, logit_scale, vit.visual.proj)
    h, w = vit.grid(images.shape[-2], images.shape[-1])
    activation = vit.blocks[-1].ln_1(x[1:, 0])  # [N, C]
    # one last-block forward (with attention weights) + backward per label
    return [cam_from_weights(autograd_weights(vit, x, target, [k])[1], activation, h, w) for k in range(fg.shape[0])]


def breakdown(vit: DenseViT, images, fg, bg, logit_scale, device):
    parts = {}
    with torch.no_grad():
        parts["embed"], x = timed(lambda: vit.embed(images), device)
        parts["blocks 1..L-1 (no grad)"], x = timed(lambda: vit.run_blocks(x, 0, vit.num_layers - 1), device)
        parts["last block, once"], last = timed(lambda: LastBlockPass(vit, x), device)
        target = SoftmaxTarget(fg, bg, logit_scale, vit.visual.proj)
        parts["scores + d(score)/d(feature)"], (_, dpooled) = timed(lambda: target.scores_and_grads(last.pooled[0]), device)
        parts["analytic gradient, all labels"], weights = timed(lambda: last.mean_activation_grad(0, dpooled), device)
        h, w = vit.grid(images.shape[-2], images.shape[-1])
        parts["ReLU + normalise"], _ = timed(lambda: cam_from_weights(weights, last.activation[0, 1:], h, w), device)
    return parts


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The options every stage benchmark takes: device, images, labels per image, CPU threads."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def main():
    parser = bench_parser(__doc__)
    parser.add_argument("--skip-reference", action="store_true", help="skip the reference-style timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp)
        paths = make_images(tmp, args.images)
        load_s, loaded = timed(lambda: load_clip(str(checkpoint), device), device)
        model = loaded.model
        classes = load_class_file(builtin_path("voc12_classes.tsv"))
        background = load_background_file(builtin_path("voc12_background.txt"))
        text_s, fg_all = timed(lambda: encode_prompts(model, list(classes.prompts), [DEFAULT_TEMPLATE]), device)
        bg_s, bg = timed(lambda: encode_prompts(model, background, [DEFAULT_TEMPLATE]), device)
        vit = DenseViT(model.visual)
        rows = {"decode + preprocess": [], "cam": [], "forward": [], "reference-style": []}
        fg = fg_all[: args.labels]
        warm = to_clip_tensor(load_image(paths[0])[0], 16)[None].to(device)
        softmax_gradcam(vit, warm, [fg], bg, model.logit_scale)
        vit.plain_forward(warm)
        for path in paths:
            prep_s, tensor = timed(lambda: to_clip_tensor(load_image(path)[0], 16)[None].to(device), device)
            rows["decode + preprocess"].append(prep_s)
            rows["forward"].append(timed(lambda: vit.plain_forward(tensor), device)[0])
            rows["cam"].append(timed(lambda: softmax_gradcam(vit, tensor, [fg], bg, model.logit_scale), device)[0])
            if not args.skip_reference:
                rows["reference-style"].append(timed(lambda: reference_style(vit, tensor, fg, bg, model.logit_scale),
                                                     device)[0])
        parts = breakdown(vit, warm, fg, bg, model.logit_scale, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nbench-cams: ViT-B/16-sized random CLIP, {args.images} images 500x375 (grid 24x32 = 768 patches), "
          f"{args.labels} labels each, {name}, torch {torch.__version__}")
    print(f"model load {load_s:.2f} s; text encoding {text_s + bg_s:.2f} s "
          f"({len(classes.prompts)} classes + {len(background)} background prompts)\n")
    fwd = statistics.median(rows["forward"])
    print(f"{'per image':<22}{'mean s':>9}{'median s':>10}{'forwards':>10}")
    for key, values in rows.items():
        if values:
            print(f"{key:<22}{statistics.mean(values):>9.3f}{statistics.median(values):>10.3f}"
                  f"{statistics.median(values) / fwd:>10.3f}")
    ratios = [c / f for c, f in zip(rows["cam"], rows["forward"])]
    print(f"\ncam cost: {statistics.median(ratios):.3f} forwards per image (median of per-image ratios; "
          f"target <= 1.1)")
    if rows["reference-style"]:
        ref = [r / f for r, f in zip(rows["reference-style"], rows["forward"])]
        print(f"reference-style cost: {statistics.median(ref):.3f} forwards per image; speed-up "
              f"{statistics.median(rows['reference-style']) / statistics.median(rows['cam']):.2f}x")
    if device.type == "cuda":
        print(f"throughput: {1.0 / statistics.median(rows['cam']):.1f} images/s (batch 1)")
    total = sum(parts.values())
    print("\nwhere the CAM time goes (one image):")
    for key, value in parts.items():
        print(f"  {key:<32}{value:>8.3f} s {100 * value / total:>6.1f}%")


if __name__ == "__main__":
    main()
