"""``clipes demo`` / ``demo-data`` / ``demo-model``: the bundled end-to-end example and its makers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stages.common import PATH, only_set

_REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = _REPO / "demo" / "clip_demo_vit16.pt"
DEMO_DINO = _REPO / "demo" / "dino_demo_vit14.pth"
TINY_CONFIG = _REPO / "segmenter_configs" / "deeplabv2_r18-tiny_1xb8-300_pseudo-64x64.py"


@click.command("demo")
@click.option("--work", type=PATH, default=Path("work/demo"), show_default=True, help="Work folder.")
@click.option("--clip", type=PATH, help=f"Demo CLIP checkpoint [{DEMO_CLIP.relative_to(_REPO)}].")
@click.option("--dino", type=PATH, help=f"Demo DINOv2 checkpoint (WeCLIP+) [{DEMO_DINO.relative_to(_REPO)}].")
@click.option("--seg-config", type=PATH, help=f"Segmenter config [{TINY_CONFIG.relative_to(_REPO)}].")
@click.option("--train", type=int, help="Training scenes [240].")
@click.option("--val", type=int, help="Held-out scenes [60].")
@click.option("--seg-iters", type=int, help="Segmenter iterations [the config's: 300].")
@click.option("--layers", "attention_layers", type=int,
              help="Final blocks whose attention CAA averages [1: the demo CLIP's last; 8 suits ViT-B/16].")
@click.option("--sinkhorn-rounds", type=int,
              help="CAA's Sinkhorn rounds [0: the demo CLIP's last-block attention as it is; 3 suits ViT-B/16].")
@click.option("--affinity-power", type=int, help="CAA's matrix power of the affinity [1; 2 suits ViT-B/16].")
@click.option("--weclip-iters", type=int, help="WeCLIP decoder iterations [50]; 0 skips the WeCLIP row.")
@click.option("--weclipplus-iters", type=int, help="WeCLIP+ iterations [50]; 0 skips the WeCLIP+ row.")
@click.option("--weakclip-iters", type=int, help="WeakCLIP iterations [200]; 0 skips the WeakCLIP row.")
@click.option("--excel-iters", type=int, help="ExCEL iterations [50]; 0 skips both ExCEL rows.")
@click.option("--jobs", type=int, help="CRF worker processes [2].")
@click.option("--progress/--no-progress", default=None, help="Progress bars [on].")
def demo(work, clip, dino, seg_config, **options):
    """Run cams -> refine -> train-seg -> predict -> eval -> viz, then WeCLIP, WeCLIP+, WeakCLIP and ExCEL, on the demo set."""
    from clipes.demo.pipeline import DemoOptions, run_demo

    run_demo(DemoOptions(work=work, clip=clip or DEMO_CLIP, dino=dino or DEMO_DINO,
                         seg_config=seg_config or TINY_CONFIG, **only_set(**options)), echo=click.echo)


@click.command("demo-data")
@click.option("--out", type=PATH, required=True, help="Dataset folder (VOC layout).")
@click.option("--train", type=int, default=240, show_default=True, help="Training scenes.")
@click.option("--val", type=int, default=60, show_default=True, help="Held-out scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Offset added to every scene seed.")
def demo_data(out, train, val, seed):
    """Write the demo dataset (deterministic) in VOC layout."""
    from clipes.demo.demo_data import write_voc_dataset

    info = write_voc_dataset(out, train, val, seed)
    click.echo(f"demo-data: {json.dumps(info['splits'])} -> {out}")


@click.command("demo-model")
@click.option("--out", type=PATH, default=DEMO_CLIP, show_default=True, help="Checkpoint to write.")
@click.option("--steps", type=int, help="Optimiser steps [400].")
@click.option("--batch-size", type=int, help="Pairs per step [64].")
@click.option("--lr", type=float, help="Peak learning rate [1e-3].")
@click.option("--seed", type=int, help="Weight initialisation seed [0].")
@click.option("--threads", type=int, help="torch CPU threads [torch's default].")
def demo_model(out, **options):
    """Train the demo CLIP contrastively on generated scenes and captions (resumable)."""
    from clipes.demo.demo_clip import TrainOptions, train_demo_clip

    summary = train_demo_clip(out, TrainOptions(**only_set(**options)), echo=click.echo)
    click.echo("demo-model: " + json.dumps({k: summary[k] for k in ("final_loss", "probe_accuracy", "seconds")}))


@click.command("demo-dino")
@click.option("--out", type=PATH, default=DEMO_DINO, show_default=True, help="Where to write the checkpoint.")
@click.option("--clip", type=PATH, default=DEMO_CLIP, show_default=True, help="The teacher: the demo CLIP.")
@click.option("--steps", type=int, help="Optimiser steps [400].")
@click.option("--batch-size", type=int, help="Scenes per step [32].")
@click.option("--threads", type=int, help="torch CPU threads [torch's default].")
def demo_dino(out, clip, **options):
    """Distil the demo DINOv2 (WeCLIP+'s second backbone) from the demo CLIP on generated scenes (resumable)."""
    from clipes.demo.demo_dino import TrainOptions, train_demo_dino

    summary = train_demo_dino(out, clip, TrainOptions(**only_set(**options)), echo=click.echo)
    click.echo("demo-dino: " + json.dumps({k: summary[k] for k in ("final_loss", "held_out_cosine", "seconds")}))
