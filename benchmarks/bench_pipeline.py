"""Stages 1-2 as a user runs them: the real commands at two split sizes, marginal cost per image.

Builds the ``bench_cams.py`` model (a ViT-B/16-sized random CLIP saved as an fp16 OpenAI state
dict) and a VOC-layout folder of synthetic 500x375 JPEGs with 2 labels each, then runs, as
separate processes exactly as typed on a shell:

* ``clipes cams`` (the CAMs alone);
* ``clipes cams --save-affinity`` (the CAMs plus the attention cache refine reads);
* ``clipes refine --no-crf`` (CAA: the maps the original CLIP-ES CAM stage writes);
* ``clipes refine --jobs J`` (CAA + dense CRF + confidence rule) for each J of ``--crf-jobs``, in
  other output folders;

each on the first ``--small`` and on all ``--large`` images, in fresh work folders, ``--repeat``
times (the CRF runs once), keeping the fastest of the repeats (the run least disturbed by the
machine's other load). For each it prints the wall seconds at both sizes, the marginal seconds per
additional image ``(t(large) - t(small)) / (large - small)``, the same in plain forwards of the
image tower (timed in this process on the same images before and after the commands; the lower
median is the yardstick), the start-up seconds ``t(small) - small * marginal``, and the peak
resident memory of the command's process. ``cams + refine --no-crf`` is the figure to set against
the original CAM stage.

Usage: ``python benchmarks/bench_pipeline.py [--device cuda] [--small 16] [--large 48] [--repeat 1]
[--threads 2] [--crf-jobs 1,2] [--skip-crf]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_cams import make_checkpoint, make_images, timed
from clipes.clip_loader import load_clip
from clipes.images import load_image, to_clip_tensor
from clipes.vit import DenseViT

LABELS = ("cat", "dog")
# Runs a command as its child and reports the child's peak RSS (ru_maxrss, KiB on Linux) on stderr.
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
         "print(f'PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
         "sys.exit(r)")


def make_voc(root: Path, paths: list[Path]) -> list[str]:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    ids = []
    for path in paths:
        path.rename(root / "JPEGImages" / path.name)
        objects = "".join(f"<object><name>{name}</name></object>" for name in LABELS)
        (root / "Annotations" / f"{path.stem}.xml").write_text(f"<annotation>{objects}</annotation>")
        ids.append(path.stem)
    return ids


def run(args: list[str], threads: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``clipes *args`` in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", _WRAP, sys.executable, "-m", "stages.cli", *map(str, args)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"clipes {' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return seconds, peak / 1024 ** 2


def forward_seconds(checkpoint: Path, paths: list[Path], device: torch.device) -> float:
    """Median seconds of one plain forward of the image tower per image (the yardstick)."""
    vit = DenseViT(load_clip(str(checkpoint), device).model.visual)
    tensors = [to_clip_tensor(load_image(p)[0], 16)[None].to(device) for p in paths]
    vit.plain_forward(tensors[0])
    return statistics.median(timed(lambda: vit.plain_forward(t), device)[0] for t in tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, here and in the commands")
    parser.add_argument("--small", type=int, default=16)
    parser.add_argument("--large", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=1, help="runs of cams and refine --no-crf per size (fastest kept)")
    parser.add_argument("--crf-jobs", default="1", help="comma-separated JOBS values for the CRF runs")
    parser.add_argument("--skip-crf", action="store_true", help="skip the refine run with the CRF")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp)
        ids = make_voc(tmp / "voc", make_images(tmp, args.large))
        images = sorted((tmp / "voc" / "JPEGImages").glob("*.jpg"))[:8]
        forwards = [forward_seconds(checkpoint, images, device)]
        rows = {}
        for count in (args.small, args.large):
            split = tmp / f"split{count}.txt"
            split.write_text("".join(f"{i}\n" for i in ids[:count]))
            common = ["--device", args.device, "--no-progress"]
            runs = {"cams": [], "cams --save-affinity": [], "refine --no-crf": []}
            for repeat in range(args.repeat):
                work = tmp / f"work{count}-{repeat}"
                runs["cams"].append(run(
                    ["cams", "--dataset", "voc12", "--data-root", tmp / "voc", "--split", split, "--clip", checkpoint,
                     "--work", tmp / f"plain{count}-{repeat}", *common], args.threads))
                runs["cams --save-affinity"].append(run(
                    ["cams", "--dataset", "voc12", "--data-root", tmp / "voc", "--split", split, "--clip", checkpoint,
                     "--work", work, "--save-affinity", *common], args.threads))
                runs["refine --no-crf"].append(run(["refine", "--work", work, "--no-crf", *common], args.threads))
            for jobs in ([] if args.skip_crf else [int(j) for j in args.crf_jobs.split(",")]):
                runs[f"refine (CRF, JOBS={jobs})"] = [run(["refine", "--work", work, "--out", tmp / f"crf{count}-{jobs}",
                                                           "--jobs", jobs, *common], args.threads)]
            for key, values in runs.items():
                rows.setdefault(key, []).append((min(v[0] for v in values), max(v[1] for v in values)))
        forwards.append(forward_seconds(checkpoint, images, device))
        forward = min(forwards)

    extra = args.large - args.small
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nbench-pipeline: the commands on {args.small} and {args.large} images 500x375 ({len(LABELS)} labels "
          f"each), ViT-B/16-sized random CLIP, {name}")
    print(f"plain forward of the image tower: {forward:.3f} s per image (median in-process; {forwards[0]:.3f} before "
          f"the commands, {forwards[1]:.3f} after)\n")
    print(f"{'command':<26}{'t(' + str(args.small) + ') s':>9}{'t(' + str(args.large) + ') s':>9}"
          f"{'s/img':>8}{'forwards':>10}{'startup s':>11}{'peak GB':>9}")
    marginal = {}
    for key, ((t_small, m_small), (t_large, m_large)) in rows.items():
        marginal[key] = (t_large - t_small) / extra
        print(f"{key:<26}{t_small:>9.1f}{t_large:>9.1f}{marginal[key]:>8.3f}{marginal[key] / forward:>10.3f}"
              f"{t_small - args.small * marginal[key]:>11.1f}{max(m_small, m_large):>9.2f}")
    both = marginal["cams --save-affinity"] + marginal["refine --no-crf"]
    print(f"{'cams + refine --no-crf':<26}{'':>9}{'':>9}{both:>8.3f}{both / forward:>10.3f}")
    if device.type == "cuda":
        for key, value in marginal.items():
            print(f"{key}: {1.0 / value:.1f} images/s")


if __name__ == "__main__":
    main()
