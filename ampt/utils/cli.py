"""One-line errors for the command-line entry points (``train.py``, ``evaluate.py``).

An error caused by the user's input (:class:`ampt.errors.UserError`, raised
where input is validated) prints ``error: <message>`` on stderr and exits
with status 2, without a traceback. Anything else is a bug and keeps its
traceback. Ctrl-C prints ``interrupted (Ctrl-C)`` and exits with status 130
(every write is atomic, so nothing is left half-written). ``--debug`` shows
the traceback of user errors and interrupts too.
"""
from __future__ import annotations

import argparse
import gc
import sys
from typing import Callable, NoReturn, Optional, Sequence, Tuple, Type

from ..errors import UserError

DEBUG_FLAG = "--debug"
DEBUG_HELP = "show the full traceback of every error (user errors print one line otherwise)"


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line (``error: ...``) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run_cli(main: Callable[[], int], user_errors: Tuple[Type[BaseException], ...] = (), *,
            argv: Optional[Sequence[str]] = None, interrupt_hint: str = "") -> int:
    """Run ``main``; a user error prints one line and returns 2 (unless ``--debug`` is in ``argv``).

    ``argv`` defaults to ``sys.argv[1:]``. User errors are :class:`UserError`
    (a missing Dassl too: :class:`~ampt.errors.MissingDependencyError`) and
    ``user_errors`` (extra types a tool has not yet moved to :class:`UserError`).
    ``interrupt_hint`` is added to the Ctrl-C line (e.g. how to resume).
    """
    debug = DEBUG_FLAG in (sys.argv[1:] if argv is None else argv)
    try:
        return main()
    except (UserError, *user_errors) as err:
        if debug:
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted (Ctrl-C){'; ' + interrupt_hint if interrupt_hint else ''}", file=sys.stderr)
        return 130
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def exit_process(code: int) -> NoReturn:
    """End a command-line process with ``code``, about a second sooner: after one collection (pending
    finalizers run now), every object moves to the permanent GC generation, so the interpreter's shutdown
    does not walk torch's import graph again. For ``__main__`` blocks only: frozen objects are never freed."""
    gc.collect()
    gc.freeze()
    sys.exit(code)
