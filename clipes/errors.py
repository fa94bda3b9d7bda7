"""Exceptions that carry a one-line message meant for the user.

`UserError` stops a run (wrong DATA_ROOT, SPLIT, CLIP, options); `InputError` marks one bad
input item (an image, an annotation) that is skipped and recorded while the rest of the run goes on.
The CLI prints either as a single line with no traceback.
"""


class UserError(Exception):
    """A mistake in how clipes was called; the whole run stops with this message."""


class InputError(Exception):
    """A problem with one input item; the item is skipped and the message is recorded."""
