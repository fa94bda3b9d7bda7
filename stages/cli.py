"""The ``clipes`` command: a click group with one subcommand per stage.

User errors (:class:`clipes.errors.UserError`) print one line and exit with status 2, and so does a
full disk (the line names the folder being written); a stage that finished with failed items
exits with status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipes.errors import UserError
from clipes.store.fsutil import no_space


def _no_space_line(exc: BaseException) -> str:
    """``error: no space left on device writing <folder>`` from the first named file in the chain."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.filename:
            return f"no space left on device writing {Path(exc.filename).parent} ({Path(exc.filename).name})"
        exc = exc.__cause__ or exc.__context__
    return "no space left on device"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            if not no_space(exc):
                raise
            click.echo(f"error: {_no_space_line(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished files are kept; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipes")
def main():
    """clipes: weakly supervised semantic segmentation with a frozen CLIP."""


def _register():
    from stages import (
        cams,
        demo,
        evaluate,
        excel,
        interop,
        prepare,
        refine,
        segment,
        select_prompts,
        viz,
        weakclip,
        weclip,
        weclip_plus,
    )

    for command in (cams.cams, refine.refine, evaluate.evaluate, interop.export_npy, interop.import_npy,
                    segment.train_seg, segment.test_seg, segment.predict, demo.demo, demo.demo_data,
                    demo.demo_model, demo.demo_dino, select_prompts.select_prompts, viz.viz, viz.show, prepare.prepare_voc,
                    prepare.prepare_coco, weclip.train_weclip, weclip.predict_weclip,
                    weclip.masks_weclip, weakclip.train_weakclip, weakclip.masks_weakclip,
                    weclip_plus.train_weclipplus, weclip_plus.predict_weclipplus, weclip_plus.masks_weclipplus,
                    excel.train_excel, excel.predict_excel, excel.masks_excel, excel.cams_excel):
        main.add_command(command)


_register()

if __name__ == "__main__":
    main()
