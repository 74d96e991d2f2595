"""UserError, the user's fixable mistake, and `cli`, which reports it (or an OSError) as one `error:` line.

Exit codes of every command: 0 done, 1 a user error, 2 a command line that does not parse (argparse),
128 + the signal when one stopped it (130 Ctrl-C, 143 SIGTERM after a clean save).
"""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

EXIT_USER_ERROR = 1


def stopped_exit_code(signum: int) -> int:
    """128 + signum, the shell's rule."""
    return 128 + signum


EXIT_INTERRUPTED = stopped_exit_code(signal.SIGINT)  # 130
CONFIG_PY = Path(__file__).resolve().with_name("config.py")


class UserError(Exception):
    """A mistake in the user's input, reported in one line (`cli`)."""


def quiet_start(kind, value, tb) -> None:
    """sys.excepthook while a training command's libraries load (before `cli` runs): Ctrl-C is the line
    "interrupted", a syntax error in config.py's EDIT HERE block one `error:` line; else a traceback."""
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
    elif issubclass(kind, SyntaxError) and value.filename and Path(value.filename).resolve() == CONFIG_PY:
        print(f"error: {value.filename}, line {value.lineno}: {value.msg}: {(value.text or '').strip()}",
              file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, tb)


def cli(main):
    """Wrap `main(argv) -> int`: UserError/OSError -> one line, EXIT_USER_ERROR; Ctrl-C -> EXIT_INTERRUPTED."""
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
