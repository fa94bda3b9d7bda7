"""``clipes export-npy`` / ``clipes import-npy``: CLIP-ES ``.npy`` CAM dicts in and out of a work folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipes.data.datasets import DATASETS
from clipes.data.prompts import default_class_file, load_class_file
from clipes.errors import InputError, UserError
from clipes.store import camstore, manifest
from clipes.store.interop import read_clipes_npy, write_clipes_npy
from stages.common import PATH


@click.command("export-npy")
@click.option("--work", type=PATH, required=True, help="Work folder with refined/.")
@click.option("--out", type=PATH, required=True, help="Folder for <id>.npy (CLIP-ES format: keys, attn_highres).")
def export_npy(work: Path, out: Path):
    """Write refined maps as CLIP-ES .npy dicts (pickles, for CLIP-ES's own scripts)."""
    folder = work.expanduser() / camstore.REFINED_STAGE
    ids = sorted(camstore.done_ids(folder))
    if not ids:
        raise UserError(f"no refined maps in {folder}: run clipes refine first")
    failed = 0
    for image_id in ids:
        try:
            stored = camstore.read_cam_file(camstore.cam_path(folder, image_id))
        except InputError as exc:
            click.echo(f"failed {image_id}: {exc}")
            failed += 1
            continue
        write_clipes_npy(out.expanduser() / f"{image_id}.npy", stored.keys, stored.cams)
    click.echo(f"export-npy: {len(ids) - failed} written, {failed} failed -> {out}")
    sys.exit(1 if failed else 0)


@click.command("import-npy")
@click.option("--npy-dir", type=PATH, required=True, help="Folder of CLIP-ES <id>.npy files.")
@click.option("--work", type=PATH, required=True, help="Work folder; writes <WORK>/refined.")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Dataset the keys index into.")
@click.option("--data-root", type=PATH, help="Dataset folder, recorded for clipes eval.")
@click.option("--classes", "class_file", type=PATH, help="Class file (needed for custom).")
@click.option("--allow-pickle", is_flag=True, help="Required: the .npy files are pickles; only for files you trust.")
def import_npy(npy_dir: Path, work: Path, dataset: str, data_root, class_file, allow_pickle: bool):
    """Read CLIP-ES .npy dicts into <WORK>/refined (to score or compare them with clipes eval)."""
    if not allow_pickle:
        raise UserError(f"the .npy files in {npy_dir} are pickled CLIP-ES dicts; reading them can run code from "
                        f"the files. Pass --allow-pickle if you trust them")
    if dataset == "custom" and class_file is None:
        raise UserError("DATASET=custom needs --classes")
    classes = load_class_file(class_file or default_class_file(dataset))
    files = sorted(npy_dir.expanduser().glob("*.npy"))
    if not files:
        raise UserError(f"no .npy files in {npy_dir}")
    folder = work.expanduser() / camstore.REFINED_STAGE
    header = {"command": manifest.command_line(), "input": {"imported_from": str(npy_dir.resolve())},
              "dataset": {"name": dataset, "data_root": str(data_root.resolve()) if data_root else None},
              "classes": list(classes.names), "format": camstore.REFINED_FORMAT}
    manifest.begin_run(folder, camstore.REFINED_STAGE, header,
                       manifest.identity_of({"imported_from": str(npy_dir.resolve()), "dataset": dataset}))
    failures = {}
    for path in files:
        try:
            keys, maps = read_clipes_npy(path, allow_pickle)
            if keys.size and (keys.min() < 0 or keys.max() >= len(classes.names)):
                raise InputError(f"{path}: class index out of range for {dataset}")
            camstore.write_cam_file(camstore.cam_path(folder, path.stem), keys, maps, maps.shape[1:], dtype="float16")
        except InputError as exc:
            failures[path.stem] = str(exc)
            click.echo(f"failed {path.stem}: {exc}")
    manifest.end_run(folder, {"finished": manifest.now(), "imported": len(files) - len(failures)},
                     {p.stem for p in files} - set(failures), failures, {}, len(camstore.done_ids(folder)))
    click.echo(f"import-npy: {len(files) - len(failures)} imported, {len(failures)} failed -> {folder}")
    sys.exit(1 if failures else 0)
