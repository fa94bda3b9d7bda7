"""Stage-2 speed: CAA (attention + affinity) per device and the dense CRF at several job counts.

Uses the same ViT-B/16-sized random CLIP and synthetic 500x375 images as ``bench_cams.py``, two
labels per image (their GradCAMs are computed first, untimed), and prints seconds per image for:

* ``attention (recompute)``: the gradient-free forward that yields the last 8 blocks' attention;
* ``attention (cache read)``: reading the float16 cache written by ``cams --save-affinity``;
* ``affinity + CAA``: Sinkhorn, symmetrise, square, boxes, propagation and resize (2 labels);
* ``CRF``: pydensecrf with the reference's settings, JOBS = 1, 2, ... (wall time / images), on the
  noisy synthetic images and on the same images blurred (closer to photos: the permutohedral
  lattice of the bilateral term grows with the number of distinct colours).

Usage: ``python benchmarks/bench_refine.py [--device cuda] [--images 8] [--threads 2]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.text import encode_prompts
from clipes.backbones.vit import DenseViT
from clipes.clip_es.refine_runner import _crf_pool, _Ready
from clipes.data.images import load_image, to_clip_tensor
from clipes.data.prompts import DEFAULT_TEMPLATE, builtin_path, load_background_file, load_class_file
from clipes.maps.caa import affinity_from_attention, refine_cams
from clipes.maps.crf import CrfParams
from clipes.maps.gradcam import softmax_gradcam
from clipes.store import attncache
from clipes.store.halfcast import to_float16

from bench_cams import bench_parser, make_checkpoint, make_images, timed


def main():
    parser = bench_parser(__doc__)
    parser.add_argument("--max-jobs", type=int, default=os.cpu_count() or 1, help="largest CRF JOBS tried")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = {"attention (recompute)": [], "attention (cache read)": [], "affinity + CAA": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, args.images)
        model = load_clip(str(make_checkpoint(tmp)), device).model
        vit = DenseViT(model.visual)
        classes = load_class_file(builtin_path("voc12_classes.tsv"))
        fg = encode_prompts(model, list(classes.prompts[: args.labels]), [DEFAULT_TEMPLATE])
        bg = encode_prompts(model, load_background_file(builtin_path("voc12_background.txt")), [DEFAULT_TEMPLATE])
        ready = []
        for i, path in enumerate(paths):
            tensor = to_clip_tensor(load_image(path)[0], 16)[None].to(device)
            cams = softmax_gradcam(vit, tensor, [fg], bg, model.logit_scale)[0].cams.cpu().numpy()
            if i == 0:
                vit.mean_attention(tensor)  # warm-up
            seconds, attention = timed(lambda: vit.mean_attention(tensor)[0], device)
            rows["attention (recompute)"].append(seconds)
            cache = tmp / f"{i}.npz"
            attncache.write_attention(cache, attention.cpu().numpy(), cams.shape[1:])
            rows["attention (cache read)"].append(timed(lambda: attncache.read_attention(cache), device)[0])
            seconds, refined = timed(lambda: refine_cams(affinity_from_attention(attention, power=1), cams, (375, 500),
                                                         0.4, power=2),
                                     device)
            rows["affinity + CAA"].append(seconds)
            ready.append(_Ready(str(i), np.arange(args.labels), to_float16(refined), path))
        smooth = []
        for item in ready:  # the same scenes blurred: the CRF's cost grows with colour diversity
            path = tmp / f"smooth-{item.image_id}.png"
            cv2.imwrite(str(path), cv2.GaussianBlur(cv2.imread(str(item.image_path)), (0, 0), 3))
            smooth.append(_Ready(item.image_id, item.keys, item.maps, path))
        crf = {}
        for kind, items in (("noisy", ready), ("smooth", smooth)):
            for jobs in range(1, max(1, args.max_jobs) + 1):
                with _crf_pool(jobs, CrfParams(), True) as pool:
                    pool(items[:jobs])  # start the workers
                    start = time.perf_counter()
                    pool(items)
                    crf[kind, jobs] = (time.perf_counter() - start) / len(items)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nbench-refine: ViT-B/16-sized random CLIP, {args.images} images 500x375 (768 patches), "
          f"{args.labels} labels each, {name}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print(f"{'per image':<26}{'mean s':>9}{'median s':>10}")
    for key, values in rows.items():
        print(f"{key:<26}{statistics.mean(values):>9.4f}{statistics.median(values):>10.4f}")
    print("\nCRF wall time per image by JOBS (the reference quotes about 0.65 s with one job on a 2-core CPU,")
    print("on VOC photos; the CRF cost depends on the image's colour diversity, so both synthetic kinds are shown):")
    for (kind, jobs), seconds in crf.items():
        print(f"  {kind:<7} JOBS={jobs:<3}{seconds:>8.3f} s/image  ({crf[kind, 1] / seconds:.2f}x of JOBS=1)")
    cache_bytes = 2 * 768 * 768
    print(f"\nattention cache: {cache_bytes / 1e6:.2f} MB per 500x375 image (float16 768x768)")


if __name__ == "__main__":
    main()
