"""WeCLIP speed: one training iteration split into its parts, and prediction per image.

A ViT-B/16-sized random CLIP (as ``bench_cams.py``), decoder width 256, batch 4 of 320x320 crops,
2 labels per image, VOC's 21 outputs. Prints seconds for:

* one training iteration, split into the frozen forward (blocks 1..11), the decoder forward
  (fusion head, transformer decoder, affinity), the CAMs (last block + closed-form GradCAM for
  every label), the RFM (late phase: block selection, Sinkhorn, boxes, propagation), PAR + the
  pseudo labels, the losses + backward, and the AdamW step; the same iteration with the
  reference's per-class autograd CAMs (``--grad autograd``);
* ``predict-weclip`` per 375x500 image (long side 512, scales 1 and 0.75, flip) without and with the
  CRF; the decoder alone, no CAMs (the original computes CAMs on every forward, even to predict);

each also in plain forwards of the batch (of the 4 crops; for prediction, of one 384x512 image)
through the frozen image tower, and peak memory (CPU: the process's peak RSS; GPU: peak allocated).

Usage: ``python benchmarks/bench_weclip.py [--device cuda] [--repeat 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.weclip import rfm
from clipes.weclip.cam import last_block_cams
from clipes.weclip.decoder import WeCLIPDecoder, decoder_affinity
from clipes.weclip.model import WeCLIP, build_weclip
from clipes.weclip.runner import InferOptions, predict_image
from clipes.weclip.tower import normalize_image

from bench_cams import make_checkpoint
from bench_cams import timed as clock


def iteration(model: WeCLIP, optimizer, images, classes, device, method: str) -> dict:
    """One training step, part by part (the same calls as WeCLIP.step + losses + backward + step)."""
    model.grad_method = method
    parts = {}
    parts["frozen forward"], frozen = clock(lambda: model.tower(images), device)
    parts["decoder forward"], (fused, logits) = clock(lambda: model.decoder(frozen.patch_maps()), device)
    affinity = decoder_affinity(fused)
    fg = [model.fg_features[c] for c in classes]
    parts["CAMs"], cams = clock(lambda: last_block_cams(model.tower.vit, frozen.last_input, frozen.grid, fg,
                                                        model.bg_features, model.logit_scale, method), device)

    def refine():
        out = []
        for i, cam in enumerate(cams):
            blocks = torch.cat([frozen.attention[:, i], cam.last_attention[None]], dim=0)
            attention = rfm.rfm_attention(blocks, affinity[i].detach(), True, model.late_blocks)
            out.append(rfm.refine_patch_cams(attention.attention, cam.cams, model.box_threshold))
        return out

    parts["RFM"], refined = clock(refine, device)
    parts["PAR + pseudo labels"], labels = clock(lambda: torch.stack([
        rfm.pseudo_label(rfm.label_scores(r, images[i], tuple(images.shape[-2:])), classes[i])
        for i, r in enumerate(refined)]), device)

    def backward():
        from clipes.weclip import losses

        up = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
        seg = losses.seg_loss(up, labels.long())[0]
        aff = losses.affinity_loss(affinity, losses.affinity_labels(labels.long()))[0]
        optimizer.zero_grad()
        (seg + 0.1 * aff).backward()

    parts["losses + backward"], _ = clock(backward, device)
    parts["AdamW step"], _ = clock(optimizer.step, device)
    return parts


def set_fp16(model: WeCLIP, fp16: bool) -> None:
    """Switch the reference's fp16 attention out-projections on or off everywhere."""
    model.fp16_out_proj = fp16
    model.tower.fp16_out_proj = fp16
    model.decoder.decoder.fp16_out_proj = fp16


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
    classes, background = class_and_background_lists("voc12")
    decoder = WeCLIPDecoder(768, 11, args.width, 21)
    model = build_weclip(clip.model, list(classes.prompts), background, DEFAULT_TEMPLATE, decoder).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=2e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(args.batch, args.crop, args.crop, 3)).astype(np.float32)
    images = normalize_image(crops).to(device)
    labels = [sorted(rng.choice(20, size=2, replace=False).tolist()) for _ in range(args.batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def plain():
        return clock(lambda: model.tower.vit.plain_forward(images), device)[0]

    plain()  # warm-up
    yard = statistics.median(plain() for _ in range(args.repeat))
    print(f"bench-weclip: device {device}, {args.threads} threads, batch {args.batch} x {args.crop}x{args.crop}, "
          f"decoder width {args.width}, 2 labels per image")
    print(f"  plain forward of the batch through the image tower: {yard:.3f} s (the unit below)")
    variants = (("analytic", True, "closed-form CAMs (default)"),
                ("autograd", True, "per-class autograd CAMs (--grad autograd)"),
                ("analytic", False, "closed-form CAMs, fp32 out-projections (--fp32-out-proj)"))
    for method, fp16, name in variants:
        set_fp16(model, fp16)
        iteration(model, optimizer, images, labels, device, method)  # warm-up
        runs = [iteration(model, optimizer, images, labels, device, method) for _ in range(args.repeat)]
        parts = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = statistics.median(sum(r.values()) for r in runs)
        print(f"  training iteration, {name}: {total:.3f} s = {total / yard:.2f} plain forwards")
        shown = parts if (method, fp16) == ("analytic", True) else {"CAMs": parts["CAMs"]} if fp16 else {
            k: parts[k] for k in ("frozen forward", "decoder forward", "losses + backward")}
        for key, value in shown.items():
            print(f"    {key:<22}{value:8.3f} s  {value / yard:5.2f} fw")
    set_fp16(model, True)
    model.eval()
    h, w = 375, 500
    photo = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image = normalize_image(photo).to(device)
    one = F.interpolate(image, size=(384, 512), mode="bilinear", align_corners=False)
    one_forward = statistics.median(clock(lambda: model.tower.vit.plain_forward(one), device)[0]
                                    for _ in range(args.repeat))
    print(f"  plain forward of one 384x512 image: {one_forward:.3f} s")
    for crf in (False, True):
        opts = InferOptions(crf=crf)
        predict_image(model, photo, image, opts)
        took = statistics.median(clock(lambda: predict_image(model, photo, image, opts), device)[0]
                                 for _ in range(max(args.predict_images, 1)))
        print(f"  predict-weclip per 375x500 image, {'with' if crf else 'without'} CRF: {took:.3f} s "
              f"= {took / one_forward:.2f} plain forwards of it")
    if device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"  peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
