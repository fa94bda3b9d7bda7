"""Stages 1-2 as a user runs them: the real commands at two split sizes, marginal cost per image.

Builds the ``bench_cams.py`` model (a ViT-B/16-sized random CLIP saved as an fp16 OpenAI state
dict) and a VOC-layout folder of synthetic 500x375 JPEGs with 2 labels each, then runs, as
separate processes exactly as typed on a shell:

* ``clipes cams`` (the CAMs alone);
* ``clipes cams --save-affinity`` (the CAMs plus the attention cache refine reads);
* ``clipes refine --no-crf`` (CAA: the maps the original CLIP-ES CAM stage writes);
* ``clipes refine --jobs J`` (CAA + dense CRF + confidence rule) for each J of ``--crf-jobs``, in
  other output folders, once after the rounds;

each on the first ``--small`` and on all ``--large`` images, in fresh work folders. The machine's
speed drifts by several percent over minutes (a virtual machine sharing its host), more than the
margins measured here, so the runs are interleaved with the yardstick: ``--rounds`` rounds, each
timing the plain forward (in this process, on 8 of the images, median) before the first command
and after each command's pair of runs. A command's figure in a round is its marginal seconds per
additional image ``(t(large) - t(small)) / (large - small)`` divided by the mean of the two
yardsticks around it; the table gives the median over rounds and the range. The same is done with
CPU seconds (user + system of the command's process against the forward's process time): less
sensitive to other load on the machine, but it also counts the threads' spinning. Also printed:
the start-up seconds ``t(small) - small * marginal`` and the peak resident memory of the command's
process. ``cams --save-affinity`` + ``refine --no-crf`` (summed per round) is the figure to set
against the original CAM stage.

Usage: ``python benchmarks/bench_pipeline.py [--device cuda] [--small 16] [--large 48] [--rounds 3]
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
from dataclasses import dataclass
from pathlib import Path

import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.vit import DenseViT
from clipes.data.images import load_image, to_clip_tensor

from bench_cams import make_checkpoint, make_images, sync

LABELS = ("cat", "dog")
COMMANDS = ("cams", "cams --save-affinity", "refine --no-crf")
BOTH = "cams --save-affinity + refine --no-crf"
# Runs a command as its child and reports the child's peak RSS (ru_maxrss, KiB on Linux) and CPU
# seconds on stderr.
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
         "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print(f'PEAK_RSS_KB {u.ru_maxrss} CPU_S {u.ru_utime + u.ru_stime}', file=sys.stderr); sys.exit(r)")


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds
    peak_gb: float
    steady: float  # seconds per image between the first and the last output file written


def steady_seconds(outputs: Path, step: int) -> float:
    """``(mtime(last) - mtime(first)) / (n - step)`` over a command's n output files, written
    ``step`` at a time (a batch or a chunk): its per-image rate once running, free of the start-up
    that the two-size difference must cancel."""
    times = sorted(path.stat().st_mtime for path in outputs.iterdir() if not path.name.startswith(".")
                   and path.suffix in (".npz", ".png"))
    return (times[-1] - times[0]) / (len(times) - step) if len(times) > step else float("nan")


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


def run(args: list, outputs: Path, step: int, threads: int) -> Run:
    """``clipes *args`` in its own process: wall and CPU seconds, peak RSS, rate from ``outputs``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", _WRAP, sys.executable, "-m", "stages.cli", *map(str, args)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"clipes {' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    fields = next(line.split() for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return Run(seconds, float(fields[3]), int(fields[1]) / 1024 ** 2, steady_seconds(outputs, step))


class Yardstick:
    """The plain forward of the image tower, timed in this process on a few of the images."""

    def __init__(self, checkpoint: Path, paths: list[Path], device: torch.device):
        self.device = device
        self.vit = DenseViT(load_clip(str(checkpoint), device).model.visual)
        self.tensors = [to_clip_tensor(load_image(p)[0], 16)[None].to(device) for p in paths]
        self.vit.plain_forward(self.tensors[0])
        self.history: list[tuple[float, float]] = []

    def measure(self) -> tuple[float, float]:
        """Median (wall, CPU) seconds of one forward; also kept in ``history``."""
        walls, cpus = [], []
        for tensor in self.tensors:
            sync(self.device)
            wall, cpu = time.perf_counter(), time.process_time()
            self.vit.plain_forward(tensor)
            sync(self.device)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        self.history.append((statistics.median(walls), statistics.median(cpus)))
        return self.history[-1]


def default_batch(gpu: bool) -> int:
    """The commands' default batch: 8 images on a GPU, 1 on the CPU."""
    return 8 if gpu else 1


def refine_step(jobs: int, gpu: bool) -> int:
    """How many images refine writes at a time: its chunk, 4 x JOBS or the batch."""
    return max(4 * jobs, default_batch(gpu))


def command(name: str, tmp: Path, checkpoint: Path, split: Path, work: Path, common: list, gpu: bool
            ) -> tuple[list, Path, int]:
    """Arguments of one of ``COMMANDS``, the folder whose files time its steady rate, and how many
    images it writes at a time."""
    if name.startswith("cams"):
        extra = ["--save-affinity"] if "--save-affinity" in name else []
        return (["cams", "--dataset", "voc12", "--data-root", tmp / "voc", "--split", split, "--clip", checkpoint,
                 "--work", work, *extra, *common], work / "cams", default_batch(gpu))
    return ["refine", "--work", work, "--no-crf", *common], work / "masks", refine_step(1, gpu)


def spread(values: list[float], digits: int = 3) -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


@dataclass
class Row:
    """One command in one round; ratios are in plain forwards (the yardsticks around it)."""

    marginal: float  # s per additional image, (t(large) - t(small)) / (large - small)
    ratio: float
    cpu_ratio: float
    steady: float  # s per image from the large run's output files
    steady_ratio: float
    startup: float
    peak_gb: float


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, here and in the commands")
    parser.add_argument("--small", type=int, default=16)
    parser.add_argument("--large", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three commands")
    parser.add_argument("--crf-jobs", default="1", help="comma-separated JOBS values for the CRF runs")
    parser.add_argument("--skip-crf", action="store_true", help="skip the refine runs with the CRF")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    extra = args.large - args.small
    gpu = device.type == "cuda"
    common = ["--device", args.device, "--no-progress"]
    rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp)
        ids = make_voc(tmp / "voc", make_images(tmp, args.large))
        splits = {}
        for count in (args.small, args.large):
            splits[count] = tmp / f"split{count}.txt"
            splits[count].write_text("".join(f"{i}\n" for i in ids[:count]))
        yardstick = Yardstick(checkpoint, sorted((tmp / "voc" / "JPEGImages").glob("*.jpg"))[:8], device)

        def pair(name: str, command_for) -> None:
            """Both sizes of one command, then the yardstick; one Row."""
            before = yardstick.history[-1]
            runs = {count: run(*command_for(count), args.threads) for count in (args.small, args.large)}
            after = yardstick.measure()
            wall_fwd, cpu_fwd = ((b + a) / 2 for b, a in zip(before, after))
            small, large = runs[args.small], runs[args.large]
            marginal = (large.wall - small.wall) / extra
            rows.setdefault(name, []).append(Row(
                marginal, marginal / wall_fwd, (large.cpu - small.cpu) / extra / cpu_fwd, large.steady,
                large.steady / wall_fwd, small.wall - args.small * marginal, max(small.peak_gb, large.peak_gb)))

        yardstick.measure()
        for round_index in range(args.rounds):
            works = {count: tmp / f"work{count}-{round_index}" for count in (args.small, args.large)}
            for name in COMMANDS:
                folder = "plain" if name == "cams" else "work"  # refine reads cams --save-affinity's folder
                pair(name, lambda count: command(name, tmp, checkpoint, splits[count],
                                                 tmp / f"{folder}{count}-{round_index}", common, gpu))
            line = ", ".join(f"{name} {rows[name][-1].ratio:.3f} ({rows[name][-1].steady_ratio:.3f})"
                             for name in COMMANDS)
            print(f"round {round_index + 1}, forwards (steady): {line}; yardstick {yardstick.history[-1][0]:.3f} s",
                  flush=True)
        for jobs in ([] if args.skip_crf else [int(j) for j in args.crf_jobs.split(",")]):
            pair(f"refine (CRF, JOBS={jobs})", lambda count: (
                ["refine", "--work", works[count], "--out", tmp / f"crf{count}-{jobs}", "--jobs", jobs, *common],
                tmp / f"crf{count}-{jobs}" / "masks", refine_step(jobs, gpu)))

    nan = float("nan")
    rows[BOTH] = [Row(a.marginal + b.marginal, a.ratio + b.ratio, a.cpu_ratio + b.cpu_ratio, a.steady + b.steady,
                      a.steady_ratio + b.steady_ratio, nan, nan)
                  for a, b in zip(rows["cams --save-affinity"], rows["refine --no-crf"])]
    walls = [w for w, _ in yardstick.history]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nbench-pipeline: the commands on {args.small} and {args.large} images 500x375 ({len(LABELS)} labels "
          f"each), ViT-B/16-sized random CLIP, {name}, {args.rounds} interleaved round(s)")
    print(f"plain forward of the image tower (yardstick, {len(walls)} times): {spread(walls)} s per image")
    print("forwards = seconds per additional image / the yardstick around the runs; median [range] over rounds\n")
    print(f"{'command':<40}{'s/img':>7}{'forwards':>22}{'CPU':>7}{'steady s/img':>13}{'steady fwd':>22}"
          f"{'startup s':>10}{'peak GB':>8}")
    for key, values in rows.items():
        tail = "" if key == BOTH else f"{statistics.median(v.startup for v in values):>10.1f}" \
                                      f"{max(v.peak_gb for v in values):>8.2f}"
        print(f"{key:<40}{statistics.median(v.marginal for v in values):>7.3f}{spread([v.ratio for v in values]):>22}"
              f"{statistics.median(v.cpu_ratio for v in values):>7.3f}{statistics.median(v.steady for v in values):>13.3f}"
              f"{spread([v.steady_ratio for v in values]):>22}{tail}")
    print("\nCPU: the same ratio in CPU seconds; steady: from the first to the last output file of the large run "
          "(start-up excluded)")
    if device.type == "cuda":
        print()
        for key, values in rows.items():
            print(f"{key}: {1.0 / statistics.median(v.steady for v in values):.1f} images/s (steady)")


if __name__ == "__main__":
    main()
