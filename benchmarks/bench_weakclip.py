"""WeakCLIP speed: one training iteration split into its parts, and masks-weakclip per image.

The released VOC config (segmenter_configs/weakclip/, 512 crops, co-attention 256, FPN 256, 21
classes) on a ViT-B/16-sized random CLIP (as ``bench_cams.py``), random seeds with a 255 band.
Prints seconds for one training iteration, split into:

* the image encoder (CLIP blocks, taps, embeddings), the text encoder (prompt learner + 12 text
  blocks), adapter + co-attention + score map + FPN neck + FPN head, the losses with the CRF target
  (resize, softmax, cues, the per-image dense CRF on the 64 x 64 grid), and backward + AdamW
  (through the whole CLIP, as the reference's lr_mult-0 groups need; ``--frozen-clip``: not);

then training images per second, peak memory, and ``masks-weakclip`` seconds per 375 x 500 image
(12 views: 6 ratios x flip, slide 512 / 341, softmax average) without and with the CRF.
Usage: ``python benchmarks/bench_weakclip.py [--device cuda] [--batch 8] [--repeat 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipes.maps.crf import read_crf_image
from clipes.weakclip import inference, losses
from clipes.weakclip.coattention import match, pyramid_inputs
from clipes.weakclip.options import VOC_CONFIG

from bench_cams import make_checkpoint, make_images
from bench_cams import timed as clock


def build(clip: Path, device, frozen: bool):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    import clipes.mmseg_ext  # noqa: F401
    from clipes.mmseg_ext.runner import load_config

    cfg = load_config(VOC_CONFIG)
    model_cfg = dict(cfg.model, clip=str(clip), adapter_norm="BN", frozen_clip=frozen)
    model_cfg["decode_head"] = dict(model_cfg["decode_head"], norm_cfg=dict(type="BN", requires_grad=True))
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(model_cfg)
    return model.to(device), cfg


def iteration(model, optimizer, images, seeds, mean, std, device) -> dict:
    parts = {}
    parts["image encoder"], (adapted_in, g, visual) = clock(lambda: model.backbone.encode(images), device)
    b = images.shape[0]

    def adapter_to_head():
        adapted = [op(f) for op, f in zip((model.backbone.fpn1, model.backbone.fpn2, model.backbone.fpn3,
                                           model.backbone.fpn4), adapted_in)]
        score = match(text.expand(b, -1, -1), g, visual, model.context_decoder, model.gamma, model.beta)[0]
        return model.decode_head(model.neck(pyramid_inputs(adapted, score))), score

    parts["text encoder"], text = clock(model.text_embeddings, device)
    parts["adapter + co-attention + decoder"], (logits, score) = clock(adapter_to_head, device)

    def loss():
        return losses.weakclip_losses(logits, score, seeds, images, mean, std, model.feature_size, model.tau,
                                      model.id_weight)

    parts["losses + CRF target"], out = clock(loss, device)

    def backward():
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    parts["backward + AdamW"], _ = clock(backward, device)
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="crops per iteration [2 on CPU, 8 (the release's per GPU) on cuda]")
    parser.add_argument("--repeat", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--masks-images", type=int, default=1, help="images for the masks-weakclip timing")
    parser.add_argument("--frozen-clip", action="store_true", help="exactly frozen CLIP (no backward through it)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (8 if device.type == "cuda" else 2)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_checkpoint(Path(tmp))
        paths = make_images(Path(tmp), max(args.masks_images, 1))
        model, cfg = build(clip, device, args.frozen_clip)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        import logging

        from mmengine.logging import MMLogger
        from mmengine.optim import build_optim_wrapper

        MMLogger.get_instance("mmengine").setLevel(logging.ERROR)  # one line per parameter group otherwise
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        optimizer = wrapper.optimizer
        mean = cfg.model.data_preprocessor.mean
        std = cfg.model.data_preprocessor.std
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, 512, 512, generator=gen).to(device)
        seeds = torch.zeros(batch, 1, 512, 512, dtype=torch.long)
        seeds[:, :, 128:384, 128:384] = 15
        seeds[:, :, 120:136, :] = 255
        seeds = seeds.to(device)
        print(f"bench-weakclip: device {device}, {args.threads} threads, batch {batch} x 512x512, ViT-B/16-sized "
              f"random CLIP, released VOC config (BN for SyncBN), CLIP {'frozen' if args.frozen_clip else 'trained'}")
        iteration(model, optimizer, images, seeds, mean, std, device)  # warm-up
        runs = [iteration(model, optimizer, images, seeds, mean, std, device) for _ in range(args.repeat)]
        names = list(runs[0])
        total = [sum(r.values()) for r in runs]
        step = statistics.median(total)
        for name in names:
            print(f"  {name:<36}{statistics.median(r[name] for r in runs):8.3f} s")
        print(f"  {'training iteration':<36}{step:8.3f} s   ({batch / step:.2f} images/s; paper: 16.8 FPS on GPUs)")
        if device.type == "cuda":
            print(f"  peak GPU memory (training): {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
                  f"(paper: 9.7 GiB per GPU at batch 8)")
        model.eval()
        for crf in (False, True):
            params = inference.VOC_CRF if crf else None
            seconds = []
            for path in paths[:args.masks_images]:
                bgr = np.ascontiguousarray(read_crf_image(path, "rgb")[:, :, ::-1])
                start = time.perf_counter()
                mean_softmax = inference.average_softmax(model.encode_decode, bgr, model.num_classes, 512, 341,
                                                         device=device).cpu().numpy()
                inference.crf_mask(np.ascontiguousarray(bgr[:, :, ::-1]), mean_softmax, params)
                seconds.append(time.perf_counter() - start)
            label = "masks-weakclip, 12 views" + (" + CRF" if crf else ", no CRF")
            print(f"  {label:<36}{statistics.median(seconds):8.3f} s per 375x500 image")
    print(f"  peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
