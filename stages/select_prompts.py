"""``clipes select-prompts``: rank a template pool by sharpness (spec section 7)."""

from __future__ import annotations

from pathlib import Path

import click

from clipes.clip_es.prompt_select import AGGREGATES, FEATURES, SOFTMAX_OVER
from stages.common import PATH, only_set


@click.command("select-prompts")
@click.option("--dataset", type=click.Choice(["voc12", "coco14", "custom"]), required=True)
@click.option("--data-root", type=PATH, required=True, help="Dataset folder (as for cams).")
@click.option("--split", type=PATH, required=True, help="Labelled images to score on.")
@click.option("--clip", required=True, help="OpenAI model name or checkpoint path.")
@click.option("--out", type=PATH, default=Path("prompt_selection.tsv"), show_default=True,
              help="Ranking table (TSV; a JSON with the same stem is written beside it).")
@click.option("--pool", type=PATH, help="Template file [prompts/templates.txt: CLIP's 80 + a clean origami {}.].")
@click.option("--n-images", type=int, help="Use the first n images of the split [all].")
@click.option("--softmax-over", type=click.Choice(SOFTMAX_OVER), help="Softmax over the classes, or classes "
              "plus background prompts [classes].")
@click.option("--aggregate", type=click.Choice(AGGREGATES), help="sum_i var/mean, or sum var / sum mean "
              "[sum-of-ratios].")
@click.option("--feature", type=click.Choice(FEATURES), help="Image feature [patch-mean, the CAM stage's].")
@click.option("--classes", "class_file", type=PATH, help="Class file [the dataset's].")
@click.option("--background", "background_file", type=PATH, help="Background prompt file [the dataset's].")
@click.option("--labels", "labels_file", type=PATH, help="voc12: labels from a plain file instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT [dataset default].")
@click.option("--synonyms", type=click.Choice(["joined", "split"]), help="Synonym handling [joined].")
@click.option("--device", help="cpu or cuda [cpu].")
@click.option("--progress/--no-progress", default=None, help="Progress bar [on].")
def select_prompts(**options):
    """Rank every template of a pool by sharpness (lower first), with zero-shot mAP beside it."""
    from clipes.clip_es.prompt_select import SelectOptions, run_select_prompts

    run_select_prompts(SelectOptions(**only_set(**options)), echo=click.echo)
