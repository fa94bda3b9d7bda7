"""ExCEL speed: one training iteration of each phase split into its parts, prediction and cams-excel per image.

A ViT-B/16-sized random CLIP (as ``bench_cams.py``), a random 112-cluster attribute bank, decoder
width 256, batch 4 of 320x320 crops, 2 labels per image, VOC's 21 outputs. Prints seconds for:

* one training iteration in each phase (early: static CAM, mean attention; mid: + the second,
  calibrated CLIP pass (LVC) and the decoder-guided refinement; late: + affinity labels from the
  prediction), split into the CLIP forward with surgery, the second calibrated pass, the CAMs and
  the refinement, PAR + the pseudo labels, the decoder forward, the losses, the backward and the
  AdamW step;
* ``predict-excel`` per 375x500 image (320 x 320, scales 0.7, 1, 1.2, 1.5, flip) without and with
  the CRF, and ``cams-excel`` per image (the training-free CAM, refinement and PAR label);

each also in plain forwards of the batch (of the 4 crops; for the per-image figures, of one 320x320
image) through the CLIP image tower, and peak memory (CPU: peak RSS; GPU: peak allocated).
``--lvc-pass full`` times the reference's whole second forward instead of clipes' incremental one.

Usage: ``python benchmarks/bench_excel.py [--device cuda] [--repeat 3] [--threads 2]``.
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
from clipes.backbones.vit import DenseViT
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.excel.decoder import excel_affinity, excel_decoder
from clipes.excel.model import ExCEL, StepOutput, build_excel, class_maps, truncated_guide
from clipes.excel.runner import crf_label
from clipes.weclip import rfm
from clipes.weclip.tower import normalize_image

from bench_cams import make_checkpoint
from bench_cams import timed as clock

PHASES = (("early", False, False), ("mid", True, False), ("late", True, True))


def iteration(model: ExCEL, optimizer, images, classes, device, dynamic: bool, late: bool) -> dict:
    """One training step, part by part (the calls of ExCEL.step + losses + backward + step)."""
    parts = {}
    parts["CLIP forward (surgery)"], surgery = clock(lambda: model.clip(images), device)

    def decode():
        fused = model.decoder.decoder_fts_fuse(surgery.patch_maps())
        return fused, model.decoder.decoder(fused), excel_affinity(fused)

    parts["decoder forward"], (fused, logits, affinity) = clock(decode, device)
    if dynamic:
        parts["second pass (LVC)"], cams = clock(lambda: model.dynamic_cams(images, fused, surgery), device)
        parts["CAMs + refinement"], _ = clock(lambda: model.cams(surgery), device)
    else:
        parts["second pass (LVC)"] = 0.0
        parts["CAMs + refinement"], cams = clock(lambda: model.cams(surgery), device)

    def refine():
        return [model.refine(class_maps(cams[i], keys, surgery.grid), surgery.attention[:, i],
                             affinity[i].detach() if dynamic else None)[1] for i, keys in enumerate(classes)]

    took, refined = clock(refine, device)
    parts["CAMs + refinement"] += took

    def par():
        scores = rfm.batch_label_scores(refined, truncated_guide(images))
        return torch.stack([rfm.pseudo_label(s, keys) for s, keys in zip(scores, classes)])

    parts["PAR + pseudo labels"], labels = clock(par, device)
    step = StepOutput(surgery, fused, logits, affinity, None, None, labels)
    parts["losses"], losses = clock(lambda: model.losses(step, late), device)

    def backward():
        optimizer.zero_grad()
        losses.loss.backward()

    parts["backward"], _ = clock(backward, device)
    parts["AdamW step"], _ = clock(optimizer.step, device)
    return parts  # seconds per part


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is printed)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--predict-images", type=int, default=2)
    parser.add_argument("--lvc-pass", choices=("incremental", "full"), default="incremental")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip = load_clip(str(make_checkpoint(Path(tmp))), device="cpu")
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(512, 112), dim=0)  # a random 112-cluster bank
    classes, background = class_and_background_lists("voc12")
    decoder = excel_decoder(768, 12, args.width, 21)
    model = build_excel(clip.model, list(classes.prompts), background, DEFAULT_TEMPLATE, centres, decoder,
                        crop=args.crop, lvc_pass=args.lvc_pass).to(device)
    model.train()
    yardstick = DenseViT(clip.model.visual).to(device)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(args.batch, args.crop, args.crop, 3)).astype(np.float32)
    images = normalize_image(crops).to(device)
    labels = [sorted(rng.choice(20, size=2, replace=False).tolist()) for _ in range(args.batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def plain(x):
        with torch.no_grad():
            return clock(lambda: yardstick.plain_forward(x), device)[0]

    def interleaved(fn, x, runs):
        """Median seconds of ``fn`` and of it in plain forwards of ``x``, each run beside its own
        plain forward (a shared machine's speed drifts between them otherwise)."""
        fn()  # warm-up
        plain(x)
        seconds, ratios, parts = [], [], []
        for _ in range(runs):
            unit = plain(x)
            took, out = clock(fn, device)
            seconds.append(took)
            ratios.append(took / unit)
            parts.append({k: v / unit for k, v in out.items()} if isinstance(out, dict) else None)
        return statistics.median(seconds), statistics.median(ratios), parts

    yard = statistics.median(plain(images) for _ in range(args.repeat))
    print(f"bench-excel: device {device}, {args.threads} threads, batch {args.batch} x {args.crop}x{args.crop}, "
          f"decoder width {args.width}, 112 attribute clusters, 2 labels per image, LVC pass {args.lvc_pass}")
    print(f"  plain forward of the batch through the CLIP image tower: {yard:.3f} s (the unit below; each figure is "
          f"the median over {args.repeat} runs, each divided by a plain forward timed just before it)")
    for name, dynamic, late in PHASES:
        took, ratio, parts = interleaved(lambda: iteration(model, optimizer, images, labels, device, dynamic, late),
                                         images, args.repeat)
        print(f"  training iteration, {name} phase: {took:.3f} s = {ratio:.2f} plain forwards")
        for key in parts[0]:
            value = statistics.median(p[key] for p in parts)
            print(f"    {key:<24}{value:5.2f} fw")
    model.eval()
    h, w = 375, 500
    photo = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image = normalize_image(photo).to(device)
    one = torch.nn.functional.interpolate(image, size=(args.crop, args.crop), mode="bilinear", align_corners=False)
    one_forward = statistics.median(plain(one) for _ in range(args.repeat))
    print(f"  plain forward of one {args.crop}x{args.crop} image: {one_forward:.3f} s (the unit below)")
    for crf in (False, True):
        def predict():
            logits = model.predict_logits(image)[0]
            if not crf:
                return logits.argmax(dim=0)
            return crf_label(photo, torch.softmax(logits, dim=0).cpu().numpy())

        took, ratio, _ = interleaved(predict, one, max(args.predict_images, 1))
        print(f"  predict-excel per 375x500 image, {'with' if crf else 'without'} CRF: {took:.3f} s "
              f"= {ratio:.2f} plain forwards")
    free = [lambda: model.training_free(image, labels[0], (h, w), args.crop),
            lambda: model.cams(model.clip(one))]
    for what, fn in zip(("CAMs, refinement and PAR label", "CAMs only (--no-labels)"), free):
        took, ratio, _ = interleaved(fn, one, args.repeat)
        print(f"  cams-excel per 375x500 image, {what}: {took:.3f} s = {ratio:.2f} plain forwards")
    if device.type == "cuda":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(f"  peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
