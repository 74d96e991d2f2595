"""The one type of a user's mistake, and the one way every command reports it.

A `UserError` is something the user gave that cannot work (a setting, a folder, a file, a
checkpoint, an output path) and can fix; each module's error type derives from it. A command's
`main` is wrapped in `cli`, which turns a UserError, or an OSError from the machine (a full disk,
a folder without write permission), into one line `error: ...` on stderr. Anything else is a bug
and keeps its traceback.

Exit codes of every command: 0 done, 1 a user error (`EXIT_USER_ERROR`), 2 a command line that
does not parse (argparse's own rule), 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import functools
import sys

EXIT_USER_ERROR = 1


class UserError(Exception):
    """A mistake in the user's input, reported in one line (`cli`)."""


def cli(main):
    """Wrap a command's `main(argv) -> int`: a UserError or OSError becomes one line and EXIT_USER_ERROR."""
    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
    return run
