"""The one type of a user's mistake, and the one way every command reports it.

A `UserError` is something the user gave that cannot work (a setting, a folder, a file, a
checkpoint, an output path) and can fix; each module's error type derives from it. A command's
`main` is wrapped in `cli`, which turns a UserError, or an OSError from the machine (a full disk,
a folder without write permission), into one line `error: ...` on stderr. Anything else is a bug
and keeps its traceback.

Exit codes of every command: 0 done, 1 a user error (`EXIT_USER_ERROR`), 2 a command line that
does not parse (argparse's own rule), 128 + the signal when a signal stopped it (`stopped_exit_code`):
130 for Ctrl-C (SIGINT: `cli` turns a KeyboardInterrupt into one line "interrupted"), 143 for a
SIGTERM (`timeout`, Slurm) after which a trainer saved and stopped cleanly. A script or scheduler
can so tell a finished run from an interrupted one, as a shell tells a process a signal killed.
"""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

EXIT_USER_ERROR = 1


def stopped_exit_code(signum: int) -> int:
    """The exit code of a command that the signal `signum` stopped: 128 + signum, the shell's rule."""
    return 128 + signum


EXIT_INTERRUPTED = stopped_exit_code(signal.SIGINT)  # 130
CONFIG_PY = Path(__file__).resolve().with_name("config.py")  # the settings file users edit (quiet_start)


class UserError(Exception):
    """A mistake in the user's input, reported in one line (`cli`)."""


def quiet_start(kind, value, tb) -> None:
    """The sys.excepthook of a training command while its libraries load (before `cli` runs): Ctrl-C is
    the line "interrupted" (the exit status stays SIGINT's), a syntax error in config.py (its EDIT HERE
    block is Python, imported with the libraries) one `error:` line naming the file and line (exit 1);
    anything else keeps its traceback."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    elif issubclass(kind, SyntaxError) and value.filename and Path(value.filename).resolve() == CONFIG_PY:
        print(f"error: {value.filename}, line {value.lineno}: {value.msg}: {(value.text or '').strip()}",
              file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, tb)


def cli(main):
    """Wrap a command's `main(argv) -> int`: a UserError or OSError becomes one line and EXIT_USER_ERROR,
    Ctrl-C (KeyboardInterrupt) the line "interrupted" and EXIT_INTERRUPTED."""
    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    return run
