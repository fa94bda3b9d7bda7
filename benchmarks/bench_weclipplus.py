"""WeCLIP+ speed: one training iteration split into its parts, and prediction per image.

A ViT-B/16-sized random CLIP (as ``bench_cams.py``), a ViT-S/14-sized random DINOv2 (width 384, 12
blocks, 6 heads), decoder width 256, batch 4 of 320x320 crops, 2 labels per image, VOC's 21
outputs. Prints seconds for:

* one training iteration, split into the CLIP forward (blocks 1..11), the DINO forward, the decoder
  forward (both heads, the shared decoder twice, A_f), the CAMs (block 12 on X_10 + closed-form
  GradCAM for every label), RFM+ (selection, Sinkhorn, re-weighted propagation), PAR + the pseudo
  labels, the losses (split CE, affinity, dice, cross supervision) + backward, and the AdamW step;
  the same iteration with the reference's per-class autograd CAMs (``--grad autograd``);
* ``predict-weclipplus`` per 375x500 image (long side 512, scales 1 and 1.5, flip, both branches)
  without and with the CRF; no CAMs (the reference's VOC test script runs them on every forward);

each also in plain forwards of the batch (of the 4 crops; for prediction, of one 384x512 image)
through the CLIP image tower, and peak memory (CPU: peak RSS; GPU: peak allocated).

Usage: ``python benchmarks/bench_weclipplus.py [--device cuda] [--repeat 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.dinov2 import DinoConfig, DinoV2
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.weclip import rfm
from clipes.weclip.cam import last_block_cams
from clipes.weclip.runner import predict_image
from clipes.weclip.tower import normalize_image
from clipes.weclip_plus.decoder import WeCLIPPlusDecoder
from clipes.weclip_plus.model import StepOutput, WeCLIPPlus, build_weclip_plus
from clipes.weclip_plus.runner import InferOptions

from bench_cams import make_checkpoint
from bench_cams import timed as clock
from bench_weclip import set_fp16


def iteration(model: WeCLIPPlus, optimizer, images, classes, device, method: str) -> dict:
    """One training step, part by part (the same calls as WeCLIPPlus.step + losses + backward + step)."""
    model.grad_method = method
    parts = {}
    parts["CLIP forward"], frozen = clock(lambda: model.tower(images), device)
    parts["DINO forward"], (tokens, grid) = clock(lambda: model.dino_tokens(images), device)
    b = images.shape[0]

    def decode():
        decoded = model.decoder(frozen.patch_maps()[-1], tokens.reshape(b, *grid, -1).permute(0, 3, 1, 2))
        return decoded, decoded.affinity()

    parts["decoder forward"], (decoded, affinity) = clock(decode, device)
    probs = torch.softmax(0.5 * decoded.seg_dino + 0.5 * decoded.seg_clip, dim=1).detach()
    fg = [model.fg_features[c] for c in classes]
    parts["CAMs"], cams = clock(lambda: last_block_cams(model.tower.vit, frozen.features[-model.cam_block], frozen.grid,
                                                        fg, model.bg_features, model.logit_scale, method), device)

    def refine():
        out = []
        for i, cam in enumerate(cams):
            blocks = torch.cat([frozen.attention[:, i], cam.last_attention[None]], dim=0)
            attention = rfm.rfm_attention(blocks, affinity[i].detach(), True, model.late_blocks)
            weights = probs[i][torch.tensor(classes[i]) + 1]
            out.append(rfm.refine_patch_cams(attention.attention, cam.cams, model.box_threshold, weights, model.boxes))
        return out

    parts["RFM+"], refined = clock(refine, device)
    parts["PAR + pseudo labels"], labels = clock(lambda: torch.stack([
        rfm.pseudo_label(rfm.label_scores(r, images[i], tuple(images.shape[-2:])), classes[i])
        for i, r in enumerate(refined)]), device)

    def backward():
        step = StepOutput(decoded, affinity, probs, labels)
        losses = model.losses(step, override=True)
        optimizer.zero_grad()
        losses.loss.backward()

    parts["losses + backward"], _ = clock(backward, device)
    parts["AdamW step"], _ = clock(optimizer.step, device)
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is printed)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--predict-images", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip = load_clip(str(make_checkpoint(Path(tmp))), device="cpu")
    torch.manual_seed(0)
    dino = DinoV2(DinoConfig(384, 12, 6, mlp_hidden=1536)).requires_grad_(False)  # ViT-S/14-sized, random
    classes, background = class_and_background_lists("voc12")
    decoder = WeCLIPPlusDecoder(768, 384, args.width, 21)
    model = build_weclip_plus(clip.model, dino, list(classes.prompts), background, DEFAULT_TEMPLATE,
                              decoder).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=2e-4, weight_decay=0.01)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(args.batch, args.crop, args.crop, 3)).astype(np.float32)
    images = normalize_image(crops).to(device)
    labels = [rng.choice(20, size=2, replace=False).tolist() for _ in range(args.batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def plain():
        return clock(lambda: model.tower.vit.plain_forward(images), device)[0]

    plain()  # warm-up
    yard = statistics.median(plain() for _ in range(args.repeat))
    print(f"bench-weclipplus: device {device}, {args.threads} threads, batch {args.batch} x {args.crop}x{args.crop}, "
          f"decoder width {args.width}, DINOv2 ViT-S/14-sized, 2 labels per image")
    print(f"  plain forward of the batch through the CLIP image tower: {yard:.3f} s (the unit below)")
    variants = (("analytic", True, "closed-form CAMs (default)"),
                ("autograd", True, "per-class autograd CAMs (--grad autograd, the reference's)"),
                ("analytic", False, "closed-form CAMs, fp32 out-projections (--fp32-out-proj)"))
    for method, fp16, name in variants:
        set_fp16(model, fp16)
        iteration(model, optimizer, images, labels, device, method)  # warm-up
        runs = [iteration(model, optimizer, images, labels, device, method) for _ in range(args.repeat)]
        parts = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = statistics.median(sum(r.values()) for r in runs)
        print(f"  training iteration, {name}: {total:.3f} s = {total / yard:.2f} plain forwards")
        shown = parts if (method, fp16) == ("analytic", True) else {"CAMs": parts["CAMs"]} if fp16 else {
            k: parts[k] for k in ("CLIP forward", "decoder forward", "losses + backward")}
        for key, value in shown.items():
            print(f"    {key:<22}{value:8.3f} s  {value / yard:5.2f} fw")
    set_fp16(model, True)
    model.eval()
    h, w = 375, 500
    photo = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image = normalize_image(photo).to(device)
    one = torch.nn.functional.interpolate(image, size=(384, 512), mode="bilinear", align_corners=False)
    one_forward = statistics.median(clock(lambda: model.tower.vit.plain_forward(one), device)[0]
                                    for _ in range(args.repeat))
    print(f"  plain forward of one 384x512 image: {one_forward:.3f} s")
    for crf in (False, True):
        opts = InferOptions(crf=crf)
        predict_image(model, photo, image, opts)
        took = statistics.median(clock(lambda: predict_image(model, photo, image, opts), device)[0]
                                 for _ in range(max(args.predict_images, 1)))
        print(f"  predict-weclipplus per 375x500 image, {'with' if crf else 'without'} CRF: {took:.3f} s "
              f"= {took / one_forward:.2f} plain forwards of it")
    if device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"  peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
