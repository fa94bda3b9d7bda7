"""Builders for small synthetic datasets, and running the ``clipes`` command, for several test modules."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import GOLDEN

CLIP = str(GOLDEN / "clip.pt")


def voc_xml(names: list[str], width: int = 64, height: int = 48) -> str:
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>")


def make_voc(root: Path, items: dict) -> Path:
    """``items``: id -> (PIL image or bytes or None, list of names or None). Writes a split file."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id, (image, names) in items.items():
        if isinstance(image, Image.Image):
            ext = ".jpg" if image.mode in ("RGB", "L") else ".png"
            image.save(root / "JPEGImages" / f"{image_id}{ext}")
        elif isinstance(image, bytes):
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(image)
        if names is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(names))
    split = root / "split.txt"
    split.write_text("\n".join(items) + "\n")
    return split


def copy_golden(root: Path, ids: list[str]) -> Path:
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copy(GOLDEN / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
        shutil.copy(GOLDEN / "Annotations" / f"{image_id}.xml", root / "Annotations")
    split = root / "split.txt"
    split.write_text("\n".join(ids) + "\n")
    return split


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(array, "RGB")


def clipes(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "stages.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def run_and_kill(args, folder, pattern, count=3):
    """Start ``clipes *args`` and SIGKILL it once ``folder`` holds ``count`` files matching ``pattern``."""
    process = subprocess.Popen([sys.executable, "-m", "stages.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(folder.glob(pattern))) < count and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def assert_one_line_each(result, reasons):
    """Each id has exactly one ``failed <id>: ...`` line containing its reason, and no traceback."""
    lines = result.stdout.splitlines()
    assert reasons
    for image_id, reason in reasons.items():
        matching = [line for line in lines if line.startswith(f"failed {image_id}:")]
        assert len(matching) == 1 and reason in matching[0], (image_id, lines)
    assert "Traceback" not in result.stdout + result.stderr


def cams_args(root, split, work, *extra):
    return ["cams", "--dataset", "voc12", "--data-root", root, "--split", split, "--clip", CLIP, "--work", work,
            "--no-progress", *extra]


def checkpoint_tensors(path: Path) -> dict:
    """Every tensor of a training checkpoint (weights and optimiser state), by name, read safely."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"state_dict.{k}": v for k, v in data["state_dict"].items()}
    for index, state in data.get("optimizer", {}).get("state", {}).items():
        for key, value in state.items():
            if hasattr(value, "shape"):
                out[f"optimizer.state.{index}.{key}"] = value
    assert out, f"{path} holds no tensor"
    return out


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Two checkpoints hold the same tensors bit for bit (weights and optimiser state)."""
    import torch

    left, right = checkpoint_tensors(a), checkpoint_tensors(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"{len(different)} of {len(left)} tensors differ, e.g. {different[:3]}"


def kill_and_resume(args, out: Path, kill_at: str, final: str):
    """Run ``clipes *args``, SIGKILL it once ``out/kill_at`` exists, then run it again to the end.

    Returns:
        The second run's ``CompletedProcess`` (it must have resumed and succeeded).
    """
    run_and_kill(args, out, kill_at, count=1)
    assert (out / kill_at).is_file() and not (out / final).exists(), "the run ended before it was killed"
    result = clipes(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    return result


def clipes_on_a_full_disk(folder: Path, pattern: str, after: int, *args):
    """``clipes *args`` in a process whose disk fills up under ``folder``: the ``after``-th and
    later writes of files whose name contains ``pattern`` fail with ENOSPC when flushed (a real
    full disk fails a write or its ``fsync``; clipes' atomic writes fsync every file)."""
    code = (
        "import errno, os, sys\n"
        "real, seen = os.fsync, [0]\n"
        f"FOLDER, PATTERN, AFTER = {str(folder)!r}, {pattern!r}, {int(after)}\n"
        "def fsync(fd):\n"
        "    path = os.readlink(f'/proc/self/fd/{fd}')\n"
        "    if path.startswith(FOLDER) and PATTERN in os.path.basename(path):\n"
        "        seen[0] += 1\n"
        "        if seen[0] > AFTER:\n"
        "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(fd)\n"
        "os.fsync = fsync\n"
        "sys.argv = ['clipes', *sys.argv[1:]]\n"
        "from stages.cli import main\n"
        "main()\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


def hold_in_another_process(folder: Path):
    """A process that holds ``folder`` as a running clipes run would, until it is killed."""
    code = ("import time\nfrom clipes.store.fsutil import hold_folder\n"
            f"hold_folder({str(folder)!r})\nprint('held', flush=True)\ntime.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def make_tiny_dino(path: Path, width: int = 32, depth: int = 2, heads: int = 2, patch: int = 14, grid: int = 5,
                   registers: int = 0, seed: int = 0) -> Path:
    """A random DINOv2 state dict in the hub's key layout (``dinov2_vits14_pretrain.pth``), with a
    ``<stem>_config.json`` naming its heads as the goldens' ``dino_config.json`` does."""
    import json

    import torch

    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    state = {"cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width, s=1.0),
             "mask_token": torch.zeros(1, width), "patch_embed.proj.weight": r(width, 3, patch, patch, s=0.05),
             "patch_embed.proj.bias": r(width), "norm.weight": 1 + r(width), "norm.bias": r(width)}
    if registers:
        state["register_tokens"] = r(1, registers, width)
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(width), b + "norm1.bias": r(width),
                      b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                      b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                      b + "ls1.gamma": 0.5 + r(width), b + "norm2.weight": 1 + r(width), b + "norm2.bias": r(width),
                      b + "mlp.fc1.weight": r(4 * width, width), b + "mlp.fc1.bias": r(4 * width),
                      b + "mlp.fc2.weight": r(width, 4 * width), b + "mlp.fc2.bias": r(width),
                      b + "ls2.gamma": 0.5 + r(width)})
    torch.save(state, path)
    Path(path).with_name(f"{Path(path).stem}_config.json").write_text(json.dumps({"num_heads": heads}))
    return Path(path)
