"""``clipes refine``: stage 2, CAA-refined maps, CRF pseudo masks and confidence maps."""

from __future__ import annotations

import sys

import click

from clipes.clip_es.refine_runner import ATTENTION_SOURCES, RefineOptions, run_refine
from clipes.data.datasets import DATASETS
from clipes.maps.crf import CRF_COLORS, CrfParams
from stages.common import PATH, only_set

_CRF = {  # CLI name -> CrfParams field
    "crf_iterations": "iterations", "crf_gaussian_sxy": "gaussian_sxy", "crf_gaussian_compat": "gaussian_compat",
    "crf_bilateral_sxy": "bilateral_sxy", "crf_bilateral_srgb": "bilateral_srgb",
    "crf_bilateral_compat": "bilateral_compat", "crf_color": "color", "crf_fp16": "fp16_probs", "bg_power": "bg_power",
}


@click.command("refine")
@click.option("--work", type=PATH, required=True, help="Work folder holding cams/ (from clipes cams).")
@click.option("--out", type=PATH, help="Where refined/, masks/, confidence/ go [WORK].")
@click.option("--dataset", type=click.Choice(DATASETS), help="Expected dataset [the cams manifest's].")
@click.option("--data-root", type=PATH, help="Dataset folder [the cams manifest's].")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT [as for cams].")
@click.option("--split", type=PATH, help="Ids to refine [every image with a cams file].")
@click.option("--clip", "clip_source", help="CLIP for recomputing attention [the one that made the cams].")
@click.option("--device", help="cpu (default), cuda or cuda:N for attention and CAA.")
@click.option("--batch", "batch_size", type=int, help="Same-size images per attention forward [1 CPU, 8 GPU].")
@click.option("--jobs", type=int, help="Parallel CRF processes [1].")
@click.option("--layers", "attention_layers", type=int, help="Final blocks whose attention is averaged [8].")
@click.option("--sinkhorn-rounds", type=int, help="Sinkhorn normalisation rounds [3].")
@click.option("--affinity-power", type=int, help="Matrix power of the affinity [2].")
@click.option("--box-threshold", type=float, help="Box threshold as a fraction of the CAM max [VOC 0.4, COCO 0.7].")
@click.option("--attention", type=click.Choice(ATTENTION_SOURCES), help="Attention from cache or recomputed [auto].")
@click.option("--crf/--no-crf", default=None, help="Dense CRF [on].")
@click.option("--crf-iterations", type=int, help="CRF mean-field iterations [10].")
@click.option("--crf-gaussian-sxy", type=float, help="Gaussian kernel sxy [1].")
@click.option("--crf-gaussian-compat", type=float, help="Gaussian kernel compat [3].")
@click.option("--crf-bilateral-sxy", type=float, help="Bilateral kernel sxy [67].")
@click.option("--crf-bilateral-srgb", type=float, help="Bilateral kernel srgb [3].")
@click.option("--crf-bilateral-compat", type=float, help="Bilateral kernel compat [4].")
@click.option("--crf-color", type=click.Choice(CRF_COLORS), help="Bilateral colour image: reference quirk or rgb [reference].")
@click.option("--crf-fp16/--crf-fp32", default=None, help="Probabilities and unary in float16 like the reference [on].")
@click.option("--bg-power", type=float, help="Background score (1 - max)^p [1].")
@click.option("--confidence", type=float, help="Mask pixels with confidence below this become 255 [0.95].")
@click.option("--force", is_flag=True, default=None, help="Recompute all, even over files made another way.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def refine(**options):
    """Class-aware attention affinity, dense CRF and the confidence rule (CLIP-ES, stage 2)."""
    options = only_set(**options)
    if "clip_source" in options:
        options["clip"] = options.pop("clip_source")
    crf = {_CRF[name]: options.pop(name) for name in list(options) if name in _CRF}
    summary = run_refine(RefineOptions(crf_params=CrfParams(**crf), **options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
